import numpy as np
import pytest

from clbench.streams import make_trajectory, to_avalanche


def test_train_and_test_are_disjoint_drawings_of_the_same_characters(omniglot):
    t = make_trajectory(omniglot.evaluation, 50, 3)
    assert set(t.train_sample_ids.tolist()).isdisjoint(t.test_sample_ids.tolist())
    assert set((t.train_sample_ids // 20).tolist()) == set((t.test_sample_ids // 20).tolist()) == set(t.class_ids)
    assert set((t.train_sample_ids % 20).tolist()) == set(range(15))  # drawers 01-15
    assert set((t.test_sample_ids % 20).tolist()) == set(range(15, 20))  # drawers 16-20
    assert len(t.train_labels) == 750 and len(t.test_labels) == 250
    # Label k is character class_ids[k] in both splits.
    k = 7
    c = t.class_ids[k]
    assert np.array_equal(t.train_images[t.train_labels == k], omniglot.evaluation.images[c, :15])
    assert np.array_equal(t.test_images[t.test_labels == k], omniglot.evaluation.images[c, 15:])


def test_seeds_fix_the_stream(omniglot):
    a, b = make_trajectory(omniglot.evaluation, 100, 0), make_trajectory(omniglot.evaluation, 100, 0)
    c = make_trajectory(omniglot.evaluation, 100, 1)
    assert a.hash == b.hash and a.class_ids == b.class_ids
    assert c.hash != a.hash and c.class_ids != a.class_ids
    assert make_trajectory(omniglot.evaluation, 50, 0).class_ids == a.class_ids[:50]  # nested lengths
    assert make_trajectory(omniglot.evaluation, 50, 0).hash != a.hash


def test_lengths_beyond_the_pool_are_refused(omniglot):
    with pytest.raises(ValueError, match="outside 1..659"):
        make_trajectory(omniglot.evaluation, 700, 0)


def test_avalanche_streams_agree_with_the_trajectory(omniglot):
    t = make_trajectory(omniglot.evaluation, 600, 2)
    bench = to_avalanche(t)
    assert len(bench.train_stream) == len(bench.test_stream) == 600
    for i in (0, 299, 599):
        tr, te = bench.train_stream[i].dataset, bench.test_stream[i].dataset
        assert set(tr.targets) == set(te.targets) == {i}
        assert len(tr) == 15 and len(te) == 5
        x, y, task = tr[0]
        assert x.shape == (1, 28, 28) and int(y) == i and task == 0
        assert np.allclose(x[0].numpy() * 255, t.train_images[i * 15])
