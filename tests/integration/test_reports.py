"""``clbench reproduce`` and ``clbench cost`` on committed stores: verdicts that follow from the numbers, and
job counts that follow from the protocol."""

from __future__ import annotations

import re
from pathlib import Path

from clbench.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_reproduction_gives_each_published_number_a_verdict_that_follows_from_the_interval(tmp_path, capsys):
    out = tmp_path / "reproduction.md"
    store = ROOT / "results" / "meta-ci"  # ANML and OML, ci profile, 10 and 50 classes, 3 seeds
    assert main(["reproduce", "--store", str(store), "--published",
                 str(ROOT / "results" / "reference" / "published.csv"), "--output", str(out)]) == 0
    lines = [line for line in out.read_text().splitlines() if line.startswith("| anml") or line.startswith("| oml")]
    # anml: 10 and 50 against the re-run and the re-implementation; oml: against the re-run and the paper
    assert len(lines) == 8
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        mean, ci = map(float, re.match(r"([\d.]+) ± ([\d.]+)", cells[2]).groups())
        theirs, verdict = float(cells[4]), cells[6]
        expected = "within CI" if mean - ci <= theirs <= mean + ci else ("above" if mean > theirs else "below")
        assert verdict == expected, line
        assert ("budget: the ci profile" in cells[7]) == (verdict == "below")
    assert main(["reproduce", "--store", str(store), "--published", str(tmp_path / "none.csv")]) == 2


def test_cost_counts_the_runners_jobs_and_measures_the_store(capsys):
    foundation = str(ROOT / "results" / "foundation")  # naive and oracle, default profile, 10 and 50, 3 seeds
    assert main(["cost", "--methods", "naive", "--profile", "default", "--lengths", "10,50", "--seeds", "0-2",
                 "--val-seeds", "3", "--threads", "1", "--rates", foundation, "--out", foundation]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| naive", "| oracle"))]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")] for line in lines}
    # naive is nested: one job per seed, and 7 step sizes x 3 validation seeds; the oracle is not: a job per
    # (seed, length) and nothing to select.
    assert rows["naive"][1:3] == ["3", "21"] and rows["oracle"][1:3] == ["6", "0"]
    assert rows["naive"][5].endswith("(6/6 cells)") and rows["oracle"][5].endswith("(6/6 cells)")
    assert main(["cost", "--methods", "naive", "--rates", "/nonexistent"]) == 2


def test_cost_of_another_profile_counts_none_of_the_stores_cells_and_says_whose_rate_it_borrows(capsys):
    """The committed leaderboard holds ANML's default-profile cells (and a paper-size first-order series): a
    ci-profile run of it has none."""
    store = str(ROOT / "results" / "leaderboard")
    assert main(["cost", "--methods", "anml", "--no-reference", "--profile", "ci", "--lengths", "10,50",
                 "--seeds", "0-2", "--val-seeds", "1", "--threads", "1", "--rates", store, "--out", store]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| anml")]
    assert "(another profile; `" in line and "(0/6 cells)" in line
    assert main(["cost", "--methods", "anml", "--no-reference", "--profile", "default", "--lengths", "10,50",
                 "--seeds", "0-2", "--val-seeds", "1", "--threads", "1", "--rates", store, "--out", store]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| anml")]
    assert "another" not in line and "(6/6 cells)" in line
    # paper profile, second order: the store's paper rows are the first-order checkpoint's, another config
    assert main(["cost", "--methods", "anml", "--no-reference", "--profile", "paper", "--lengths", "10,50",
                 "--seeds", "0-2", "--val-seeds", "1", "--threads", "1", "--rates", store, "--out", store]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| anml")]
    assert "(paper profile, another config; `" in line and "(0/6 cells)" in line
