"""MACE as a uqpot backbone: forces, members, the graph convention against MACE's own pipeline, model files,
conversion of a user's MACE file and the refusal of an untrusted pickle."""

from __future__ import annotations

import importlib.util
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

if importlib.util.find_spec("mace") is None:  # found, not imported: importing mace changes torch.load (see below)
    pytest.skip("mace-torch is not installed (pip install 'uqpot[mace]')", allow_module_level=True)

from uqpot.core import fields as F  # noqa: E402
from uqpot.nn import modelfile  # noqa: E402
from uqpot.data.batch import collate  # noqa: E402
from uqpot.data.structures import Structure  # noqa: E402
from uqpot.nn.mace import MACEPotential, import_mace, mace_config  # noqa: E402
from uqpot.core.units import EV_TO_KCAL_PER_MOL  # noqa: E402

UQPOT = [sys.executable, "-m", "uqpot.cli.main"]


def _net(members=1, seeds=None, cutoff=4.0, dtype=torch.float64):
    cfg = mace_config(channels=8, max_L=1, correlation=2, interactions=2, cutoff=cutoff, radial_mlp=(16,),
                      elements=[1, 6, 8, 14], avg_num_neighbors=6.0)
    m = MACEPotential(mace=cfg, cutoff=cutoff, members=members, seeds=seeds or list(range(members))).to(dtype)
    with torch.no_grad():  # non-trivial references and scale, as after fit_reference
        m.atomref[[1, 6, 8, 14]] = torch.tensor([-300.0, -23000.0, -47000.0, -180000.0], dtype=torch.float64)
        m.energy_scale.fill_(3.7)
    return m.eval()


def _ethanol(rattle=0.05, seed=1):
    at = molecule("CH3CH2OH")
    at.rattle(rattle, seed=seed)
    return Structure.from_atoms(at)


def _quartz_triclinic():
    cell = np.array([[4.9, 0.0, 0.0], [-2.2, 4.3, 0.0], [0.4, 0.3, 5.4]])
    rng = np.random.default_rng(4)
    frac = rng.uniform(0, 1, (9, 3))
    at = Atoms(numbers=[14, 14, 14, 8, 8, 8, 8, 8, 8], scaled_positions=frac, cell=cell, pbc=True)
    return Structure.from_atoms(at)


def _fd_forces(model, s, idx, h=1e-5):
    out = []
    for (a, c) in idx:
        e = []
        for sign in (1, -1):
            pos = s.positions.copy()
            pos[a, c] += sign * h
            b = collate([Structure(s.numbers, pos, s.cell, s.pbc)], cutoff=model.cutoff, dtype=torch.float64)
            e.append(float(model(b, compute_forces=False)[F.ENERGY_RESIDUAL][0]))  # no 1e5 references
        out.append(-(e[0] - e[1]) / (2 * h))
    return np.array(out)


@pytest.mark.parametrize("structure", ["molecule", "triclinic"])
def test_forces_equal_minus_energy_gradient(structure):
    m = _net()
    s = _ethanol() if structure == "molecule" else _quartz_triclinic()
    b = collate([s], cutoff=m.cutoff, dtype=torch.float64)
    forces = m(b)[F.FORCES].detach().numpy()
    idx = [(0, 0), (2, 1), (5, 2), (len(s.numbers) - 1, 0)]
    fd = _fd_forces(m, s, idx)
    np.testing.assert_allclose([forces[a, c] for a, c in idx], fd, rtol=1e-6, atol=1e-7)
    assert np.abs(fd).max() > 1e-3  # the check is not on zero forces


def test_member_m_equals_a_single_network_with_seed_m():
    pair = _net(members=2, seeds=[5, 6])
    single = _net(members=1, seeds=[6])
    b = collate([_ethanol(), _ethanol(seed=2)], cutoff=4.0, dtype=torch.float64)
    op, os_ = pair.forward_members(b), single.forward_members(b)
    for key in (F.ENERGY, F.FORCES, F.FEATURES):
        torch.testing.assert_close(op[key][1], os_[key][0], rtol=1e-12, atol=1e-12)
    assert (op[F.ENERGY_RESIDUAL][0] - op[F.ENERGY_RESIDUAL][1]).abs().min() > 1e-3  # the members differ
    assert all(p.shape[0] == 2 for p in pair.parameters())  # every parameter has the member axis


def test_parameter_blocks_follow_maces_layers():
    """Each layer's interaction and product basis is a block; every layer's readout is the readout."""
    m = _net(members=2, seeds=[1, 2])
    blocks = m.parameter_blocks()
    n_layers = len({n.split("__")[1] for n, _ in m.named_parameters() if "interactions__" in n})
    assert [n for n, _ in blocks] == ["embedding"] + [f"interaction {k + 1}" for k in range(n_layers)] + ["readout"]
    names = [n for _, ns in blocks for n in ns]
    assert sorted(names) == sorted(n for n, _ in m.named_parameters()) and len(set(names)) == len(names)
    assert dict(blocks)["readout"] and all("readouts__" in n for n in dict(blocks)["readout"])
    assert all("__0__" in n for n in dict(blocks)["interaction 1"])


def test_save_load_round_trip(tmp_path):
    m = _net(members=2, seeds=[1, 2], dtype=torch.float32)
    path = modelfile.save(m, tmp_path / "mace.pt")
    loaded = modelfile.load(path)
    assert isinstance(loaded, MACEPotential) and loaded.hparams == m.hparams
    b = collate([_ethanol(), _quartz_triclinic()], cutoff=4.0, dtype=torch.float32)
    a, c = m.forward_members(b), loaded.forward_members(b)
    for key in (F.ENERGY, F.FORCES, F.FEATURES):
        torch.testing.assert_close(a[key], c[key], rtol=0, atol=0)
    payload = torch.load(path, weights_only=True)  # plain tensors and values only
    assert payload["hparams"]["backbone"] == "mace" and isinstance(payload["hparams"]["mace"]["hidden_irreps"], str)


def _user_mace_file(path, dtype=torch.float64):
    """A ScaleShiftMACE built and saved the way MACE's training script saves its models (a pickled module)."""
    modules = import_mace()
    from e3nn import o3

    torch.manual_seed(3)
    model = modules.ScaleShiftMACE(
        r_max=4.5, num_bessel=8, num_polynomial_cutoff=5, max_ell=2,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"], num_interactions=2,
        num_elements=3, hidden_irreps=o3.Irreps("8x0e+8x1o"), MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.array([-13.6, -1029.0, -2041.0]), avg_num_neighbors=5.0, atomic_numbers=[1, 6, 8],
        correlation=2, gate=torch.nn.functional.silu, atomic_inter_scale=1.3, atomic_inter_shift=0.1,
        radial_MLP=[16]).to(dtype)
    torch.save(model, path)
    return model


def _mace_own_prediction(model, atoms):
    """Energy (eV) and forces (eV/Å) from MACE's own data pipeline (its neighbour list and graph)."""
    from mace import data as mace_data
    from mace.tools import torch_geometric, torch_tools, utils

    with torch_tools.default_dtype(torch.float64):
        config = mace_data.config_from_atoms(atoms)
        graph = mace_data.AtomicData.from_config(config, z_table=utils.AtomicNumberTable([1, 6, 8]), cutoff=4.5)
    batch = next(iter(torch_geometric.dataloader.DataLoader([graph], batch_size=1)))
    out = model(batch.to_dict(), compute_force=True)
    return float(out["energy"][0].detach()), out["forces"].detach().numpy()


def test_converted_user_file_matches_mace_in_kcal_per_mol(tmp_path):
    user = tmp_path / "user.model"
    original = _user_mace_file(user)
    r = subprocess.run(UQPOT + ["convert", str(user), "--trusted", "--out", str(tmp_path / "conv.pt")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") is None
    assert "Warning" not in r.stderr, r.stderr  # a successful conversion says nothing on stderr
    conv = modelfile.load(tmp_path / "conv.pt")
    for atoms in (molecule("CH3CH2OH"),
                  Atoms("C2H2O2", positions=np.random.default_rng(0).uniform(0, 4, (6, 3)), cell=np.diag([4.2, 4.5, 4.8]),
                        pbc=True)):
        atoms.rattle(0.03, seed=7)
        e_ev, f_ev = _mace_own_prediction(original, atoms)
        out = conv(collate([Structure.from_atoms(atoms)], cutoff=conv.cutoff, dtype=torch.float64))
        assert float(out[F.ENERGY][0]) == pytest.approx(e_ev * EV_TO_KCAL_PER_MOL, rel=1e-10)
        np.testing.assert_allclose(out[F.FORCES].detach().numpy(), f_ev * EV_TO_KCAL_PER_MOL, rtol=1e-8, atol=1e-8)


class _Evil:
    """A pickle that, when loaded, writes a marker file (what a malicious model file could do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_untrusted_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.model"
    with open(evil, "wb") as fh:
        pickle.dump(_Evil(marker), fh)
    r = subprocess.run(UQPOT + ["convert", str(evil)], capture_output=True, text=True)
    assert r.returncode == 2
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and str(evil) in lines[0] and "--trusted" in lines[0]
    r = subprocess.run(UQPOT + ["evaluate", str(evil), "nothing.xyz"], capture_output=True, text=True)
    assert r.returncode == 2 and "uqpot convert" in r.stderr
    assert not marker.exists()
    # importing MACE leaves torch.load's weights_only default on: the same file is still refused
    import_mace()
    assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") is None
    with pytest.raises(pickle.UnpicklingError):
        torch.load(evil)
    assert not marker.exists()


@pytest.fixture(scope="module")
def small_ethanol(ethanol):
    return ethanol.subset(range(24)), ethanol.subset(range(24, 32))


@pytest.mark.parametrize("method", ["ensemble", "gmm", "llpr", "mve", "descriptor_distance"])
def test_uq_methods_and_consumers_take_a_mace_network(method, small_ethanol):
    """Every UQ method on a MACE backbone gives a finite uncertainty, and the ASE calculator, the batched MD
    engine and the adversarial attack take the result unchanged."""
    from uqpot.md.batched import run_batched
    from uqpot.md.calculator import UQPotCalculator
    from uqpot.nn.backbone import build_potential
    from uqpot.nn.mace import potential_hparams
    from uqpot.nn.backbone import parse_model
    from uqpot.sample.adversarial import AttackConfig, BoltzmannReference, attack
    from uqpot.fit.run import member_count
    from uqpot.uq import METHODS, build_method
    from uqpot.uq.options import parse_uq
    from uqpot.fit.wrap import fit_and_calibrate

    train, val = small_ethanol
    uq = parse_uq({"method": method, **({"members": 2} if method == "ensemble" else {})})
    cfg = parse_model({"kind": "mace", "channels": 8, "correlation": 2, "cutoff": 4.0, "radial_mlp": [16]})
    hp = potential_hparams(cfg, member_count(uq), list(range(member_count(uq))), train)
    model = (METHODS[method].wrap(build_potential(hp), uq) if METHODS[method].posthoc else build_method(uq, hp))
    model = model.to(torch.float64)
    model.fit_reference(train)
    fit_and_calibrate(model, train, val, batch_size=8)
    model.eval()
    b = collate(val.structures[:3], cutoff=model.cutoff, dtype=torch.float64)
    u = model(b)[F.UNCERTAINTY]
    assert u.shape == (3,) and torch.isfinite(u).all()
    atoms = val.structures[0].to_atoms()
    atoms.calc = UQPotCalculator(model)
    assert np.isfinite(atoms.get_forces()).all() and np.isfinite(atoms.calc.results["uncertainty"])
    md = run_batched(model, val.structures[:2], 5, timestep_fs=0.5, temperatures_K=300.0, seeds=0)
    assert md.model_calls >= 5
    ref = BoltzmannReference.from_energies(train.energies(), [s.n_atoms for s in train], 0.7)
    res = attack(model, val.structures[:2], ref, AttackConfig(iterations=3, n_seeds=2, energy_cutoff=None))
    assert len(res.samples) + len(res.rejected) == 2


def _train_config(tmp_path, ethanol_path, **train):
    import yaml

    cfg = {"seed": 0, "out": str(tmp_path / "run"), "data": {"path": str(ethanol_path)},
           "split": {"train": 16, "val": 8, "test": 8, "seed": 0},
           "model": {"kind": "mace", "channels": 8, "correlation": 2, "cutoff": 4.0, "radial_mlp": [16]},
           "uq": {"method": "gmm", "candidates": [1]}, "train": {"epochs": 1, "batch_size": 8, **train}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_uqpot_train_with_model_kind_mace(tmp_path, ethanol_path):
    r = subprocess.run(UQPOT + ["train", str(_train_config(tmp_path, ethanol_path)), "--no-progress"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from uqpot.evaluation.models import load

    model = load(tmp_path / "run" / "model.pt")
    assert model.potential.backbone == "mace" and model.kind == "uq.gmm"
    import json

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert np.isfinite(summary["test"]["forces_mae"]) and np.isfinite(summary["test"]["spearman"])


@pytest.mark.parametrize("train, key", [({"compile": True}, "train.compile"), ({"layout": "dense"}, "train.layout")])
def test_mace_refuses_what_it_cannot_do(tmp_path, ethanol_path, train, key):
    from support.badinput import assert_user_error, cli

    r = cli("train", str(_train_config(tmp_path, ethanol_path, **train)))
    assert_user_error(r, key, "MACE")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model, message", [
    ({"kind": "nequip"}, "'model.kind': Input should be 'painn', 'mace' or 'sevennet' (got 'nequip')"),
    ({"kind": "mace", "channels": 0}, "'model.channels': Input should be greater than or equal to 1 (got 0)"),
    ({"kind": "mace", "features": 8}, "unknown key 'model.features'"),
    ({"kind": "mace", "radial_mlp": [16, 0]}, "radial_mlp widths must be >= 1"),
])
def test_bad_model_sections(tmp_path, ethanol_path, model, message):
    import yaml

    path = _train_config(tmp_path, ethanol_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["model"] = model
    path.write_text(yaml.safe_dump(cfg))
    from support.badinput import assert_user_error, cli

    r = cli("train", str(path))
    assert_user_error(r, message, str(path))
    assert not (tmp_path / "run").exists()


def test_mace_stress_equals_ase_finite_differences():
    from uqpot.md.calculator import UQPotCalculator

    atoms = _quartz_triclinic().to_atoms()
    atoms.calc = UQPotCalculator(_net())
    numeric = atoms.calc.calculate_numerical_stress(atoms, d=1e-5)
    assert np.abs(numeric).max() > 1e-4
    assert np.abs(atoms.get_stress() - numeric).max() <= 1e-4 * np.abs(numeric).max()


def test_fresh_readout_of_a_mace_network_follows_each_seed(small_ethanol):
    """finetune.readout: reinit on MACE (the base class's rebuild from hparams): member m's fresh readout is
    the readout of a MACE network built with seed m, different per seed."""
    from uqpot.nn.backbone import build_potential, parse_model
    from uqpot.nn.mace import potential_hparams

    train, _ = small_ethanol
    cfg = parse_model({"kind": "mace", "channels": 8, "correlation": 2, "cutoff": 4.0, "radial_mlp": [16]})
    pot = build_potential(potential_hparams(cfg, 1, [0], train))
    fresh = pot.fresh_readout([5, 6])
    assert sorted(fresh) == sorted(dict(pot.parameter_blocks())["readout"])
    single = dict(build_potential(potential_hparams(cfg, 1, [6], train)).named_parameters())
    for name, value in fresh.items():
        assert not torch.equal(value[0], value[1])
        torch.testing.assert_close(value[1], single[name][0].detach(), rtol=0, atol=0)
