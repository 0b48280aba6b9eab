"""``uqpot reproduce SYSTEM --preset P --dry-run``: the plan and its estimated time, nothing run or written."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from uqpot.cli.main import cli
from uqpot.studies import plan_costs as C
from uqpot.studies.plan import makespan

KEY_LINES = ("jobs:", "training:", "trajectories:", "MD steps:", "attack iterations:", "oracle calls:",
             "estimated CPU time by part", "estimated wall time on this machine:", "GPU:")


def _tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _wall_s(text: str) -> float:
    m = re.search(r"estimated wall time on this machine: ([\d.,]+) (s|min|h|d|years)", text)
    assert m, text
    return float(m.group(1).replace(",", "")) * {"s": 1, "min": 60, "h": 3600, "d": 86400,
                                                 "years": 365.25 * 86400}[m.group(2)]


@pytest.mark.parametrize("system", ["ammonia", "silica", "rmd17"])
def test_dry_run_prints_the_plan_and_writes_nothing(system, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    walls = {}
    for preset in ("quick", "paper"):
        r = CliRunner().invoke(cli, ["reproduce", system, "--preset", preset, "--dry-run", "--out",
                                     str(tmp_path / "out")])
        assert r.exit_code == 0, r.output
        for line in KEY_LINES:
            assert line in r.output, (system, preset, line)
        assert "nothing runs, nothing is written" in r.output
        walls[preset] = _wall_s(r.output)
    assert _tree(tmp_path) == before  # no output folder, no runs/, no log
    assert 0 < walls["quick"] < walls["paper"]


def test_the_ammonia_quick_plan_counts_the_preset(tmp_path, monkeypatch):
    """configs/ammonia_quick.yaml: 6 seeds x 4 methods x 3 generations; MD 5 runs x 4 temperatures of
    0.1 x 5 ps at 0.5 fs; attacks of 20 seeds x 80 iterations in generations 1-2."""
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["reproduce", "ammonia", "--preset", "quick", "--dry-run"])
    assert r.exit_code == 0, r.output
    out = r.output
    assert "jobs: 72 (seed x method x generation)" in out
    assert "trajectories: 1,440 (5 runs x 4 temperature(s) per job), MD steps: 1,000 each, 1,440,000 replica-steps" in out
    assert "attack iterations: 77,760 structure-iterations (20 seeds x 80 iterations" in out
    assert "oracle calls: 960 loop labels at most" in out
    r3 = CliRunner().invoke(cli, ["reproduce", "ammonia", "--preset", "quick", "--dry-run", "--seeds", "0,1,2"])
    assert "jobs: 36" in r3.output and _wall_s(r3.output) < _wall_s(out)
    assert not (tmp_path / "runs").exists()


def test_the_rmd17_paper_plan_counts_the_grid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["reproduce", "rmd17", "--preset", "paper", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "jobs: 600 (molecule x split x seed x method), 600 trainings" in r.output  # 10 x 5 x 3 x 4
    assert "oracle calls: 0" in r.output


def test_makespan_is_longest_first_on_the_least_loaded_worker():
    # 5 | 4, then each 3 to the less loaded: 5 | 4+3, 5+3 | 7, 8 | 7+3 (the optimum, 5+4 | 3+3+3 = 9, is not
    # what the loop does: it starts the longest jobs first)
    assert makespan([3, 5, 3, 4, 3], 2) == 10
    assert makespan([5, 4, 3, 3, 3], 1) == 18
    assert makespan([10, 1, 1], 4) == 10


def test_every_constant_is_measured_and_positive():
    for table in (C.TRAIN_STEP_S, C.EVAL_S):
        assert set(table) == set(C.WORKLOADS)
    for table in (C.MD_STEP_S, C.ATTACK_S):
        assert set(table) == {k for k, w in C.WORKLOADS.items() if w["system"] != "rmd17"}
    for table in (C.TRAIN_STEP_S, C.EVAL_S, C.MD_STEP_S, C.ATTACK_S):
        assert all(v > 0 for row in table.values() for v in row.values())
    assert C.AMMONIA_BUILD_CALLS > 278 and C.SILICA_BUILD_S > 0 and C.PYSCF_NH3_S > 0
    assert min(C.RMD17_SIZE_STEP_S) == 9 and len(C.RMD17_SIZE_STEP_S) >= 3


def test_the_plan_decides_compilation_by_autocompiles_break_even():
    """uqpot.train.autocompile: ethanol, batch 16, 128 features, one member breaks even after about 1,360 steps."""
    from uqpot.train.autocompile import predicted_saving

    assert predicted_saving(1450, 16 * 81, 128)[0] and not predicted_saving(1250, 16 * 81, 128)[0]
    # the MD call: 400 NH3 replicas of the paper's PaiNN, break-even after about 580 steps
    assert predicted_saving(620, 400 * 16, 128, md=True)[0] and not predicted_saving(540, 400 * 16, 128, md=True)[0]


def test_the_ammonia_medium_plan_runs_the_papers_trajectory_length_on_ten_seeds(tmp_path, monkeypatch):
    """configs/ammonia_medium.yaml: 10 seeds x 4 methods x 3 generations; 5 runs x 4 temperatures of 5 ps
    (the paper's length) at 0.5 fs; planned between the quick preset and the paper's, within about 4 hours."""
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["reproduce", "ammonia", "--preset", "medium", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "jobs: 120 (seed x method x generation)" in r.output
    assert "trajectories: 2,400 (5 runs x 4 temperature(s) per job), MD steps: 10,000 each" in r.output
    quick = CliRunner().invoke(cli, ["reproduce", "ammonia", "--preset", "quick", "--dry-run"]).output
    paper = CliRunner().invoke(cli, ["reproduce", "ammonia", "--preset", "paper", "--dry-run"]).output
    assert _wall_s(quick) < _wall_s(r.output) <= 4.5 * 3600 < _wall_s(paper)
