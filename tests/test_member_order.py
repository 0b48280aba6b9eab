"""Independent batch orders of a stacked ensemble: member m trained in the stack equals a single network
trained alone with member m's seed (same initialisation, same batches), to float64 tolerance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uqpot.train.config import TrainConfig
from uqpot.core.errors import ConfigError
from uqpot.nn.potential import Potential
from uqpot.train.member_order import one_molecule, resolve_member_order
from uqpot.train.trainer import Trainer

HP = dict(features=16, interactions=2, rbf=8, cutoff=4.0, readout_hidden=8)


def _train(model, train, val, tmp, order, seed):
    cfg = TrainConfig(epochs=3, batch_size=8, lr=2e-3, dtype="float64", progress=False, member_order=order)
    t = Trainer(model, train, val, cfg, tmp, seed=seed)
    res = t.fit()
    return t, res


def test_stacked_members_equal_single_networks(tmp_path, ammonia):
    train, val = ammonia[:30], ammonia[30:38]
    stacked = Potential(**HP, members=2, seeds=[5, 6])
    stacked.fit_reference(train)
    t, res = _train(stacked, train, val, tmp_path / "stacked", "independent", seed=5)
    assert t.member_order == "independent" and res.member_order == "independent"
    for m, seed in enumerate((5, 6)):
        single = Potential(**HP, members=1, seeds=[seed])
        single.fit_reference(train)
        _train(single, train, val, tmp_path / f"single{seed}", "auto", seed=seed)
        for (name, a), b in zip(stacked.state_dict().items(), single.state_dict().values()):
            if name in ("atomref", "energy_scale", "known_elements"):
                continue
            assert torch.allclose(a[m], b[0], atol=1e-8), name
    # with one shared order, member 1 sees member 0's batches: it differs from its single network
    shared = Potential(**HP, members=2, seeds=[5, 6])
    shared.fit_reference(train)
    _train(shared, train, val, tmp_path / "shared", "shared", seed=5)
    w = "readout.lin2.weight"
    assert not torch.allclose(shared.state_dict()[w][1], stacked.state_dict()[w][1], atol=1e-6)
    assert torch.allclose(shared.state_dict()[w][0], stacked.state_dict()[w][0], atol=1e-8)


def test_member_order_resume_is_identical(tmp_path, ammonia):
    train, val = ammonia[:24], ammonia[24:30]

    def run(epochs, out):
        model = Potential(**HP, members=2, seeds=[1, 2])
        model.fit_reference(train)
        cfg = TrainConfig(epochs=epochs, batch_size=8, lr=2e-3, dtype="float64", progress=False)
        Trainer(model, train, val, cfg, out, seed=1).fit()
        return model

    once = run(4, tmp_path / "once")
    run(2, tmp_path / "twice")
    again = run(4, tmp_path / "twice")  # resumes after epoch 2 with every member's generator restored
    for a, b in zip(once.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_resolution(ammonia, ethanol, tmp_path):
    assert one_molecule(ammonia) is None
    mixed = ammonia[:3] + ethanol[:3]
    assert "same molecule" in one_molecule(mixed)
    assert resolve_member_order(mixed, "auto", 5, "auto") == "shared"
    assert resolve_member_order(ammonia, "auto", 5, "auto") == "independent"
    # a single network of one molecule takes the same (dense, stacked) path as a member of any stack
    assert resolve_member_order(ammonia, "auto", 1, "auto") == "independent"
    assert resolve_member_order(mixed, "auto", 1, "auto") == "shared"
    assert resolve_member_order(ammonia, "auto", 5, "sparse") == "shared"
    with pytest.raises(ConfigError, match="member_order 'independent'"):
        resolve_member_order(mixed, "independent", 5, "auto")


@pytest.mark.slow  # about 1 min; CI keeps under 15 min (covered in part by faster tests)
def test_compiled_step_with_independent_orders_equals_eager(tmp_path, ammonia):
    """The compiled training step (dense layout, forces by torch.func.grad) takes the stacked member batches
    and gives the eager step's weights (float64)."""
    train, val = ammonia[:16], ammonia[16:22]
    weights = []
    for comp in (False, True):
        model = Potential(**HP, members=2, seeds=[3, 4])
        model.fit_reference(train)
        cfg = TrainConfig(epochs=1, batch_size=8, lr=2e-3, dtype="float64", progress=False, compile=comp,
                          member_order="independent")
        Trainer(model, train, val, cfg, tmp_path / f"c{comp}", seed=3).fit()
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert (weights[0] - weights[1]).abs().max() < 1e-10


def test_per_member_splits_equal_single_networks_on_their_own_split(tmp_path, ammonia):
    """``uq.splits: per_member`` (SI Sec. I: "all models were trained on different splits"): member m trains and
    validates on its own split of the pool (train + val), and equals a single network trained alone on that split
    with member m's seed."""
    import json

    from uqpot.uq.ensemble import Ensemble

    train, val = ammonia[:30], ammonia[30:40]
    pool = train + val
    ens = Ensemble(dict(HP, members=2, seeds=[5, 6]), splits="per_member")
    ens.fit_reference(train)
    t, _ = _train(ens, train, val, tmp_path / "ens", "auto", seed=5)
    splits = json.loads((tmp_path / "ens" / "member_splits.json").read_text())
    tr, va = [np.array(x) for x in splits["train"]], [np.array(x) for x in splits["val"]]
    assert [len(x) for x in tr] == [30, 30] and [len(x) for x in va] == [10, 10]
    assert set(tr[0]) != set(tr[1]) and all(not set(a) & set(b) for a, b in zip(tr, va))
    for m, seed in enumerate((5, 6)):
        single = Potential(**HP, members=1, seeds=[seed])
        single.fit_reference(train)  # the run's reference energies, shared by the members
        _train(single, pool.subset(tr[m]), pool.subset(va[m]), tmp_path / f"single{seed}", "auto", seed=seed)
        for (name, a), b in zip(ens.potential.state_dict().items(), single.state_dict().values()):
            if name in ("atomref", "energy_scale", "known_elements"):
                continue
            assert torch.allclose(a[m], b[0], atol=1e-8), (m, name)
    assert Ensemble.from_hparams(ens.hparams).member_splits == "per_member"
