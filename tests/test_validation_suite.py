"""Malformed inputs across the entry points (``uqpot data check``, ``train``, ``evaluate``, ``loop``): each
gives one clear message naming the file (and frame/field where relevant), a non-zero exit, no traceback,
and no output that could be mistaken for a result.  More of the bad-input suite, one file per area:
``test_bad_data.py`` (structure files), ``test_bad_config.py`` (configs and options), ``test_bad_runs.py``
(run directories: data hashes, the lock, divergence, interrupted writes), ``test_bad_models.py`` (model
files and evaluate options).

Run ``python tests/test_validation_suite.py`` to print every case with its message.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from uqpot.cli.main import cli

GOOD_ROWS = ["O 0.0 0.0 0.0 0.1 0.2 0.3", "H 0.96 0.0 0.0 -0.1 0.0 0.0", "H -0.24 0.93 0.0 0.0 -0.2 -0.3"]


def frame(energy="-10.5", props="species:S:1:pos:R:3:forces:R:3", rows=None, extra='pbc="F F F"'):
    rows = rows or GOOD_ROWS
    e = f" energy={energy}" if energy is not None else ""
    return f"{len(rows)}\nProperties={props}{e} {extra}\n" + "\n".join(rows) + "\n"


GOOD = frame()


def _mixed_units(tmp: Path) -> Path:
    """rMD17-like frames whose energies were written in eV while the forces stayed in kcal/mol/Å."""
    from uqpot.data.io import read_structures, write_extxyz

    here = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rmd17_ethanol_800.extxyz"
    if not here.is_file():
        pytest.skip("needs the shared rMD17 ethanol file")
    ds = read_structures(here)[:200]
    for s in ds:
        s.energy = s.energy / 23.060548
    write_extxyz(ds, tmp / "mixed.extxyz")
    return tmp / "mixed.extxyz"


# (name, file content or builder, expected message fragment, frame)
STRUCTURE_CASES = [
    ("empty file", "", "file is empty", None),
    ("truncated extxyz", GOOD + GOOD[: GOOD.index("H 0.96")], "cannot read", 1),
    ("missing energy", frame(energy=None), "no energy", 0),
    ("missing forces", GOOD + frame(props="species:S:1:pos:R:3"), "no forces", 1),
    ("NaN coordinates", frame(rows=["O nan 0 0 0 0 0", GOOD_ROWS[1], GOOD_ROWS[2]]), "non-finite coordinates", 0),
    ("inf coordinates", GOOD + frame(rows=[GOOD_ROWS[0], "H inf 0 0 0 0 0", GOOD_ROWS[2]]),
     "non-finite coordinates", 1),
    ("NaN energy", frame(energy="nan"), "non-finite energy", 0),
    ("inf forces", frame(rows=[GOOD_ROWS[0], GOOD_ROWS[1], "H -0.24 0.93 0 0 -inf 0"]), "non-finite forces", 0),
    ("forces of the wrong shape", frame(props="species:S:1:pos:R:3:forces:R:2",
                                        rows=["O 0 0 0 1 1", "H 0.96 0 0 1 1", "H -0.24 0.93 0 1 1"]),
     "forces have shape (3, 2)", 0),
    ("unknown element symbol", GOOD + GOOD + frame(rows=["Qq 0 0 0 0 0 0", GOOD_ROWS[1], GOOD_ROWS[2]]),
     "unknown element", 2),
    ("atoms overlapping", frame(rows=[GOOD_ROWS[0], GOOD_ROWS[1], "H 0.96 0.0 0.0 0 0 0"]),
     "atoms 1 and 2 are 0.000 Å apart", 0),
    ("periodic frame without a cell", GOOD + frame(extra='pbc="T T T"'), "without a cell", 1),
    ("zero-volume cell", frame(extra='Lattice="5 0 0 0 5 0 0 0 0" pbc="T T T"'), "zero volume", 0),
    ("NaN in the cell", frame(extra='Lattice="5 0 0 0 nan 0 0 0 5" pbc="T T T"'), "non-finite cell", 0),
    ("energy that is not a number", frame(energy="high"), "energy is not a single number", 0),
    ("binary garbage", bytes(range(256)) * 8, "cannot read", 0),
    ("mixed units declared wrongly", _mixed_units, "not in the same units", None),
]


@pytest.fixture
def run(tmp_path):
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return invoke


def _write(tmp: Path, content) -> Path:
    if callable(content):
        return content(tmp)
    p = tmp / "bad.extxyz"
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    return p


@pytest.mark.parametrize("name, content, message, frame_no", STRUCTURE_CASES, ids=[c[0] for c in STRUCTURE_CASES])
def test_structure_files(tmp_path, run, name, content, message, frame_no):
    path = _write(tmp_path, content)
    r = run("data", "check", path)
    assert r.exit_code == 2 and message in r.stderr and str(path) in r.stderr, r.output
    if frame_no is not None:
        assert f"frame {frame_no}" in r.output
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"out: {tmp_path / 'run'}\ndata:\n  path: {path}\ntrain:\n  epochs: 1\n")
    r = run("train", cfg)
    assert r.exit_code == 2 and message in r.output and str(path) in r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "run").exists()


def test_directory_and_missing_file(tmp_path, run):
    r = run("data", "check", tmp_path)
    assert r.exit_code == 2 and f"{tmp_path}: is a directory" in r.stderr
    r = run("data", "check", tmp_path / "none.extxyz")
    assert r.exit_code == 2 and "none.extxyz: no such file" in r.stderr


def test_rmd17_npz_missing_key(tmp_path, run):
    np.savez(tmp_path / "rmd17_x.npz", nuclear_charges=np.array([8, 1, 1]), coords=np.zeros((2, 3, 3)))
    r = run("data", "check", tmp_path / "rmd17_x.npz")
    assert r.exit_code == 2 and "rmd17_x.npz" in r.stderr and "missing key" in r.stderr


def test_unknown_unit_option(tmp_path, run):
    p = _write(tmp_path, GOOD)
    r = run("evaluate", tmp_path / "m.pt", p, "--energy-unit", "kcal")
    assert r.exit_code == 2 and "unknown energy unit 'kcal'" in r.output
    r = run("data", "check", p, "--length-unit", "furlong")
    assert r.exit_code == 2 and "unknown length unit 'furlong'" in r.stderr


# ---------------------------------------------------------------------------------------------- configs
CONFIG_CASES = [
    ("unknown key", "train:\n  epoch: 3\n", "unknown key 'train.epoch'"),
    ("wrong type", "train:\n  batch_size: many\n", "'train.batch_size': Input should be a valid integer"),
    ("negative epochs", "train:\n  epochs: -5\n", "'train.epochs': Input should be greater than or equal to 1"),
    ("ensemble of size 1", "uq:\n  method: ensemble\n  members: 1\n", "'uq.members'"),
    ("unknown UQ method", "uq:\n  method: dropout\n", "'uq.method'"),
    ("option of another method", "uq:\n  method: gmm\n  lam: 0.1\n", "'uq.lam' applies to evidential"),
    ("split larger than the data", "split:\n  train: 10\n  val: 5\n", "split asks for 10 train + 5 val"),
    ("compile on the edge list", "train:\n  compile: true\n  layout: sparse\n",
     "train.compile runs on the dense layout only"),
    ("invalid YAML", "train: [1, 2\n", "invalid YAML"),
    ("not a mapping", "- 1\n- 2\n", "a config must be a mapping"),
]


@pytest.mark.parametrize("name, text, message", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_configs(tmp_path, run, name, text, message):
    data = _write(tmp_path, GOOD)
    cfg = tmp_path / "c.yaml"
    head = "" if text.startswith("- ") else f"out: {tmp_path / 'run'}\ndata:\n  path: {data}\n"
    cfg.write_text(head + text)
    r = run("train", cfg)
    assert r.exit_code == 2 and message in r.output and str(cfg) in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "run").exists()


def test_missing_config(tmp_path, run):
    r = run("train", tmp_path / "nope.yaml")
    assert r.exit_code == 2 and "nope.yaml: config file not found" in r.output


def test_unknown_oracle_in_loop(tmp_path, run):
    data = _write(tmp_path, GOOD)
    cfg = tmp_path / "loop.yaml"
    cfg.write_text(f"out: {tmp_path / 'loop'}\ndata:\n  train: {data}\n  test: {data}\noracle:\n  name: vasp2\n")
    r = run("loop", cfg)
    assert r.exit_code == 2 and "unknown oracle 'vasp2'" in r.output and str(cfg) in r.output
    assert not (tmp_path / "loop").exists()


@pytest.mark.parametrize("section, message", [
    ("data:\n  n_train: 10\n  train_emax: 5.0\n", "unknown key 'data.train_emax'"),
    ("loop:\n  train:\n    epoch: 3\n", "unknown key 'loop.train.epoch'"),
    ("loop:\n  attack:\n    kT: -1\n", "'loop.attack.kT'"),
], ids=["data section", "loop section", "bad value"])
def test_study_file_sections(tmp_path, run, section, message):
    """A study file (``uqpot loop configs/ammonia.yaml``): every section is checked before the data set is
    built or the output directory made."""
    cfg = tmp_path / "ammonia.yaml"
    cfg.write_text("system: ammonia\noracle:\n  name: tblite\n" + section + ("" if "loop:" in section else "loop: {}\n"))
    r = run("loop", cfg, "--out", tmp_path / "study")
    assert r.exit_code == 2 and message in r.output and str(cfg) in r.output, r.output
    assert not (tmp_path / "study").exists()


# ---------------------------------------------------------------------------------------------- model files
@pytest.fixture
def model_file(tmp_path):
    import uqpot
    from uqpot.data.io import read_structures
    from uqpot.nn.potential import Potential

    m = Potential(features=8, interactions=1, rbf=4, readout_hidden=4, seeds=[0])
    m.fit_reference(read_structures(_write(tmp_path, GOOD)))
    return uqpot.save(m, tmp_path / "model.pt")


def _payload_edit(path: Path, out: Path, fn) -> Path:
    payload = torch.load(path, weights_only=True)
    fn(payload)
    torch.save(payload, out)
    return out


MODEL_CASES = [
    ("truncated model file", lambda p, t: (t / "cut.pt").write_bytes(p.read_bytes()[:500]) and t / "cut.pt",
     "not a readable uqpot model file"),
    ("model from a newer uqpot", lambda p, t: _payload_edit(p, t / "new.pt", lambda d: d.update(uqpot_version="9.0")),
     "written by a newer uqpot"),
    ("wrong architecture", lambda p, t: _payload_edit(p, t / "arch.pt", lambda d: d["hparams"].update(features=16)),
     "weights do not match the architecture"),
    ("not a model file", lambda p, t: torch.save({"weights": torch.ones(3)}, t / "other.pt") or t / "other.pt",
     "not a uqpot model file"),
]


@pytest.mark.parametrize("name, make, message", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_model_files(tmp_path, run, model_file, name, make, message):
    bad = make(model_file, tmp_path)
    data = _write(tmp_path, GOOD)
    r = run("evaluate", bad, data, "--out", tmp_path / "eval")
    assert r.exit_code == 2 and message in r.output and bad.name in r.output, r.output
    assert not (tmp_path / "eval").exists()


def test_elements_unknown_to_the_model(tmp_path, run, model_file):
    data = tmp_path / "si.extxyz"
    data.write_text(frame(rows=["Si 0 0 0 0 0 0", "O 1.6 0 0 0 0 0", "O -1.6 0 0 0 0 0"]))
    r = run("evaluate", model_file, data, "--out", tmp_path / "eval")
    assert r.exit_code == 2 and "Si not in the model's training set" in r.output and "frame 0" in r.output
    assert not (tmp_path / "eval" / "metrics.json").exists()


if __name__ == "__main__":  # print every case with its message (for the record)
    import tempfile

    runner = CliRunner()

    def first_line(args, d):
        out = runner.invoke(cli, [str(a) for a in args]).output.strip().splitlines()
        return (out[0] if out else "(no output)").replace(d, "…")

    for name, content, *_ in STRUCTURE_CASES:
        with tempfile.TemporaryDirectory() as d:
            p = _write(Path(d), content)
            print(f"{name:34s} | data check | {first_line(['data', 'check', p], d)}")
    with tempfile.TemporaryDirectory() as d:
        print(f"{'a directory':34s} | data check | {first_line(['data', 'check', d], d)}")
        print(f"{'a missing file':34s} | data check | {first_line(['data', 'check', Path(d) / 'none.extxyz'], d)}")
    for name, text, _ in CONFIG_CASES:
        with tempfile.TemporaryDirectory() as d:
            data, cfg = _write(Path(d), GOOD), Path(d) / "c.yaml"
            head = "" if text.startswith("- ") else f"out: {Path(d) / 'run'}\ndata:\n  path: {data}\n"
            cfg.write_text(head + text)
            print(f"{name:34s} | train      | {first_line(['train', cfg], d)}")
    with tempfile.TemporaryDirectory() as d:
        from uqpot.data.io import read_structures
        from uqpot.nn.potential import Potential
        import uqpot

        m = Potential(features=8, interactions=1, rbf=4, readout_hidden=4, seeds=[0])
        m.fit_reference(read_structures(_write(Path(d), GOOD)))
        good_model = uqpot.save(m, Path(d) / "model.pt")
        for name, make, _ in MODEL_CASES:
            bad = make(good_model, Path(d))
            print(f"{name:34s} | evaluate   | {first_line(['evaluate', bad, Path(d) / 'bad.extxyz'], d)}")
    sys.exit(0)
