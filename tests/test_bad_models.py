"""Bad model files and evaluate options (issue kinds 6, 12, 14, 15): NaN weights, negative
hyper-parameters, pickled payloads, an ensemble on one structure, options that do not apply, data in
another unit than declared.  Every error case: exit 2, one line naming the file or option, nothing written."""

from __future__ import annotations

import json

import pytest
import torch
from support.badinput import assert_user_error, cli, results, tiny_config, write_water


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny plain potential and a 2-member ensemble, 2 epochs on EMT water, and an evaluation file."""
    tmp = tmp_path_factory.mktemp("models")
    data = write_water(tmp / "data.extxyz")
    for name, uq, seed in (("plain", None, 0), ("ens", {"method": "ensemble", "members": 2}, 0), ("other", None, 1)):
        cfg = tiny_config(tmp, data, out=tmp / name, name=f"{name}.yaml", seed=seed, **({"uq": uq} if uq else {}))
        r = cli("train", cfg)
        assert r.exit_code == 0, r.output
    r = cli("train", tiny_config(tmp, data, out=tmp / "wide", name="wide.yaml", model={"features": 12}))
    assert r.exit_code == 0, r.output
    return {"plain": tmp / "plain" / "model.pt", "ens": tmp / "ens" / "model.pt", "other": tmp / "other" / "model.pt",
            "wide": tmp / "wide" / "model.pt", "data": write_water(tmp / "eval.extxyz", n=6, seed=9)}


def _edit(src, dst, fn):
    payload = torch.load(src, weights_only=True)
    fn(payload)
    torch.save(payload, dst)
    return dst


def _nan_weight(payload):
    key = next(k for k, v in payload["state_dict"].items() if v.is_floating_point() and v.dim() >= 2)
    payload["state_dict"][key][0, 0] = float("nan")


MODEL_CASES = [
    # kind 12: NaN weights are refused at load
    ("NaN weight", lambda p: _nan_weight(p), "non-finite weight(s) (NaN/inf)"),
    # kind 6: a negative hyper-parameter was a traceback
    ("negative features", lambda p: p["hparams"].update(features=-8), "hparams.features: -8 is not a valid"),
    ("zero cutoff", lambda p: p["hparams"].update(cutoff=0.0), "hparams.cutoff: 0.0 is not a valid cutoff"),
    ("boolean members", lambda p: p["hparams"].update(members=True), "hparams.members: True"),
]


@pytest.mark.parametrize("name, edit, message", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_bad_model_file(tmp_path, trained, name, edit, message):
    bad = _edit(trained["plain"], tmp_path / "bad.pt", edit)
    r = cli("evaluate", bad, trained["data"], "--out", tmp_path / "eval")
    assert_user_error(r, str(bad), message)
    assert not (tmp_path / "eval").exists()


def test_pickled_model_file_is_refused_without_torch_advice(tmp_path, trained):
    import argparse

    torch.save({"format": "uqpot-model", "payload": argparse.Namespace(run="code")}, tmp_path / "pickled.pt")
    r = cli("evaluate", tmp_path / "pickled.pt", trained["data"], "--out", tmp_path / "eval")
    assert_user_error(r, str(tmp_path / "pickled.pt"), "pickled Python objects, which uqpot never loads")
    assert "weights_only" not in r.output and not (tmp_path / "eval").exists()


# ------------------------------------------------------------------ kind 6: ordinary evaluate errors
def test_ensemble_on_one_structure(tmp_path, trained):
    one = write_water(tmp_path / "one.extxyz", n=1)
    r = cli("evaluate", trained["ens"], one, "--out", tmp_path / "eval")
    assert_user_error(r, f"{one}: 1 structure(s) to evaluate", "need at least 2")
    assert not (tmp_path / "eval").exists()
    r = cli("evaluate", trained["ens"], write_water(tmp_path / "two.extxyz", n=2), "--out", tmp_path / "eval2")
    assert r.exit_code == 0 and "Spearman" in r.stdout, r.output


@pytest.mark.parametrize("args, message", [
    (("--batch-size", "0"), "Invalid value for '--batch-size': 0 is not in the range x>=1"),
    (("--device", "bananas"), "--device: unknown device 'bananas'"),
    (("--indices", "EMPTY"), "index file is empty (--indices)"),
    (("--indices", "DATA"), "--indices expects an index file"),
    (("--calibration", "DATA"), "--calibration: "),  # kind 15: a plain potential has nothing to calibrate
    (("--energy-unit", "kcal"), "unknown energy unit 'kcal'"),
    (("--out", ""), "--out: an output directory is needed"),
], ids=["--batch-size 0", "--device bananas", "empty --indices", "structures as --indices", "--calibration plain",
        "unknown unit", "--out ''"])
def test_bad_evaluate_options(tmp_path, trained, args, message, monkeypatch):
    monkeypatch.chdir(tmp_path)  # were '--out ""' accepted, the files would land here, not in the checkout
    (tmp_path / "empty.idx").write_text("")
    args = [{"EMPTY": tmp_path / "empty.idx", "DATA": trained["data"]}.get(a, a) for a in args]
    r = cli("evaluate", trained["plain"], trained["data"], "--out", tmp_path / "eval", *args)
    assert_user_error(r, message)
    assert results(tmp_path) == []


def test_out_is_an_existing_file(tmp_path, trained):
    (tmp_path / "eval").write_text("mine")
    r = cli("evaluate", trained["plain"], trained["data"], "--out", tmp_path / "eval")
    assert_user_error(r, "--out: ", "is an existing file, not a directory")
    assert (tmp_path / "eval").read_text() == "mine"


def test_failed_evaluation_leaves_the_earlier_result_alone(tmp_path, trained):
    out = tmp_path / "eval"
    assert cli("evaluate", trained["plain"], trained["data"], "--out", out).exit_code == 0
    far = tmp_path / "far.extxyz"
    far.write_text(trained["data"].read_text().replace("\nO ", "\nO 99999", 1))
    assert cli("evaluate", trained["plain"], far, "--out", out).exit_code == 2  # checked before anything is touched
    assert json.loads((out / "metrics.json").read_text())["data"] == str(trained["data"])


# ------------------------------------------------------------------ kind 15: suspicious values
def test_min_distance_must_not_be_negative(trained):
    r = cli("data", "check", trained["data"], "--min-distance", "-1")
    assert_user_error(r, "Invalid value for '--min-distance': -1.0 is not in the range x>=0.0")


def test_energies_in_ev_declared_as_kcal_mol_get_a_hint(tmp_path, ethanol_path):
    """A small file whose energies and forces are in eV, read as kcal/mol: the metrics come with a warning
    naming eV and the option (the consistency check of the reader needs pairs of nearby frames; this one
    compares with the model)."""
    from uqpot.data.io import read_structures, write_extxyz

    eth = read_structures(ethanol_path)
    write_extxyz(eth[:40], tmp_path / "train.extxyz")
    r = cli("train", tiny_config(tmp_path, tmp_path / "train.extxyz", split={"train": 30, "val": 10, "test": 0}))
    assert r.exit_code == 0, r.output
    small = eth[100:104]
    for s in small:
        s.energy, s.forces = s.energy / 23.060548, s.forces / 23.060548
    write_extxyz(small, tmp_path / "ev.extxyz")
    r = cli("evaluate", tmp_path / "run" / "model.pt", tmp_path / "ev.extxyz", "--out", tmp_path / "eval")
    assert r.exit_code == 0, r.output
    assert "warning: " in r.stderr and "look like eV, not the declared kcal/mol" in r.stderr
    assert "--energy-unit eV" in r.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["warnings"] and "eV" in metrics["warnings"][0]
    r = cli("evaluate", tmp_path / "run" / "model.pt", tmp_path / "ev.extxyz", "--energy-unit", "eV",
            "--out", tmp_path / "eval_ev")
    assert r.exit_code == 0 and "warning" not in r.stderr, r.output


def test_no_unit_hint_for_data_in_the_declared_unit(tmp_path, trained):
    r = cli("evaluate", trained["plain"], trained["data"], "--out", tmp_path / "eval")
    assert r.exit_code == 0 and "warning" not in r.stderr, r.output


# ------------------------------------------------------------------ round three, kinds 3 and 5: wrap's options and data
WRAP_CASES = [  # (name, models, extra args, fragments of the one error line)
    ("--device bananas", ["ens"], ["--method", "calibrate", "--device", "bananas"], ["--device: unknown device 'bananas'"]),
    ("--device cuda:7", ["ens"], ["--method", "calibrate", "--device", "cuda:7"], ["--device: 'cuda:7' asked for"]),
    ("--batch-size 0", ["ens"], ["--method", "calibrate", "--batch-size", "0"], ["'--batch-size': 0 is not in the range"]),
    ("--batch-size -3", ["plain"], ["--method", "llpr", "--batch-size", "-3"], ["'--batch-size': -3 is not in the range"]),
    ("calibration on one structure", ["ens"], ["--method", "calibrate", "--val", "ONE"],
     ["one.extxyz: 1 validation structure(s): a calibration", "needs at least 2"]),
    ("llpr calibrated on one structure", ["plain"], ["--method", "llpr", "--val", "ONE"],
     ["one.extxyz: 1 validation structure(s)"]),
    ("one file twice as an ensemble", ["plain", "plain"], ["--method", "ensemble"],
     ["given twice for --method ensemble", "zero spread"]),
    ("a copy as an ensemble member", ["plain", "COPY"], ["--method", "ensemble"],
     ["copy.pt: has the same weights as", "zero spread"]),
    # members of other sizes form a committee now (tests/test_committee.py: assembled, and a member of another
    # level of theory refused by name)
]


@pytest.mark.parametrize("name, models, args, fragments", WRAP_CASES, ids=[c[0] for c in WRAP_CASES])
def test_bad_wrap_input(tmp_path, trained, name, models, args, fragments):
    """``wrap`` keeps evaluate's rules: devices and batch sizes checked, at least two validation structures
    for a calibration, no ensemble of one network; one line, exit 2, no model file written."""
    import shutil

    if "cuda:7" in args and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    shutil.copy(trained["plain"], tmp_path / "copy.pt")
    one = write_water(tmp_path / "one.extxyz", n=1, seed=4)
    paths = [tmp_path / "copy.pt" if m == "COPY" else trained[m] for m in models]
    args = [str(one) if a == "ONE" else a for a in args]
    val = [] if "--val" in args else ["--val", str(trained["data"])]
    r = cli("wrap", *paths, *args, *val, "--out", tmp_path / "wrapped.pt")
    assert_user_error(r, *fragments)
    assert not (tmp_path / "wrapped.pt").exists() and "internal error" not in r.output


def test_wrap_of_two_trained_members_runs(tmp_path, trained):
    r = cli("wrap", trained["plain"], trained["other"], "--method", "ensemble", "--val", trained["data"],
            "--out", tmp_path / "ens.pt")
    assert r.exit_code == 0 and (tmp_path / "ens.pt").is_file(), r.output


# ------------------------------------------------------------------ round three, kind 4: model files
def _calibration(fn):
    def edit(p):
        p["extra"] = dict(p["extra"])
        fn(p["extra"])
    return edit


EXTRA_CASES = [
    ("NaN calibration", _calibration(lambda e: e["calibration"].update(a=float("nan"))),
     "extra.calibration.a: nan is not a finite number"),
    ("string calibration", _calibration(lambda e: e["calibration"].update(b="big")),
     "extra.calibration.b: 'big' is not a finite number"),
    ("negative floor", _calibration(lambda e: e["calibration"].update(floor=-1.0)), "extra.calibration.floor: -1.0"),
    ("NaN conformal quantile", _calibration(lambda e: e["calibration"]["conformal"]["quantiles"].update({"68": float("nan")})),
     "extra.calibration.conformal.quantiles.68: nan is not a quantile"),
    ("calibration not a mapping", _calibration(lambda e: e.update(calibration=[1, 2])),
     "extra.calibration: expected a mapping"),
    ("extra a string", lambda p: p.update(extra="oops"), "extra: expected a mapping of stored results, got a str"),
]


@pytest.mark.parametrize("name, edit, message", EXTRA_CASES, ids=[c[0] for c in EXTRA_CASES])
def test_broken_stored_results_are_refused_at_load(tmp_path, trained, name, edit, message):
    """The loader checks the ``extra`` section: a broken stored calibration is one line naming the key, not
    an internal error in whatever reads it; wrap --method calibrate replaces it."""
    bad = _edit(trained["ens"], tmp_path / "bad.pt", edit)
    r = cli("evaluate", bad, trained["data"], "--out", tmp_path / "eval")
    assert_user_error(r, f"{bad}: {message}")
    assert not (tmp_path / "eval").exists()
    if "calibration" in message:
        r = cli("wrap", bad, "--method", "calibrate", "--val", trained["data"], "--out", tmp_path / "fixed.pt")
        assert r.exit_code == 0, r.output
        assert cli("evaluate", tmp_path / "fixed.pt", trained["data"], "--out", tmp_path / "e2").exit_code == 0


def _bare_state_dict(tmp_path, trained):
    torch.save(torch.load(trained["plain"], weights_only=True)["state_dict"], tmp_path / "weights.pt")
    return tmp_path / "weights.pt"


def _random_bytes(tmp_path, trained):
    (tmp_path / "noise.pt").write_bytes(bytes((k * 7919) % 251 for k in range(5000)))
    return tmp_path / "noise.pt"


def _structures(tmp_path, trained):
    return write_water(tmp_path / "water.extxyz", n=2)


NOT_MODELS = [("bare state dict", _bare_state_dict, "a PyTorch file holding a bare state dict"),
              ("random bytes", _random_bytes, "neither a PyTorch file nor a pickle"),
              ("structure file", _structures, "an extended XYZ structure file, not a model file")]


@pytest.mark.parametrize("name, make, message", NOT_MODELS, ids=[c[0] for c in NOT_MODELS])
def test_files_that_are_no_model_are_called_what_they_are(tmp_path, trained, name, make, message):
    """Kind 4: neither evaluate nor convert calls a state dict, noise or a structure file "pickled Python
    objects" or "a MACE model file"; convert never asks for --trusted for a file that holds no pickle."""
    path = make(tmp_path, trained)
    r = cli("evaluate", path, trained["data"], "--out", tmp_path / "eval")
    assert_user_error(r, str(path), message)
    assert "pickled" not in r.stderr and "MACE" not in r.stderr
    for trust in ([], ["--trusted"]):
        r = cli("convert", path, *trust, "--out", tmp_path / "conv.pt")
        assert_user_error(r, f"{path}: not a MACE model file: it is", message)
        assert "--trusted" not in r.stderr and not (tmp_path / "conv.pt").exists()


def test_convert_never_writes_over_its_input(tmp_path):
    import pickle

    src = tmp_path / "user.model"
    src.write_bytes(pickle.dumps({"a": 1}))
    before = src.read_bytes()
    for out in (src, tmp_path / "." / "user.model"):
        r = cli("convert", src, "--trusted", "--out", out)
        assert_user_error(r, f"--out: {out} is the file you are converting")
    assert src.read_bytes() == before
    (tmp_path / "folder").mkdir()
    assert_user_error(cli("convert", src, "--trusted", "--out", tmp_path / "folder"), "is a directory")


# ------------------------------------------------------------------ round three, kind 9: the README says what the code does
def _readme() -> str:
    from pathlib import Path

    return " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())


def test_readme_names_the_methods_without_a_stress():
    """The README once said LLPR gives no stress, while it computes a stress and its variance."""
    import re

    from uqpot.uq import METHODS

    listed = re.search(r"methods without a stress \(([^)]*)\) say so", _readme()).group(1)
    names = {n.strip().lower() for n in listed.split(",")}
    shipped = {m: cls for m, cls in METHODS.items() if cls.__module__.startswith("uqpot.")}  # not test plug-ins
    assert names == {m for m, cls in shipped.items() if not cls.gives_stress}
    assert "so does LLPR" in _readme() and METHODS["llpr"].gives_stress and METHODS["ensemble"].gives_stress


def test_readme_lists_every_methods_options():
    import re

    from uqpot.uq.options import OPTIONS

    text = _readme()
    block = re.search(r"Each method declares its own options beside its code \((.*?)\); the `uq` section", text).group(1)
    stated = {m: {o.strip() for o in opts.split(",")} for m, opts in re.findall(r"`(\w+): ([^`]*)`", block)}
    code = {m: set(o.model_fields) - {"method", "reduction"} for m, o in OPTIONS.items()
            if m != "none" and o.__module__.startswith("uqpot.")}  # not the plug-ins tests register
    assert stated == code
