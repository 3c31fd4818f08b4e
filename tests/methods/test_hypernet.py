"""The hypernetwork baseline (HNET+ENT) on real Omniglot: regulariser, task inference, batched prediction.

Most of the time goes to the three short training runs below (20 epochs per task instead of the default 40).
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from avalanche.training.determinism.rng_manager import RNGManager  # noqa: E402

import clbench.methods.hypernet as H  # noqa: E402
from clbench.registry import BuildContext  # noqa: E402
from clbench.streams import make_trajectory, to_avalanche, to_tensor  # noqa: E402

K = 10  # the default classes_per_task
EPOCHS = 20  # half the default: enough to fit a task's 150 training images


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _strategy(n: int, seed: int = 0, **fields):
    RNGManager.set_random_seeds(seed)
    cfg = H.Config(epochs_per_task=EPOCHS, **fields)
    return H.build(cfg, BuildContext(n_classes=n, classes_per_exp=1, seed=seed, device="cpu", profile="default"))


def _stream(omniglot, n: int, seed: int = 0):
    traj = make_trajectory(omniglot.evaluation, n, seed)
    return traj, list(to_avalanche(traj).train_stream)


def _emitted(strategy, task: int) -> torch.Tensor:
    with torch.no_grad():
        return strategy.model.hnet.forward(cond_id=[task], ret_format="flattened")[0]


def _regulariser(strategy):
    """The output regulariser on its own hypernetwork pass, for freshly drawn earlier tasks."""
    ids = strategy.regularised_tasks()
    return strategy.drift(strategy.model.hnet.forward(cond_id=ids.tolist(), ret_format="flattened"), ids)


def _task_acc(strategy, x, y, task: int) -> float:
    with torch.no_grad():
        return (strategy.model.task_logits(x, task).argmax(1) == y - task * K).float().mean().item()


def _learn_two_tasks(omniglot, beta: float) -> dict:
    """Learn task 0 (classes 0-9), then task 1 (10-19): drift of task 0's weights and what it costs."""
    traj, stream = _stream(omniglot, 2 * K)
    x, y = to_tensor(traj.train_images), torch.from_numpy(traj.train_labels)
    s = _strategy(2 * K, beta=beta)
    init = _emitted(s, 0)
    for exp in stream[:K - 1]:
        s.train(exp)
    untouched = s.task == 0 and torch.equal(_emitted(s, 0), init)  # buffered, not trained yet
    s.train(stream[K - 1])
    before, acc_before = _emitted(s, 0), _task_acc(s, x[y < K], y[y < K], 0)
    with torch.no_grad():  # the task-1 loss where task 1 starts (drift is 0 there)
        ce_start = torch.nn.functional.cross_entropy(s.model.task_logits(x[y >= K], 1), y[y >= K] - K).item()
    for exp in stream[K:]:
        s.train(exp)
    after = _emitted(s, 0)
    return dict(untouched=untouched, tasks=s.task, drift=(after - before).pow(2).sum().item(),
                scale=before.pow(2).sum().item(), ce_start=ce_start, acc_before=acc_before,
                acc_after=_task_acc(s, x[y < K], y[y < K], 0))


def test_output_regulariser_keeps_earlier_task_weights(omniglot):
    """Energy bound: task 1 starts at drift 0 with objective ce_start; training lowers the objective
    ce + beta * drift, so the regulariser's share can never exceed it: beta * drift <= ce_start.
    That bound is loose (drift <= 400 here); what the regulariser buys shows against beta = 0. Measured
    (seed 0, one thread): drift 0.7, 3% of the weight vector's norm, task 0's accuracy 0.97 -> 0.98;
    without it drift 87 (32%) and task 0's accuracy 0.97 -> 0.44."""
    beta = H.Config().beta
    kept, free = _learn_two_tasks(omniglot, beta), _learn_two_tasks(omniglot, 0.0)
    assert kept["untouched"], "the hypernetwork changed before the task's classes were complete"
    assert kept["tasks"] == free["tasks"] == 2
    assert beta * kept["drift"] <= kept["ce_start"]
    assert math.sqrt(kept["drift"] / kept["scale"]) < 0.1  # under 10% of the weight vector's norm
    assert kept["drift"] < 0.05 * free["drift"]
    assert math.sqrt(free["drift"] / free["scale"]) > 0.15
    assert kept["acc_after"] >= kept["acc_before"] - 0.05
    assert free["acc_after"] < free["acc_before"] - 0.2


def test_batched_regulariser_equals_hypnettorch():
    from hypnettorch.utils.hnet_regularizer import calc_fix_target_reg

    s = _strategy(50, reg_tasks=0)
    hnet, t = s.model.hnet, 4
    with torch.no_grad():
        s.anchors = hnet.forward(cond_id=list(range(t)), ret_format="flattened")
        s.anchors += 0.01 * torch.randn_like(s.anchors)
    s.task = t
    sizes = [math.prod(p) for p in s.model.target.param_shapes]
    targets = [list(a.split(sizes)) for a in s.anchors]
    ours = _regulariser(s)
    theirs = calc_fix_target_reg(hnet, t, targets=targets)
    assert torch.allclose(ours, theirs, rtol=1e-5)
    # A random subset of 2 earlier tasks: the mean over some pair of them.
    s_sub = _strategy(50, reg_tasks=2)
    s_sub.model.load_state_dict(s.model.state_dict())
    s_sub.anchors, s_sub.task = s.anchors, t
    per_task = (hnet.forward(cond_id=list(range(t)), ret_format="flattened") - s.anchors).pow(2).sum(1)
    pair_means = torch.stack([(per_task[i] + per_task[j]) / 2 for i in range(t) for j in range(i + 1, t)])
    assert torch.isclose(pair_means, _regulariser(s_sub), rtol=1e-5).any()


@pytest.fixture(scope="module")
def trained(omniglot, one_thread):
    """25 classes: tasks of 10, 10 and a final 5, learned through the module's ``fit``."""
    n = 25
    traj = make_trajectory(omniglot.evaluation, n, 0)
    s = _strategy(n)
    H.fit(s, to_avalanche(traj))
    return s, traj


def test_task_inference_well_above_chance(trained):
    s, traj = trained
    x, y = to_tensor(traj.train_images), torch.from_numpy(traj.train_labels)
    rep = s.report(x, y)
    assert rep["classes_per_task"] == K and rep["n_tasks"] == 3
    assert rep["task_inference_acc"] > 2 / 3  # chance is 1/3 (measured ~0.8)
    assert rep["within_task_acc"] > 0.95  # each target net fits its own task
    acc = (s.predict(x).argmax(1) == y).float().mean().item()
    assert acc > 0.6


def test_prediction_fills_only_the_inferred_block(trained):
    s, traj = trained
    x = to_tensor(traj.test_images)
    logits = s.predict(x)
    assert logits.shape == (len(x), traj.n_classes)
    finite = torch.isfinite(logits)
    block = logits.argmax(1) // K
    for task, width in ((0, K), (1, K), (2, 5)):  # the last group has 5 classes, no padding outputs
        rows = finite[block == task]
        assert (rows.sum(1) == width).all()
        assert rows[:, task * K:task * K + width].all()


def test_batched_forward_equals_per_task_forward_and_cache_resets(trained):
    s, traj = trained
    x = to_tensor(traj.test_images[:40])
    model = s.model.eval()
    with torch.no_grad():
        batched = model.all_task_logits(x)
        cached = model._cache
        looped = torch.stack([model.task_logits(x, t) for t in range(3)])
        again = model.all_task_logits(x)
    assert torch.allclose(batched, looped, atol=1e-5)
    assert model._cache is cached and torch.equal(batched, again)  # generated once, reused
    model.train()
    assert model._cache is None  # training invalidates the generated weights
    model.eval()


def test_one_pass_step_equals_separate_passes(omniglot):
    """``observe`` emits the task's weights and the regularised tasks' in one hypernetwork pass; its
    gradients equal those of the loss written as two passes (the task's, then the regulariser's), to float
    rounding. Learning rate 0: the step leaves the gradients for the comparison and moves nothing."""
    traj, _ = _stream(omniglot, 50)
    s, t = _strategy(50, reg_tasks=2), 4
    hnet = s.model.hnet
    with torch.no_grad():
        s.anchors = hnet.forward(cond_id=list(range(t)), ret_format="flattened")
        s.anchors += 0.01 * torch.randn_like(s.anchors)
    s.task = t
    s.optimizer = torch.optim.SGD([*hnet.unconditional_params, hnet.conditional_params[t]], lr=0.0)
    y = torch.from_numpy(traj.train_labels)
    x = to_tensor(traj.train_images)[(y >= t * K) & (y < (t + 1) * K)][:32]
    s.mbatch = [x, y[(y >= t * K) & (y < (t + 1) * K)][:32], torch.zeros(len(x), dtype=torch.long)]
    draws = s.reg_rng.get_state()
    s.observe()
    one_pass = [p.grad.clone() for p in s.optimizer.param_groups[0]["params"]]
    after = s.reg_rng.get_state()
    assert all(g.abs().sum() > 0 for g in one_pass)

    s.optimizer.zero_grad()
    s.reg_rng.set_state(draws)  # the same regularised tasks
    ce = torch.nn.functional.cross_entropy(s.model.task_logits(s.mb_x, t), s.mb_y - t * K)
    separate_loss = ce + s.cfg.beta * _regulariser(s)
    separate_loss.backward()
    assert torch.equal(after, s.reg_rng.get_state())  # one draw per step, as before
    assert torch.allclose(s.loss, separate_loss, rtol=1e-6)
    for ours, separate in zip(one_pass, [p.grad for p in s.optimizer.param_groups[0]["params"]], strict=True):
        assert torch.allclose(ours, separate, rtol=1e-4, atol=1e-7)
