"""`uqpot reproduce` end to end at toy scale (GFN2-xTB as the oracle, tiny networks), and the report:
self-contained, every figure present, no console errors in headless Chromium."""

import json
import shutil

import pytest
import yaml
from click.testing import CliRunner

from uqpot.cli.main import cli

pytest.importorskip("tblite")

TOY_AMMONIA = {
    "system": "ammonia",
    "data": {"n_train": 16, "test_e_max": 20.0, "test_bin_width": 2.0, "test_per_bin": 1},
    "oracle": {"name": "tblite", "options": {"threads": 1}},
    "seeds": [0, 1],
    "loop": {
        "methods": ["ensemble", "gmm"], "generations": 2,
        "model": {"features": 16, "interactions": 2, "rbf": 8, "readout_hidden": 8},
        "uq": {"ensemble": {"members": 2}, "gmm": {"candidates": [1, 2]}},
        "train": {"epochs": 4, "batch_size": 8, "lr": 2.0e-3},
        "attack": {"n_seeds": 4, "iterations": 8, "lr": 0.01, "energy_cutoff": 100.0},
        "md": {"length_scale": 0.02, "runs": 2}, "neb": True,
    },
}


@pytest.fixture(scope="module")
def ammonia_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("repro")
    (tmp / "toy.yaml").write_text(yaml.safe_dump(TOY_AMMONIA))
    r = CliRunner().invoke(cli, ["reproduce", "ammonia", "--preset", str(tmp / "toy.yaml"), "--executor", "none",
                                 "--out", str(tmp / "run")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return tmp / "run"


def test_ammonia_study_outputs(ammonia_run):
    run = ammonia_run
    for name in ("report.html", "results.json", "table_summary.csv", "table_claims.csv", "claims.json",
                 "table_seeds.csv", "reproduce.json", "labels.db", "study.json", "data/train.extxyz",
                 "data/test.extxyz", "seed0/neb_oracle.json", "seed1/gen2/gmm/train/model.pt"):
        assert (run / name).exists(), name
    assert not (run / "seed0" / "labels.db").exists()  # one store for every seed
    meta = json.loads((run / "reproduce.json").read_text())
    assert meta["system"] == "ammonia" and meta["wall_seconds"] > 0
    res = json.loads((run / "results.json").read_text())
    rows = res["tables"]["summary"]
    assert {(r["generation"], r["method"]) for r in rows} == {(g, m) for g in (1, 2) for m in ("ensemble", "gmm")}
    assert all(r["n_seeds"] == 2 for r in rows)
    for r in rows:  # every number with its interval
        assert 0.0 <= r["stable_md_fraction_lo"] <= r["stable_md_fraction"] <= r["stable_md_fraction_hi"] <= 1.0
        assert r["stable_md_runs"] == 2 * 2 * 4  # seeds x runs x temperatures
        assert r["forces_mae_lo"] <= r["forces_mae"] <= r["forces_mae_hi"]
        assert r["spearman_lo"] <= r["spearman"] <= r["spearman_hi"]
    seeds = res["tables"]["seeds"]
    assert {r["seed"] for r in seeds} == {0, 1} and all("spearman_lo" in r for r in seeds)
    assert all(r["neb_barrier_oracle"] > 0 for r in rows)
    claims = json.loads((run / "claims.json").read_text())["claims"]
    ids = {c["id"]: c for c in claims}
    assert set(ids) >= {"fig3d_gen1_stability_order", "fig3g_stability_rises", "fig3e_neb_only_ensemble_improves"}
    assert all(c["verdict"] in ("reproduced", "contradicted", "inconclusive", "not measured", "not contradicted")
               for c in claims)
    # the toy study has no MVE: the ordering compares only what it has, the OOD claim is not measured
    assert ids["fig3a_ood_ensemble_gmm_over_mve_evidential_spearman"]["verdict"] == "not measured"
    rises = ids["fig3g_stability_rises"]["comparisons"]
    assert [c["comparison"] for c in rises] == ["ensemble improves from generation 1 to 2",
                                                "gmm improves from generation 1 to 2"]
    assert all(c["interval"] == "t over 2 paired seeds" for c in rises)
    # the stable-MD interval has the seed as its unit; every comparison has its p, Holm verdict, power and unit
    assert all(r["stable_md_interval"].startswith("t over 2 seeds") for r in rows)
    measured = [r for r in res["tables"]["claims"] if r.get("comparison") not in (None, "—")]
    assert measured and all(r["comparison_verdict_holm"] in ("reproduced", "contradicted", "inconclusive",
                                                             "not contradicted") for r in measured)
    assert all(r["paired_on"] == "seed" and r["detectable_effect"] != "n/a" for r in measured)
    html = (run / "report.html").read_text()
    assert html.index("The paper&#x27;s claims, checked") < html.index("Summary per generation")
    # every claim shows the paper's sentence it encodes, and its own numbers where the paper gives them
    assert "produced the highest fraction of stable MD trajectories at 50%" in html
    assert (run / "table_claim_sources.csv").is_file() and "ensemble 0.5; evidential 0.42" in html
    # the departures from the paper, and the training objective every method shared
    assert "Where this study departs from the paper" in html and (run / "table_fidelity_1.csv").is_file()
    assert "every method trains on energy and forces" in html
    assert html.count("data:image/png;base64,") >= 8 and "<script" not in html and "http" not in html.split("<body>")[1]
    assert "peak memory of a training step" in html and "parity of energies and forces" in html
    assert all(r["step_peak_mb"] > 0 for r in res["tables"]["cost"])


def test_report_rebuilds_identically(ammonia_run):
    before = json.loads((ammonia_run / "results.json").read_text())["tables"]
    r = CliRunner().invoke(cli, ["report", str(ammonia_run)])
    assert r.exit_code == 0 and "report.html" in r.output
    assert json.loads((ammonia_run / "results.json").read_text())["tables"] == before


def test_rerun_computes_nothing(ammonia_run, tmp_path):
    from uqpot.data.store import Store

    n = Store(ammonia_run / "labels.db").count()
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(TOY_AMMONIA))
    r = CliRunner().invoke(cli, ["reproduce", "ammonia", "--preset", str(tmp_path / "toy.yaml"), "--executor",
                                 "none", "--out", str(ammonia_run)], catch_exceptions=False)
    assert r.exit_code == 0
    assert Store(ammonia_run / "labels.db").count() == n


def test_report_in_headless_chromium(ammonia_run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium package is not installed")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((ammonia_run / "report.html").resolve().as_uri())
        widths = page.evaluate("Array.from(document.images).map(i => i.naturalWidth)")
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert errors == []
    assert len(widths) >= 8 and min(widths) > 100  # every figure decoded
    assert shot.stat().st_size > 50_000


def test_loop_accepts_a_study_file(ammonia_run, tmp_path):
    """`uqpot loop configs/ammonia.yaml` runs the study's loop (data built first if needed); here everything
    is already done, so it only reads the results back."""
    from uqpot.data.store import Store

    n = Store(ammonia_run / "labels.db").count()
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(TOY_AMMONIA))
    r = CliRunner().invoke(cli, ["loop", str(tmp_path / "toy.yaml"), "--out", str(ammonia_run), "--executor",
                                 "none", "--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "gen 2 gmm" in r.output and Store(ammonia_run / "labels.db").count() == n


def test_loop_quick_preset(ammonia_run, tmp_path):
    """`uqpot loop configs/ammonia.yaml --preset quick` runs configs/ammonia_quick.yaml (the file of the same
    system beside it): here the main file has an invalid key, the quick one is the finished toy study."""
    import copy

    broken = copy.deepcopy(TOY_AMMONIA)
    broken["loop"]["train"]["no_such_key"] = 1
    (tmp_path / "ammonia.yaml").write_text(yaml.safe_dump(broken))
    (tmp_path / "ammonia_quick.yaml").write_text(yaml.safe_dump(TOY_AMMONIA))
    args = ["loop", str(tmp_path / "ammonia.yaml"), "--out", str(ammonia_run), "--no-progress"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2 and "unknown key 'loop.train.no_such_key'" in r.output and "ammonia.yaml" in r.output
    r = CliRunner().invoke(cli, args + ["--preset", "quick"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "gen 2 gmm" in r.output
    # a loop config that is no study file has no quick preset
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump({"methods": ["gmm"]}))
    r = CliRunner().invoke(cli, ["loop", str(tmp_path / "plain.yaml"), "--preset", "quick"])
    assert r.exit_code == 2 and "plain.yaml" in r.output and "study file" in r.output
    # the presets are the system's (ammonia: quick, medium, paper); another name is refused, naming the file
    r = CliRunner().invoke(cli, args + ["--preset", "huge"])
    assert r.exit_code == 2 and "unknown preset 'huge'" in r.output and "medium" in r.output


@pytest.mark.slow  # about 1 min; CI keeps under 15 min (covered in part by faster tests)
def test_methods_option_replaces_the_presets(ammonia_run, tmp_path):
    """`--methods` runs the study with other UQ methods (here the single-model ones beyond the paper),
    reusing the data set and its labels; nothing already labelled is labelled again."""
    from uqpot.data.store import Store

    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(TOY_AMMONIA))
    out = tmp_path / "beyond"
    out.mkdir()
    shutil.copytree(ammonia_run / "data", out / "data")
    shutil.copy(ammonia_run / "labels.db", out / "labels.db")
    n_before = Store(out / "labels.db").count()
    r = CliRunner().invoke(cli, ["reproduce", "ammonia", "--preset", str(tmp_path / "toy.yaml"), "--executor",
                                 "none", "--out", str(out), "--methods", "llpr,shallow_ensemble", "--seeds", "0"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "seed0" / "summary.json").read_text())
    assert yaml.safe_load((out / "seed0" / "config.yaml").read_text())["methods"] == ["llpr", "shallow_ensemble"]
    assert set(summary["generations"]["2"]) == {"llpr", "shallow_ensemble"}
    assert (out / "seed0" / "gen2" / "llpr").is_dir() and (out / "seed0" / "gen2" / "shallow_ensemble").is_dir()
    assert not (out / "seed1").exists()  # --seeds replaces the preset's replicates
    assert not (out / "seed0" / "gen1" / "ensemble").exists()
    assert Store(out / "labels.db").count() >= n_before


def test_unknown_method_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(TOY_AMMONIA))
    r = CliRunner().invoke(cli, ["reproduce", "ammonia", "--preset", str(tmp_path / "toy.yaml"), "--executor",
                                 "none", "--out", str(tmp_path / "run"), "--methods", "ensemble,bayes"])
    assert r.exit_code != 0
    assert "bayes" in r.output and "llpr" in r.output
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # test_loop.py::test_md_samplers_in_the_loop covers the MD sampler by default
def test_samplers_option_compares_samplers_at_equal_budget(ammonia_run, tmp_path):
    """`--samplers adversarial,md` runs the loop once per sampler on one data set and one store, and the
    report compares them per method and generation (labels before, test MAE, stable MD with intervals)."""
    toy = {**TOY_AMMONIA, "loop": {**TOY_AMMONIA["loop"], "neb": False,
                                   "sampling": {"trust_lo": 0.0, "trust_hi": 1.0e6, "replicas": 4, "steps": 60,
                                                "frame_every": 10}}}
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(toy))
    out = tmp_path / "samplers"
    out.mkdir()
    shutil.copytree(ammonia_run / "data", out / "data")
    shutil.copy(ammonia_run / "labels.db", out / "labels.db")
    r = CliRunner().invoke(cli, ["reproduce", "ammonia", "--preset", str(tmp_path / "toy.yaml"), "--executor",
                                 "none", "--out", str(out), "--methods", "gmm", "--seeds", "0,1",
                                 "--samplers", "adversarial,md"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    for s in ("adversarial", "md"):
        assert (out / s / "report.html").is_file() and (out / s / "seed1" / "gen2" / "gmm").is_dir()
        assert yaml.safe_load((out / s / "seed0" / "config.yaml").read_text())["sampler"] == s
    # generation 1 does not depend on the sampler: md's is a copy of adversarial's (same model file)
    assert json.loads((out / "md" / "seed1" / "gen1" / "gmm" / "shared_from.json").read_text())["generation"] == 1
    assert ((out / "md" / "seed1" / "gen1" / "gmm" / "train" / "model.pt").read_bytes()
            == (out / "adversarial" / "seed1" / "gen1" / "gmm" / "train" / "model.pt").read_bytes())
    assert not (out / "adversarial" / "seed1" / "gen1" / "gmm" / "shared_from.json").exists()
    assert (out / "md" / "seed1" / "gen2" / "gmm" / "train" / "model.pt").read_bytes() != (
        out / "adversarial" / "seed1" / "gen2" / "gmm" / "train" / "model.pt").read_bytes()
    rows = json.loads((out / "samplers.json").read_text())["rows"]
    assert {(r["sampler"], r["generation"]) for r in rows} == {(s, g) for s in ("adversarial", "md") for g in (1, 2)}
    for row in rows:
        assert row["n_seeds"] == 2 and row["stable_md_runs"] > 0 and 0 <= row["stable_md_fraction_lo"] <= row["stable_md_fraction_hi"] <= 1
        assert row["oracle_labels_before"] == 0 if row["generation"] == 1 else 0 < row["oracle_labels_before"] <= 4
    assert "| gmm | 2 | md | 2 |" in (out / "samplers.md").read_text()
    assert "samplers compared" in (out / "report.html").read_text()
    r = CliRunner().invoke(cli, ["report", str(out)])
    assert r.exit_code == 0 and (out / "samplers.md").is_file()
    r = CliRunner().invoke(cli, ["reproduce", "ammonia", "--preset", str(tmp_path / "toy.yaml"), "--executor", "none",
                                 "--out", str(tmp_path / "bad"), "--samplers", "adversarial,langevin"])
    assert r.exit_code == 2 and "langevin" in r.output and not (tmp_path / "bad").exists()
