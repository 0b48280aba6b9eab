"""An ensemble assembled from separately trained single networks equals evaluating each network alone."""

from __future__ import annotations

import pytest
import torch

from uqpot.core import fields as F
from uqpot.data.batch import collate
from uqpot.nn.potential import Potential
from uqpot.uq.ensemble import Ensemble

HP = dict(features=16, interactions=2, rbf=8, cutoff=4.0, readout_hidden=8)


def test_from_members_equals_each_member(ethanol):
    train = ethanol[:20]
    members = [Potential(**HP, seeds=[s]).double() for s in (3, 7, 11)]
    for m in members:
        m.fit_reference(train)
    with torch.no_grad():  # make the members differ beyond their initialisation
        members[1].readout.lin2.bias.add_(0.1)
    ens = Ensemble.from_members(members).double()
    assert ens.members == 3 and ens.potential.hparams["seeds"] == [3, 7, 11]
    batch = collate(list(ethanol[20:24]), cutoff=4.0, dtype="float64")
    out = ens.forward_members(batch)
    for k, m in enumerate(members):
        ref = m(batch)
        assert torch.allclose(out[F.ENERGY][k], ref[F.ENERGY], atol=1e-10)
        assert torch.allclose(out[F.FORCES][k], ref[F.FORCES], atol=1e-10)
    pred = ens(batch)
    f = torch.stack([m(batch)[F.FORCES] for m in members])
    assert torch.allclose(pred[F.FORCES], f.mean(0), atol=1e-10)
    assert torch.allclose(pred[F.UNCERTAINTY_ATOM], f.var(0, correction=1).mean(-1), atol=1e-10)


def test_from_members_refuses_mismatched_models(ethanol):
    a, b = Potential(**HP, seeds=[0]), Potential(**{**HP, "features": 8}, seeds=[1])
    with pytest.raises(ValueError, match="hyper-parameters"):
        Ensemble.from_members([a, b])
    c = Potential(**HP, seeds=[1])
    a.fit_reference(ethanol[:10])
    c.fit_reference(ethanol[10:30])
    with pytest.raises(ValueError, match="different data"):
        Ensemble.from_members([a, c])
    with pytest.raises(ValueError, match="at least 2"):
        Ensemble.from_members([a])
