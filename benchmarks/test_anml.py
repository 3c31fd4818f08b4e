"""ANML/OML meta-test speed: placeholders, filled by the ANML/OML part of issue 7 (the outer
meta-training step is in test_metatrain.py; one meta-test step and the whole meta-test protocol are in
test_anml_meta_test.py).

Keep the names: ``clbench/perf.py`` sets these benchmarks beside the reference figures of
REFERENCE.md ("Reference speed"). When one call times several steps, set
``benchmark.extra_info["units"]`` to their number: the report then compares the time per step.
"""

from __future__ import annotations

import pytest

PENDING = pytest.mark.skip(reason="placeholder: filled by the ANML/OML part of issue 7")


@PENDING
def test_anml_trajectory(benchmark):
    """A whole 600-class ANML meta-test trajectory through ``run_job``: 9,000 steps and the evaluation.
    Put the training seconds in ``extra_info["train_s"]`` (ref: 9,000 steps x 21 ms)."""
