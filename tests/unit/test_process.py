"""clbench.process: the settings a job process runs under."""

from __future__ import annotations

import resource
import statistics

import pytest
import torch

from clbench.fast.memory import keep_freed_memory

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_freed_activations_are_reused_without_page_faults():
    """After ``keep_freed_memory``, a step that allocates and frees two large activations (16 and 24 MB)
    gets them back from the heap: a typical step faults none of their 10,240 pages in from the system,
    where glibc's default may unmap large blocks on free and fault them in again. (The median over
    steps: the heap takes up to ten steps to settle, and the system may still reclaim a page now and then.)"""
    if not keep_freed_memory():
        pytest.skip("not glibc: the allocator setting does not apply")

    def faults_of_a_step() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a, b = torch.empty(4 << 20), torch.empty(6 << 20)
        a.fill_(1.0)
        b.fill_(1.0)
        del a, b
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults = [faults_of_a_step() for _ in range(30)][10:]
    assert statistics.median(faults) < 100, faults
    assert keep_freed_memory()  # idempotent


def test_experience_meter_prints_plain_lines_off_a_terminal(capsys):
    from clbench.trajectory import ExperienceMeter

    meter = ExperienceMeter("naive seed 0", 600, every_s=0.0)
    for t in (1, 2):
        meter.update(t)
    meter.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("  naive seed 0: experience 1/600, eta ") and len(lines) == 2
    short = ExperienceMeter("naive seed 0", 10, every_s=0.0)  # short trajectories say nothing
    short.update(1)
    assert capsys.readouterr().err == ""
