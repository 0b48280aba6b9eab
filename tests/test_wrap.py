"""``uqpot wrap``: post-hoc methods on a trained model file equal training them through ``uq.method``; an
ensemble from model files; re-calibration; every bad input is one line naming the file or key, exit 2, and
nothing is written."""

import math

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

import uqpot
from uqpot.core import fields as F
from uqpot.cli.main import cli
from uqpot.fit.config import RunConfig
from uqpot.core.config_io import parse
from uqpot.data.batch import collate
from uqpot.evaluation.evaluate import evaluate, fit_calibration
from uqpot.fit.run import run_training
from uqpot.fit.wrap import wrap

SMALL = dict(features=16, interactions=2, rbf=8, readout_hidden=8)
METRICS = ("energy_mae", "forces_mae", "spearman", "roc_auc_p20", "roc_auc_p50", "miscalibration_area", "cnll",
           "calibration_a", "calibration_b", "conformal_coverage_95")


def _config(tmp_path, ethanol_path, name, method="none", seed=0, **uq):
    raw = {"seed": seed, "out": str(tmp_path / name), "data": {"path": str(ethanol_path)},
           "split": {"train": 40, "val": 12, "test": 18, "seed": 0}, "model": SMALL,
           "uq": {"method": method, **uq}, "train": {"epochs": 3, "batch_size": 8, "lr": 2e-3, "progress": False}}
    return parse(RunConfig, raw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ethanol_path):
    tmp = tmp_path_factory.mktemp("wrap")
    for name, method, seed in (("plain", "none", 0), ("plain1", "none", 1), ("gmm", "gmm", 0), ("llpr", "llpr", 0)):
        run_training(_config(tmp, ethanol_path, name, method, seed))
    return tmp


@pytest.mark.parametrize("method", ["gmm", "llpr"])
def test_wrapped_model_equals_training_the_method(runs, method, ethanol_path):
    """train (none) + wrap --method M gives the numbers of training with uq.method: M (same seed, data)."""
    path, summary = wrap([runs / "plain" / "model.pt"], method)
    assert path == runs / "plain" / f"model_{method}.pt" and summary["n_train"] == 40 and summary["n_val"] == 12
    test = f"{runs / 'plain' / 'split.json'}:test"
    wrapped = evaluate(path, ethanol_path, runs / f"eval_wrapped_{method}", indices=test)
    trained = evaluate(runs / method / "model.pt", ethanol_path, runs / f"eval_trained_{method}",
                       indices=f"{runs / method / 'split.json'}:test")
    assert wrapped["method"] == trained["method"] == method and wrapped["n_structures"] == 18
    for k in METRICS:
        assert wrapped[k] == pytest.approx(trained[k], rel=1e-9, abs=1e-12), k
    extra = uqpot.nn.modelfile.read(path)["extra"]
    assert extra["wrapped"]["method"] == method and extra["wrapped"]["train"]["run"] == str(runs / "plain")
    assert extra["training"] == uqpot.nn.modelfile.read(runs / "plain" / "model.pt")["extra"]["training"]
    # the wrapped network is the trained potential, unchanged
    plain, model = uqpot.load(runs / "plain" / "model.pt"), uqpot.load(path)
    for k, v in plain.state_dict().items():
        assert torch.equal(model.potential.state_dict()[k], v), k


def test_wrap_descriptor_distance(runs, ethanol_path):
    """A trained plain potential wrapped with the descriptor distance: every training atom is a reference
    atom, the wrapped network is unchanged and the model file evaluates like any other."""
    path, summary = wrap([runs / "plain" / "model.pt"], "descriptor_distance")
    model = uqpot.load(path)
    assert model.method == "descriptor_distance" and model.n_reference == summary["n_train"] * 9
    res = evaluate(path, ethanol_path, runs / "eval_dd", indices=f"{runs / 'plain' / 'split.json'}:test")
    assert res["method"] == "descriptor_distance" and res["n_structures"] == 18 and -1 <= res["spearman"] <= 1
    plain = uqpot.load(runs / "plain" / "model.pt")
    for k, v in plain.state_dict().items():
        assert torch.equal(model.potential.state_dict()[k], v), k


def test_wrap_with_options_and_explicit_data(runs, ethanol_path, tmp_path):
    """--data/--val replace the run directory's sets; --option sets the method's options."""
    from uqpot.data.io import read_structures
    from uqpot.data.io import write_extxyz

    ds = read_structures(ethanol_path)
    write_extxyz(ds[100:130], tmp_path / "train.extxyz")
    write_extxyz(ds[130:140], tmp_path / "val.extxyz")
    path, summary = wrap([runs / "plain" / "model.pt"], "gmm", data=tmp_path / "train.extxyz",
                         val=tmp_path / "val.extxyz", out=tmp_path / "g.pt", options={"components": 2})
    model = uqpot.load(path)
    assert model.n_components == 2 and summary["n_train"] == 30 and summary["n_val"] == 10
    assert summary["posthoc"]["n_atoms"] == 30 * 9


def test_ensemble_of_model_files_and_recalibration(runs, ethanol_path, tmp_path):
    members = [runs / "plain" / "model.pt", runs / "plain1" / "model.pt"]
    path, summary = wrap(members, "ensemble", out=tmp_path / "ens.pt")
    ens = uqpot.load(path)
    assert ens.method == "ensemble" and ens.members == 2 and summary["n_val"] == 12
    singles = [uqpot.load(m) for m in members]
    from uqpot.data.io import read_structures

    ds = read_structures(ethanol_path)
    b = collate([ds[i] for i in (0, 1, 2)], cutoff=5.0)
    out = ens(b, create_graph=False)
    f = torch.stack([s(b, create_graph=False)[F.FORCES] for s in singles])
    torch.testing.assert_close(out[F.FORCES], f.mean(0))
    torch.testing.assert_close(out[F.UNCERTAINTY_ATOM], f.var(0, correction=1).mean(-1))
    # calibrate: a, b and the quantiles re-fitted on new data, the model itself unchanged
    from uqpot.data.io import write_extxyz

    write_extxyz(ds[200:230], tmp_path / "cal.extxyz")
    re, _ = wrap([path], "calibrate", val=tmp_path / "cal.extxyz", out=tmp_path / "ens_cal.pt")
    cal = uqpot.nn.modelfile.read(re)["extra"]["calibration"]
    expect = fit_calibration(ens, ds[200:230], 64)  # no run directory beside ens.pt: batches of 64
    assert cal["n_structures"] == 30 and cal["a"] == pytest.approx(expect["a"], rel=1e-6)
    assert cal["conformal"]["quantiles"]["95"] == pytest.approx(expect["conformal"]["quantiles"]["95"], rel=1e-6)
    assert uqpot.nn.modelfile.read(re)["extra"]["calibration"] != uqpot.nn.modelfile.read(path)["extra"]["calibration"]


def _cli(args):
    res = CliRunner().invoke(cli, args)
    return res.exit_code, res.output


@pytest.mark.parametrize("args,message", [
    (["--method", "mve"], "--method mve: mve is trained with its network"),
    (["--method", "dropout"], "unknown method 'dropout'"),
    (["--method", "gmm", "--option", "lam=0.2"], "--option: 'uq.lam' applies to evidential, not to 'gmm'"),
    (["--method", "gmm", "--option", "components=0"], "'uq.components'"),
    (["--method", "gmm", "--option", "oops"], "--option 'oops': expected KEY=VALUE"),
    (["--method", "calibrate"], "has no uncertainty to calibrate"),
    (["--method", "ensemble"], "needs at least 2 model files"),
    (["--method", "gmm", "--data", "/nonexistent.extxyz"], "/nonexistent.extxyz: no such file"),
])
def test_cli_errors_are_one_line_and_write_nothing(runs, args, message):
    before = sorted(p.name for p in (runs / "plain").iterdir())
    code, out = _cli(["wrap", str(runs / "plain" / "model.pt"), *args])
    lines = [x for x in out.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out
    assert sorted(p.name for p in (runs / "plain").iterdir()) == before


def test_cli_errors_name_the_file(runs, tmp_path, ethanol_path):
    lonely = tmp_path / "lonely.pt"
    lonely.write_bytes((runs / "plain" / "model.pt").read_bytes())
    code, out = _cli(["wrap", str(lonely), "--method", "llpr"])
    assert code == 2 and f"{lonely}: --data is needed" in out
    code, out = _cli(["wrap", str(lonely), "--method", "llpr", "--data", str(ethanol_path)])
    assert code == 2 and f"{lonely}: --val is needed" in out
    code, out = _cli(["wrap", str(runs / "gmm" / "model.pt"), "--method", "llpr"])
    assert code == 2 and "model.pt: --method llpr takes a single trained potential, not a uq.gmm" in out
    code, out = _cli(["wrap", str(runs / "plain" / "model.pt"), "--method", "gmm", "--out",
                      str(runs / "plain" / "model.pt")])
    assert code == 2 and "would overwrite an input model" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lonely.pt"]


def test_cli_wrap_then_evaluate(runs, tmp_path, ethanol_path):
    code, out = _cli(["wrap", str(runs / "plain" / "model.pt"), "--method", "llpr", "--out", str(tmp_path / "l.pt")])
    assert code == 0 and "llpr: fitted on 40 training structures" in out and f"wrote {tmp_path / 'l.pt'}" in out
    code, out = _cli(["evaluate", str(tmp_path / "l.pt"), str(ethanol_path), "--indices",
                      f"{runs / 'plain' / 'split.json'}:test"])
    assert code == 0 and "llpr: Spearman" in out and (tmp_path / "eval_l" / "metrics.json").is_file()


def test_old_run_directory_config_is_read(runs, tmp_path, ethanol_path):
    """A run directory written before each method declared its own options (one flat uq section with every
    method's defaults) is still read by wrap (and resumed by train)."""
    run = tmp_path / "old"
    run.mkdir()
    for name in ("model.pt", "split.json"):
        (run / name).write_bytes((runs / "plain" / name).read_bytes())
    cfg = yaml.safe_load((runs / "plain" / "config.yaml").read_text())
    cfg["uq"] = {"method": "none", "reduction": "mean", "members": 5, "head_hidden": 64, "min_variance": 1e-4,
                 "lam": 0.2, "components": "bic", "gram": "energy_forces", "heads": 8, "nll_epochs": 10}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    path, summary = wrap([run / "model.pt"], "gmm")
    assert summary["n_train"] == 40 and math.isfinite(summary["calibration"]["a"])
    assert np.isfinite(uqpot.load(path).gmm_means.numpy()).all()
