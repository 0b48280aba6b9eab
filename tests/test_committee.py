"""A committee of different backbones (:mod:`uqpot.nn.committee`): each member, evaluated inside the committee
on the committee's (largest) cutoff, gives what it gives alone (energy, forces, stress; molecule and
triclinic cell); the MD engine and the attack run a committee as they run a stacked ensemble (equal
trajectories and samples for the same members); ``uqpot wrap A B C --method ensemble`` assembles members of
different backbones, refuses a member whose energies belong to another level of theory, and the loop refuses
a committee as a network to fine-tune."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from click.testing import CliRunner

import uqpot
from uqpot.cli.main import cli
from uqpot.core import fields as F
from uqpot.data.batch import collate
from uqpot.data.io import read_structures, write_extxyz
from uqpot.data.structures import Structure, StructureDataset
from uqpot.fit.finetune import build_from, refit_shift
from uqpot.md.batched import BatchedMD
from uqpot.md.calculator import UQPotCalculator
from uqpot.nn import modelfile
from uqpot.fit.wrap import energy_offsets
from uqpot.nn.committee import Committee
from uqpot.nn.potential import Potential
from uqpot.sample.adversarial import AttackConfig, BoltzmannReference, attack
from uqpot.uq.ensemble import Ensemble
from uqpot.uq.options import parse_uq

HAS_MACE = importlib.util.find_spec("mace") is not None


def _painn(cutoff, features, seed):
    return Potential(features=features, interactions=2, rbf=8, cutoff=cutoff, readout_hidden=8, seeds=[seed]).double()


def _mace(cutoff, seed):
    from uqpot.nn.mace import MACEPotential, mace_config

    cfg = mace_config(channels=8, max_L=1, correlation=2, interactions=2, cutoff=cutoff, radial_mlp=(16,),
                      elements=[1, 6, 8, 14], avg_num_neighbors=6.0)
    return MACEPotential(mace=cfg, cutoff=cutoff, members=1, seeds=[seed]).double()


def _quartz_triclinic(seed=4):
    cell = np.array([[4.9, 0.0, 0.0], [-2.2, 4.3, 0.0], [0.4, 0.3, 5.4]])
    frac = np.random.default_rng(seed).uniform(0, 1, (9, 3))
    return Structure.from_atoms(Atoms(numbers=[14, 14, 14, 8, 8, 8, 8, 8, 8], scaled_positions=frac, cell=cell,
                                      pbc=True))


def _members(data):
    """Networks of different cutoffs, sizes and backbones, their references fitted on ``data``."""
    nets = [_painn(4.0, 16, 3), _painn(5.0, 8, 7)] + ([_mace(4.5, 11)] if HAS_MACE else [])
    for n in nets:
        n.fit_reference(data)
        refit_shift(n, data)
        n.eval()
    return nets


@pytest.fixture(scope="module")
def mixed(ethanol):
    data = StructureDataset(list(ethanol[:30]) + [_quartz_triclinic(k) for k in range(3)])
    return _members(data)


@pytest.mark.parametrize("structure", ["molecule", "triclinic"])
def test_each_member_inside_the_committee_equals_it_alone(mixed, structure):
    at = molecule("CH3CH2OH")
    at.rattle(0.05, seed=1)
    s = Structure.from_atoms(at) if structure == "molecule" else _quartz_triclinic(9)
    ens = Ensemble.from_committee(mixed).eval()
    assert isinstance(ens.potential, Committee) and ens.cutoff == 5.0 and ens.dtype == torch.float64
    assert ens.potential.hparams["nets"][0]["cutoff"] == 4.0
    stress = structure == "triclinic"
    batch = collate([s], cutoff=ens.cutoff, dtype="float64")
    out = ens.forward_members(batch, compute_stress=stress)
    forces, fewer = [], 0
    for k, net in enumerate(mixed):
        own = collate([s], cutoff=net.cutoff, dtype="float64")  # the member's own neighbour list
        fewer += own.edge_index.shape[1] < batch.edge_index.shape[1]
        ref = net(own, compute_stress=stress)
        torch.testing.assert_close(out[F.ENERGY][k], ref[F.ENERGY], atol=1e-8, rtol=1e-12)
        torch.testing.assert_close(out[F.FORCES][k], ref[F.FORCES], atol=1e-9, rtol=1e-9)
        if stress:
            torch.testing.assert_close(out[F.STRESS][k], ref[F.STRESS], atol=1e-9, rtol=1e-9)
        forces.append(ref[F.FORCES])
    assert fewer  # some member's own list is shorter: pairs beyond its cutoff were in the committee's batch
    f = torch.stack(forces)
    assert f.std(0).mean() > 1e-3  # the members disagree: the committee's spread is not zero
    pred = ens(batch)
    torch.testing.assert_close(pred[F.FORCES], f.mean(0), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(pred[F.UNCERTAINTY_ATOM], f.var(0, correction=1).mean(-1), atol=1e-9, rtol=1e-9)
    assert F.FEATURES_MEMBERS not in pred  # no mixed feature space


def test_committee_file_round_trip(mixed, tmp_path):
    ens = Ensemble.from_committee(mixed).eval()
    modelfile.save(ens, tmp_path / "c.pt")
    again = uqpot.load(tmp_path / "c.pt").eval()
    assert type(again.potential) is Committee and again.potential.hparams == ens.potential.hparams
    assert again.elements() == [1, 6, 8, 14]
    at = molecule("CH3CH2OH")
    b = collate([Structure.from_atoms(at)], cutoff=5.0, dtype="float64")
    torch.testing.assert_close(again(b)[F.FORCES], ens(b)[F.FORCES], atol=1e-12, rtol=0)
    # the ASE calculator takes it as any UQ model (kcal/mol here, to compare without conversions)
    at.calc = UQPotCalculator(again, energy_unit="kcal/mol")
    np.testing.assert_allclose(at.get_forces(), ens(b)[F.FORCES].detach().numpy(), atol=1e-9)
    assert at.calc.results[F.UNCERTAINTY] == pytest.approx(float(ens(b)[F.UNCERTAINTY][0]), rel=1e-9)


def test_md_and_attack_run_a_committee_as_the_stacked_ensemble(ethanol):
    """The same members, once stacked (one batched call) and once as a committee (member by member): equal
    MD trajectories (Langevin, three replicas) and equal attack samples."""
    members = [_painn(4.0, 16, 3), _painn(4.0, 16, 5)]
    for m in members:
        m.fit_reference(ethanol[:30])
        m.eval()
    stacked, committee = Ensemble.from_members(members).eval(), Ensemble.from_committee(members).eval()
    assert stacked.dtype == committee.dtype == torch.float64
    assert isinstance(committee.potential, Committee) and not isinstance(stacked.potential, Committee)
    starts = [ethanol[k] for k in (40, 50, 60)]
    kw = dict(temperatures_K=[300.0, 600.0, 900.0], seeds=[1, 2, 3], timestep_fs=0.5, thermostat="langevin",
              check_every=10, record_every=5)
    a = BatchedMD(stacked, starts, **kw).run(40)
    b = BatchedMD(committee, starts, **kw).run(40)
    for ra, rb in zip(a.replicas, b.replicas):
        assert np.abs(ra.final_positions - rb.final_positions).max() < 1e-8
    assert np.abs(a.replicas[0].final_positions - starts[0].positions).max() > 1e-3  # it moved
    ref = BoltzmannReference.from_energies(ethanol[:30].energies(), [9] * 30, kT=20.0)
    cfg = AttackConfig(kT=20.0, iterations=5, lr=0.01, energy_cutoff=None, n_seeds=2)
    seeds = [ethanol[k] for k in (70, 80)]
    ra, rb = attack(stacked, seeds, ref, cfg), attack(committee, seeds, ref, cfg)
    u_a, u_b = ra.history["uncertainty"], rb.history["uncertainty"]
    np.testing.assert_allclose(u_a[0], u_b[0], rtol=1e-12)  # the same U at the seeds
    # then float64 rounding of two evaluation orders, which Adam's normalised steps carry on: equal to 1e-6
    np.testing.assert_allclose(u_a, u_b, rtol=1e-6)
    assert u_a[-1].min() > u_a[0].min()  # it climbed
    for x, y in zip(ra.samples, rb.samples):
        np.testing.assert_allclose(x.positions, y.positions, atol=1e-6)


def _write_member(net, path):
    modelfile.save(net, path)
    return path


@pytest.mark.skipif(not HAS_MACE, reason="mace-torch is not installed (pip install 'uqpot[mace]')")
def test_wrap_assembles_a_committee_and_refuses_another_level_of_theory(ethanol_path, tmp_path):
    ethanol = read_structures(ethanol_path)  # a fresh copy: the energy check reads the labels as they are on disk
    train, val = ethanol[:30], ethanol[100:120]
    write_extxyz(val, tmp_path / "val.extxyz")
    nets = _members(train)
    files = [_write_member(n, tmp_path / f"m{k}.pt") for k, n in enumerate(nets)]
    offset, spread = energy_offsets(Ensemble.from_committee(nets), val)
    assert np.all(np.abs(offset) < 1.0)
    res = CliRunner().invoke(cli, ["wrap", *map(str, files), "--method", "ensemble", "--val",
                                   str(tmp_path / "val.extxyz"), "--out", str(tmp_path / "committee.pt")])
    assert res.exit_code == 0, res.output
    assert "a committee of PaiNN, PaiNN, MACE" in res.output
    extra = modelfile.read(tmp_path / "committee.pt")["extra"]
    assert extra["wrapped"]["committee"]["members"] == ["PaiNN", "PaiNN", "MACE"]
    assert extra["calibration"]["a"] > 0
    model = uqpot.load(tmp_path / "committee.pt")
    assert model.members == 3 and model.cutoff == 5.0
    # a member with another level of theory's reference energies (500 kcal/mol per atom away) is named
    other = _painn(4.0, 16, 13)
    other.fit_reference(train)
    with torch.no_grad():
        other.atomref[[1, 6, 8]] += 500.0
    bad = _write_member(other, tmp_path / "other.pt")
    out = tmp_path / "refused.pt"
    res = CliRunner().invoke(cli, ["wrap", str(files[0]), str(files[2]), str(bad), "--method", "ensemble", "--val",
                                   str(tmp_path / "val.extxyz"), "--out", str(out)])
    assert res.exit_code == 2 and not out.exists()
    assert "other.pt" in res.output and "offset" in res.output and "+500" in res.output
    assert len(res.output.strip().splitlines()) == 1
    # a committee is not a network to fine-tune
    with pytest.raises(ValueError, match="not fine-tuned as one network"):
        build_from([model], parse_uq({"method": "none"}), 0, 1, True, [str(tmp_path / "committee.pt")])
