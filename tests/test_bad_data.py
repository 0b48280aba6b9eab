"""Bad structure files across ``data check``, ``train`` and ``evaluate`` (issue kinds 1, 2, 10, 13, 14, 16):
far-away atoms and huge coordinates, unreadable frames among good ones, formats guessed wrongly, structure
files where index files belong.  Every case: exit 2, a message naming file and frame, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.badinput import assert_user_error, cli, results, tiny_config, write_water

ROWS = ["O 0.0 0.0 0.0 0.1 0.2 0.3", "H 0.96 0.0 0.0 -0.1 0.0 0.0", "H -0.24 0.93 0.0 0.0 -0.2 -0.3"]


def frame(rows=ROWS, energy="-10.5"):
    return f"{len(rows)}\nProperties=species:S:1:pos:R:3:forces:R:3 energy={energy} pbc=\"F F F\"\n" + "\n".join(rows) + "\n"


def shifted(dx: float, atoms=(0, 1, 2)) -> str:
    rows = []
    for k, r in enumerate(ROWS):
        p = r.split()
        if k in atoms:
            p[1] = repr(float(p[1]) + dx)
        rows.append(" ".join(p))
    return frame(rows)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny plain potential trained for 2 epochs on EMT water (the model of the evaluate cases)."""
    tmp = tmp_path_factory.mktemp("model")
    data = write_water(tmp / "data.extxyz")
    r = cli("train", tiny_config(tmp, data))
    assert r.exit_code == 0, r.output
    return tmp / "run" / "model.pt"


# ------------------------------------------------------------------ kinds 1 and 2: far-away atoms, huge coordinates
FAR = [("far-away atom (1e5 Å)", shifted(1e5, atoms=(2,)), "1e+05 Å on atom(s) [2]"),
       ("molecule translated by 1e10 Å", shifted(1e10), "1e+10 Å on atom(s) [0, 1, 2]"),
       ("far-away atom among good frames", frame() + shifted(3e4, atoms=(1,)), "3e+04 Å on atom(s) [1]")]


@pytest.mark.parametrize("name, text, message", FAR, ids=[c[0] for c in FAR])
def test_far_coordinates_in_every_command(tmp_path, model, name, text, message):
    bad = tmp_path / "far.extxyz"
    bad.write_text(text)
    frame_no = text.count("Properties=") - 1
    r = cli("data", "check", bad)
    assert_user_error(r, str(bad), f"frame {frame_no}", message, "uqpot accepts |x| <= 1e+04 Å", lines=2)
    r = cli("train", tiny_config(tmp_path, bad))
    assert_user_error(r, str(bad), f"frame {frame_no}", message, nothing_in=tmp_path)
    assert not (tmp_path / "run").exists()
    r = cli("evaluate", model, bad, "--out", tmp_path / "eval")
    assert_user_error(r, str(bad), message)
    assert not (tmp_path / "eval").exists()


def test_neighbour_list_of_a_wide_molecule_does_not_crash():
    """vesin's cell list died with SIGFPE once a molecule spanned ~1e5 cutoffs; such molecules go to a
    k-d tree, with the same pairs."""
    from uqpot.data.neighbors import _kdtree_pairs, neighbor_list

    pos = np.array([[0, 0, 0], [0.96, 0, 0], [1e5, 0.93, 0], [1e5 + 0.3, 0.93, 0]], float)
    i, j, s = neighbor_list(pos, None, [False] * 3, 0.5)
    assert sorted(zip(i.tolist(), j.tolist())) == [(2, 3), (3, 2)] and not s.any()
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 10, (40, 3))
    for a, b in zip(neighbor_list(pos, None, [False] * 3, 3.0), _kdtree_pairs(pos, 3.0)):
        assert np.array_equal(a, b)


def test_json_never_holds_nan(tmp_path):
    from uqpot.core.provenance import write_json

    write_json(tmp_path / "m.json", {"mae": float("nan"), "x": [1.0, float("inf")], "n": np.float32(2.5)})

    def refuse(c):
        raise ValueError(f"bare {c} in JSON")

    assert json.loads((tmp_path / "m.json").read_text(), parse_constant=refuse) == {"mae": None, "x": [1.0, None],
                                                                                    "n": 2.5}


def test_non_finite_predictions_are_not_metrics(tmp_path, model):
    """Finite but huge weights overflow float32: evaluate refuses the NaN/inf predictions, writes nothing."""
    import torch

    payload = torch.load(model, weights_only=True)
    key = next(k for k, v in payload["state_dict"].items() if v.is_floating_point() and v.dim() >= 2)
    payload["state_dict"][key] = torch.full_like(payload["state_dict"][key], 3e38)
    torch.save(payload, tmp_path / "huge.pt")
    data = write_water(tmp_path / "w.extxyz", n=4, seed=3)
    r = cli("evaluate", tmp_path / "huge.pt", data, "--out", tmp_path / "eval")
    assert_user_error(r, str(data), "predictions are non-finite", "no metrics were computed")
    assert results(tmp_path / "eval") == []


# ------------------------------------------------------------------ kind 13: every problem of a file
def test_data_check_reports_every_broken_frame(tmp_path):
    text = (frame() + frame(ROWS[:2] + ["H x 0.93 0 0 0 0"]) + frame() + frame(energy="high")
            + "3\nProperties=species:S:1:pos:R:3:forces:R:3 energy=1 pbc=\"F F F\"\n" + ROWS[0] + "\n"
            + frame() + frame(ROWS[:2] + ["H 0.96 0 0 0 0 0"]))
    bad = tmp_path / "broken.extxyz"
    bad.write_text(text)
    r = cli("data", "check", bad)
    assert_user_error(r, f"{bad}: frame 1: cannot read", f"{bad}: frame 3: field 'energy': energy is not a single number",
                      f"{bad}: frame 4: cannot read", f"{bad}: frame 6", "apart", "problem(s) in 1 file(s)", lines=None)
    r = cli("train", tiny_config(tmp_path, bad))
    assert_user_error(r, "frame 1", "frame 3", "frame 6", lines=None)
    assert not (tmp_path / "run").exists()


def test_binary_file_and_truncated_end(tmp_path):
    garbage = tmp_path / "garbage.extxyz"
    garbage.write_bytes(bytes(range(256)) * 4)
    cut = tmp_path / "cut.extxyz"
    cut.write_text(frame() + frame()[: frame().index("H -0.24")])  # the last atom line missing
    r = cli("data", "check", garbage, cut)
    assert_user_error(r, f"{garbage}: frame 0: cannot read: the file holds binary data",
                      f"{cut}: frame 1: cannot read: truncated frame: 3 atoms declared", lines=3)


# ------------------------------------------------------------------ kind 10: --format
def test_format_option_on_evaluate_and_data_check(tmp_path):
    data = write_water(tmp_path / "water.data")  # a suffix ase cannot guess from
    r = cli("data", "check", data)
    assert_user_error(r, str(data), "cannot read", lines=2)
    assert cli("data", "check", data, "--format", "extxyz").exit_code == 0
    r = cli("train", tiny_config(tmp_path, data, data={"format": "extxyz"}))
    assert r.exit_code == 0, r.output
    r = cli("evaluate", tmp_path / "run" / "model.pt", data, "--out", tmp_path / "e1")
    assert_user_error(r, str(data), "cannot read", nothing_in=tmp_path / "e1")
    r = cli("evaluate", tmp_path / "run" / "model.pt", data, "--format", "extxyz", "--out", tmp_path / "e2")
    assert r.exit_code == 0 and (tmp_path / "e2" / "metrics.json").is_file(), r.output


# ------------------------------------------------------------------ kind 14: a format guessed from the name
def test_cif_holding_extxyz_says_so(tmp_path):
    cif = tmp_path / "water.cif"
    cif.write_text(frame() + frame())
    r = cli("data", "check", cif)
    assert_user_error(r, f"{cif}: frame 0: cannot read as cif", "guessed from the file name",
                      "looks like extended XYZ", "--format extxyz", lines=2)
    assert "AssertionError: AssertionError" not in r.output
    assert cli("data", "check", cif, "--format", "extxyz").exit_code == 0


# ------------------------------------------------------------------ kind 16: structure files per split
def test_structure_file_given_as_index_file(tmp_path):
    data = write_water(tmp_path / "data.extxyz")
    r = cli("train", tiny_config(tmp_path, data, split={"train_file": str(data), "train": None, "val": None,
                                                         "test": None}))
    assert_user_error(r, f"{data}: split.train_file expects an index file", "looks like a structure file",
                      "data.train_path", nothing_in=tmp_path)
    assert "could not convert string to float" not in r.output


def test_index_file_given_as_structure_file(tmp_path):
    idx = tmp_path / "train.idx"
    idx.write_text("0\n1\n2\n")
    r = cli("train", tiny_config(tmp_path, data={"path": None, "train_path": str(idx)}, split=None))
    assert_user_error(r, str(idx), "looks like an index file", "split.train_file", nothing_in=tmp_path)


def test_train_val_test_structure_files(tmp_path):
    tr, va, te = (write_water(tmp_path / f"{k}.extxyz", n=n, seed=s) for k, n, s in
                  (("train", 16, 0), ("val", 4, 1), ("test", 5, 2)))
    cfg = tiny_config(tmp_path, data={"path": None, "train_path": str(tr), "val_path": str(va), "test_path": str(te)},
                      split=None)
    r = cli("train", cfg)
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["val"]["n_structures"] == 4 and summary["test"]["n_structures"] == 5
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert set(run["data_files"]) == {"data.train_path", "data.val_path", "data.test_path"}
    # without val_path, split.val of train_path is held out
    cfg = tiny_config(tmp_path, out=tmp_path / "held", data={"path": None, "train_path": str(tr)},
                      split={"val": 0.25, "train": None, "test": None})
    r = cli("train", cfg)
    assert r.exit_code == 0 and "test: none" in r.stdout, r.output
    assert json.loads((tmp_path / "held" / "summary.json").read_text())["val"]["n_structures"] == 4


@pytest.mark.parametrize("data, split, message", [
    ({"train_path": "T"}, {}, "data.path and data.train_path cannot be used together"),
    ({"path": None, "train_path": "T"}, {"train": 10}, "data.train_path and split.train cannot be used together"),
    ({"path": None, "val_path": "T"}, {}, "data.val_path needs data.train_path"),
], ids=["path and train_path", "train_path and split sizes", "val_path alone"])
def test_per_split_files_conflicts(tmp_path, data, split, message):
    d = write_water(tmp_path / "d.extxyz")
    data = {k: (str(d) if v == "T" else v) for k, v in data.items()}
    split = {"train": None, "val": None, "test": None, **split}
    cfg = tiny_config(tmp_path, d, data=data, split=split)
    r = cli("train", cfg)
    assert_user_error(r, str(cfg), message, nothing_in=tmp_path)


# ------------------------------------------------------------------ round three, kind 7 (and 3): stress input
def argon(stress: str = "", extra: str = "", x: float = 2.5) -> str:
    """A periodic two-atom argon frame; ``stress``/``extra`` are added to its comment line as written."""
    return (f"2\nLattice=\"5 0 0 0 5 0 0 0 5\" Properties=species:S:1:pos:R:3:forces:R:3 energy=-1.0 {stress} "
            f"{extra} pbc=\"T T T\"\nAr 0 0 0 0.1 0 0\nAr {x} 2.5 2.5 -0.1 0 0\n")


def test_voigt_stress_in_extended_xyz_is_read(tmp_path):
    """Six values (xx yy zz yz xz xy), which ASE's own reader refuses, are read as the symmetric tensor."""
    from uqpot.data.io import read_structures

    path = tmp_path / "voigt.extxyz"
    path.write_text(argon('stress="0.1 0.2 0.3 0.01 0.02 0.03"') + argon('stress={0.1 0.2 0.3 0.01 0.02 0.03}', x=2.6))
    assert cli("data", "check", path).exit_code == 0
    expect = [[0.1, 0.03, 0.02], [0.03, 0.2, 0.01], [0.02, 0.01, 0.3]]
    for s in read_structures(path):
        np.testing.assert_allclose(s.stress, expect, rtol=1e-12)


STRESS_CASES = [  # (name, text of the file, fragments)
    ("non-symmetric stress", argon('stress="0.1 0.5 0 0 0.2 0 0 0 0.3"'),
     ["frame 0: field 'stress': stress is not symmetric (component xy = 0.5, yx = 0)"]),
    ("non-symmetric virial", argon('virial="1 0 0 0 1 0 2 0 1"'), ["frame 0: field 'virial': virial is not symmetric"]),
    ("stress and a contradicting virial", argon('stress="0.1 0 0 0 0.2 0 0 0 0.3"', 'virial="50 0 0 0 50 0 0 0 50"'),
     ["frame 0: field 'stress/virial': the frame's stress and its virial disagree"]),
    ("stress on some frames only", argon('stress="0.1 0 0 0 0.2 0 0 0 0.3"') + argon(x=2.6),
     ["field 'stress': a stress on 1 of 2 periodic frames (none on frames [1])", "silently unused"]),
]


@pytest.mark.parametrize("name, text, fragments", STRESS_CASES, ids=[c[0] for c in STRESS_CASES])
def test_bad_stress_input(tmp_path, name, text, fragments):
    path = tmp_path / "bad.extxyz"
    path.write_text(text)
    r = cli("data", "check", path)
    assert_user_error(r, str(path), *fragments, lines=2)  # the problem, and the count
    r = cli("train", tiny_config(tmp_path, path))
    assert_user_error(r, str(path), *fragments, nothing_in=tmp_path)
    assert not (tmp_path / "run").exists()


def test_stress_and_an_agreeing_virial_are_accepted(tmp_path):
    path = tmp_path / "both.extxyz"
    path.write_text(argon('stress="0.1 0 0 0 0.2 0 0 0 0.3"', 'virial="-12.5 0 0 0 -25 0 0 0 -37.5"'))  # σ = −W/V
    assert cli("data", "check", path).exit_code == 0


def test_stress_key_in_no_frame(tmp_path):
    """Kind 3: a data.stress_key that no frame carries would leave the stress silently unused."""
    path = tmp_path / "water.extxyz"
    write_water(path)
    r = cli("train", tiny_config(tmp_path, path, data={"stress_key": "my_stress"}))
    assert_user_error(r, str(path), "data.stress_key 'my_stress': no frame has it", nothing_in=tmp_path)
