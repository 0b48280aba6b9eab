"""Helpers of the bad-input suite (tests/test_bad_*.py): real files, real tiny trainings, the real CLI.

The rule every case checks (:func:`assert_user_error`): exit status 2, the message on stderr beginning with
``error: `` and naming the file/key, no traceback, and no result file written (:func:`results`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import yaml
from click.testing import CliRunner

#: files that could be taken for a result of a command
RESULT_FILES = ("summary.json", "metrics.json", "model.pt", "per_structure.csv", "predictions.npz",
                "val_per_structure.csv", "test_per_structure.csv", "history.csv", "checkpoint.pt")

TINY_MODEL = {"features": 8, "interactions": 1, "rbf": 4, "readout_hidden": 4}


def water(n: int = 24, seed: int = 0, scale: float = 1.0):
    """``n`` rattled water molecules labelled by ASE's EMT (kcal/mol, Å after conversion)."""
    from ase import Atoms
    from ase.calculators.emt import EMT

    from uqpot.data.structures import Structure, StructureDataset
    from uqpot.core.units import EV_TO_KCAL_PER_MOL

    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        a = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
        a.positions += rng.normal(0, 0.05, (3, 3))
        a.calc = EMT()
        e, f = a.get_potential_energy() * EV_TO_KCAL_PER_MOL, a.get_forces() * EV_TO_KCAL_PER_MOL
        out.append(Structure.from_atoms(a, e * scale, f * scale, frame=k))
    return StructureDataset(out)


def write_water(path: Path, n: int = 24, seed: int = 0) -> Path:
    from uqpot.data.io import write_extxyz

    write_extxyz(water(n, seed), path)
    return path


def tiny_config(tmp: Path, data_path: Path | None = None, out: Path | None = None, name: str = "c.yaml",
                **sections) -> Path:
    """A training config of a tiny PaiNN (2 epochs) on ``data_path``; ``sections`` update it
    (``train={...}``; a key set to None is removed)."""
    cfg = {"out": str(out if out is not None else tmp / "run"), "data": {"path": str(data_path or tmp / "data.extxyz")},
           "split": {"train": 16, "val": 4, "test": 4}, "model": dict(TINY_MODEL),
           "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "progress": False, "device": "cpu"}}
    return _write_config(cfg, sections, tmp / name)


def _write_config(cfg: dict, sections: dict, path: Path) -> Path:
    """``cfg`` updated by ``sections`` (a dict merges into its section, None removes the key, anything else
    replaces it), written to ``path``."""
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        elif value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


#: an oracle that labels water in milliseconds: ASE's EMT through the ase oracle
EMT_ORACLE = {"name": "ase", "options": {"calculator": "ase.calculators.emt.EMT"}}


def tiny_loop_config(tmp: Path, train: Path | None = None, test: Path | None = None, out: Path | None = None,
                     name: str = "loop.yaml", **sections) -> Path:
    """A loop config of one tiny ensemble generation on EMT water (``train``/``test`` default to files
    written here); ``sections`` update it as in :func:`tiny_config`."""
    train = train or write_water(tmp / "train.extxyz", n=16, seed=0)
    test = test or write_water(tmp / "test.extxyz", n=6, seed=1)
    cfg = {"seed": 0, "out": str(out if out is not None else tmp / "loop"), "methods": ["ensemble"],
           "generations": 1, "data": {"train": str(train), "test": str(test), "align_structures": 2},
           "model": dict(TINY_MODEL), "uq": {"ensemble": {"members": 2}},
           "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "progress": False, "device": "cpu"},
           "attack": {"n_seeds": 2, "iterations": 2, "iterations_evidential": 2, "lr": 0.02, "energy_cutoff": 500.0},
           "oracle": copy.deepcopy(EMT_ORACLE)}
    return _write_config(cfg, sections, tmp / name)


def cli(*args):
    """Runs ``uqpot ARGS`` in this process; ``result.stderr`` and ``result.stdout`` apart."""
    from uqpot.cli.main import cli as group

    return CliRunner().invoke(group, [str(a) for a in args], catch_exceptions=False)


def results(folder: Path) -> list[str]:
    """Result files under ``folder`` (recursively), by name relative to it."""
    folder = Path(folder)
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name in RESULT_FILES)


def assert_user_error(r, *fragments: str, nothing_in: Path | None = None, lines: int | None = 1) -> None:
    """Exit 2, ``lines`` ``error: ...`` lines on stderr (None: any number) holding every fragment, no
    traceback, nothing written in ``nothing_in`` that could be taken for a result."""
    err = r.stderr
    assert r.exit_code == 2, f"exit {r.exit_code}: {r.output}"
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert errors, err
    if lines is not None:
        assert len(errors) == lines, err
    for f in fragments:
        assert f in err, f"{f!r} not in: {err}"
    assert "Traceback" not in r.output
    if nothing_in is not None:
        assert results(nothing_in) == [], results(nothing_in)
