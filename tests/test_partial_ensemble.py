"""Partially shared ensembles: K members sharing the embedding and the first k interaction blocks."""

import numpy as np
import pytest
import torch

import uqpot
from uqpot.core import fields as F
from uqpot.nn.painn import PaiNNOptions as ModelConfig
from uqpot.train.config import TrainConfig
from uqpot.fit.config import uq_config
from uqpot.data.batch import iterate_batches
from uqpot.uq import PartialEnsemble

SMALL = dict(features=16, interactions=3, rbf=8, readout_hidden=8, cutoff=5.0, activation="ssp")


def build(shared, members=3, seed=0):
    m = PartialEnsemble(dict(SMALL, members=1, seeds=[seed]), members=members, shared=shared).double()
    return m


@pytest.fixture(scope="module")
def data(ethanol):
    return ethanol[:12]


def batch_of(data, layout="sparse", dtype=torch.float64):
    return next(iter(iterate_batches(data, len(data), 5.0, dtype=dtype, layout=layout)))[1]


@pytest.mark.parametrize("shared", [0, 1, 3])
def test_members_share_exactly_the_trunk(data, shared):
    m = build(shared)
    m.fit_reference(data)
    b = batch_of(data)
    out = m(b)
    fk = out[F.FORCES_MEMBERS].detach()
    # member 0 is the potential's own network; the dense layout gives the same members
    torch.testing.assert_close(fk[0], m.potential(b)[F.FORCES].detach(), rtol=0, atol=0)
    torch.testing.assert_close(m(batch_of(data, "dense"))[F.FORCES_MEMBERS].detach(), fk, rtol=1e-10, atol=1e-10)
    # the uncertainty is the members' force variance (Eq. 5 of the ensemble)
    torch.testing.assert_close(out[F.UNCERTAINTY_ATOM].detach(), fk.var(0, correction=1).mean(-1))
    # a shared parameter moves every member, a branch's own parameter only that member
    with torch.no_grad():
        m.potential.representation.embedding.weight.add_(0.01)
    moved = m(b)[F.FORCES_MEMBERS].detach()
    assert all(not torch.allclose(moved[k], fk[k]) for k in range(3))
    before = moved
    with torch.no_grad():
        m.branches.readout.lin1.weight[1].add_(0.05)  # member 2's readout
    after = m(b)[F.FORCES_MEMBERS].detach()
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])
    assert not torch.allclose(after[2], before[2])
    # a shared interaction block moves every member only when it is shared
    if shared >= 1:
        with torch.no_grad():
            m.potential.representation.messages[0].phi.lin1.weight.add_(0.02)
        again = m(b)[F.FORCES_MEMBERS].detach()
        assert all(not torch.allclose(again[k], after[k]) for k in range(3))


def test_member_forces_are_minus_their_energy_gradient(data):
    m = build(1)
    m.fit_reference(data)
    b = batch_of(data[:2])
    fk = m(b)[F.FORCES_MEMBERS].detach()
    h = 1e-4  # absolute energies ~1e5 kcal/mol: cancellation ~1e-16·1e5/h
    for k in range(3):
        for atom, axis in ((0, 0), (4, 2), (11, 1)):
            e = []
            for sgn in (1, -1):
                pos = b.positions.clone()
                pos[atom, axis] += sgn * h
                e.append(m(b.with_positions(pos), compute_forces=False)[F.ENERGY_MEMBERS][k].sum().item())
            fd = -(e[0] - e[1]) / (2 * h)
            assert abs(fd - fk[k, atom, axis].item()) <= 1e-5 * max(1.0, abs(fd))


def test_sharing_more_means_fewer_parameters_and_bad_splits_are_refused():
    counts = [sum(p.numel() for p in build(k).parameters()) for k in range(4)]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[3]
    with pytest.raises(ValueError, match="0..3"):
        build(4)
    with pytest.raises(ValueError, match="members = 1"):
        PartialEnsemble(dict(SMALL, members=2, seeds=[0, 1]), members=3, shared=1)


def test_training_keeps_every_branch_and_the_file_round_trips(tmp_path, ethanol):
    from uqpot.fit.run import fit_model

    train, val, test = ethanol[:24], ethanol[24:32], ethanol[32:40]
    cfg = TrainConfig(epochs=3, batch_size=8, lr=2e-3, progress=False)
    uq = uq_config(method="partial_ensemble", members=3, shared=2)
    summary = fit_model(ModelConfig(**SMALL), uq, cfg, 0, train, val, test, tmp_path)
    assert summary["test"]["method"] == "partial_ensemble" and np.isfinite(summary["test"]["spearman"])
    model = uqpot.load(tmp_path / "model.pt")
    assert model.hparams["members"] == 3 and model.hparams["shared"] == 2
    init = build(2)
    # the best checkpoint holds every branch as trained, not only the first one along the branch axis
    w_init = init.branches.readout.lin1.weight.detach().float()
    w = model.branches.readout.lin1.weight.detach().float()
    assert all(not torch.allclose(w[k], w_init[k]) for k in range(2))
    b = batch_of(test, dtype=model.dtype)
    model.eval()
    again = uqpot.load(tmp_path / "model.pt")
    torch.testing.assert_close(again(b)[F.UNCERTAINTY].detach(), model(b)[F.UNCERTAINTY].detach(), rtol=0, atol=0)
