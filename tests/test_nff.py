"""The NFF reader: published-format files read back exactly, through an allow-list that runs no code."""

from __future__ import annotations

import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from uqpot.data.sets.nff import load_nff, read_nff
from uqpot.core.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
AMMONIA = SHARED_DATA / "ammonia_public.extxyz"


@pytest.fixture(scope="module")
def public():
    if not AMMONIA.is_file():
        pytest.skip(f"reference data {AMMONIA.name} not found in {AMMONIA.parent}")
    from uqpot.data.io import read_structures

    return read_structures(AMMONIA)


def _props(ds):
    import torch

    return {
        "nxyz": [torch.tensor(np.column_stack([s.numbers, s.positions]), dtype=torch.float32) for s in ds],
        "energy": torch.tensor([s.energy for s in ds], dtype=torch.float64),
        "energy_grad": [torch.tensor(-s.forces, dtype=torch.float64) for s in ds],
        "geom_id": torch.tensor([int(s.info["geom_id"]) for s in ds], dtype=torch.long),
        "num_atoms": torch.tensor([s.n_atoms for s in ds]),
        "smiles": ["N"] * len(ds),
    }


class _FakeNFF:
    """Registers a module ``nff.data.dataset`` with a ``Dataset`` class, so that torch.save writes the same
    global reference as the real NFF package (the reader never imports it)."""

    def __enter__(self):
        self.saved = {k: sys.modules.get(k) for k in ("nff", "nff.data", "nff.data.dataset")}
        mods = {k: types.ModuleType(k) for k in self.saved}

        class Dataset:
            def __init__(self, props, units="kcal/mol"):
                self.props, self.units = props, units

        Dataset.__module__ = "nff.data.dataset"
        Dataset.__qualname__ = "Dataset"
        mods["nff.data.dataset"].Dataset = Dataset
        sys.modules.update(mods)
        return Dataset

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _check_same(back, ds):
    assert len(back) == len(ds)
    for a, b in zip(back, ds):
        assert list(a.numbers) == list(b.numbers)
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-6)  # stored as float32 in nxyz
        assert a.energy == b.energy
        np.testing.assert_array_equal(a.forces, b.forces)
        assert a.info["geom_id"] == int(b.info["geom_id"]) and a.info["smiles"] == "N"


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_nff_dataset_object_round_trip(public, tmp_path, zip_format):
    import torch

    path = tmp_path / "ammonia.pth.tar"
    with _FakeNFF() as Dataset:
        torch.save(Dataset(_props(public)), path, _use_new_zipfile_serialization=zip_format)
    _check_same(read_nff(path), public)


def test_plain_dict_with_stacked_tensors_and_numpy(public, tmp_path):
    import torch

    props = _props(public)
    props["nxyz"] = torch.stack(props["nxyz"])  # (N, 4, 4)
    props["energy_grad"] = np.stack([g.numpy() for g in props["energy_grad"]])  # a NumPy array
    path = tmp_path / "dict.pth.tar"
    torch.save(props, path)
    _check_same(read_nff(path), public)
    # a tensor that is a strided view (a transposed slice) comes back with the right values
    x = torch.arange(24, dtype=torch.float64).reshape(4, 6)[:, 1:5].t()
    torch.save({"x": x}, tmp_path / "view.pt")
    np.testing.assert_array_equal(load_nff(tmp_path / "view.pt")["x"], x.numpy())


class _Payload:
    """Creates a file when unpickled by a plain pickle reader."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


class _SystemPayload:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("payload", [_Payload, _SystemPayload])
@pytest.mark.parametrize("container", ["torch-zip", "torch-legacy", "pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, payload, container):
    import torch

    marker = tmp_path / "pwned"
    evil = {"nxyz": [np.zeros((1, 4))], "energy": [0.0], "x": payload(marker)}
    path = tmp_path / "evil.pth.tar"
    if container == "pickle":
        path.write_bytes(pickle.dumps(evil, protocol=2))
    else:
        torch.save(evil, path, _use_new_zipfile_serialization=container == "torch-zip")
    with pytest.raises(DataError) as e:
        read_nff(path)
    assert not marker.exists()
    assert "refused to load the global" in str(e.value) and str(path) in str(e.value)
    assert any(name in str(e.value) for name in ("io.open", "builtins.open", "posix.system"))
    if container == "pickle" and payload is _Payload:  # the payload is live: a plain pickle.load runs it
        with open(path, "rb") as f:
            pickle.load(f)  # noqa: S301  (the point of the test)
        assert marker.exists()


def test_other_classes_and_garbage_are_refused(tmp_path):
    from fractions import Fraction

    path = tmp_path / "obj.pkl"
    path.write_bytes(pickle.dumps({"nxyz": Fraction(1, 3)}))
    with pytest.raises(DataError, match="fractions.Fraction"):
        load_nff(path)
    (tmp_path / "junk.pth.tar").write_bytes(b"\x80\x02not really a pickle")
    with pytest.raises(DataError, match="junk.pth.tar"):
        read_nff(tmp_path / "junk.pth.tar")
    path.write_bytes(pickle.dumps({"energy": [1.0]}))
    with pytest.raises(DataError, match="nxyz"):
        read_nff(path)


def test_read_structures_and_data_check_read_nff_files(public, tmp_path):
    """The standard reader (and so ``uqpot data check`` and training configs) takes .pth.tar files."""
    import torch
    from click.testing import CliRunner

    from uqpot.cli.main import cli
    from uqpot.data.io import read_structures

    path = tmp_path / "ammonia.pth.tar"
    with _FakeNFF() as Dataset:
        torch.save(Dataset(_props(public)), path)
    _check_same(read_structures(path), public)
    r = CliRunner().invoke(cli, ["data", "check", str(path)])
    assert r.exit_code == 0 and "1 file(s) valid" in r.output
    evil = tmp_path / "evil.pth.tar"
    torch.save({"nxyz": [np.zeros((1, 4))], "x": _Payload(tmp_path / "pwned")}, evil)
    r = CliRunner().invoke(cli, ["data", "check", str(evil)])
    assert r.exit_code == 2 and "refused to load the global" in r.output and not (tmp_path / "pwned").exists()
