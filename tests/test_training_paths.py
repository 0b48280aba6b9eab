"""The two training paths train the same network: the compiled step (``train.compile: true``: forward,
forces by ``torch.func.grad`` and loss traced as one function, its backward derived by AOT autograd) gives
the eager step's losses, gradients and weights, epoch after epoch, for an ensemble with its members' own
batch orders (stacked positions) and for a single network, and a run's summary says which path trained it.

The default run traces the step through ``torch.compile`` with the ``aot_eager`` backend: the same capture,
functionalisation and derived backward as inductor, executed by eager kernels (seconds instead of the
minutes of inductor's C++ build on two cores); the inductor run itself is the slow test."""

import functools

import pytest
import torch

from uqpot.data.structures import StructureDataset
from uqpot.nn.potential import Potential
from uqpot.train.config import TrainConfig
from uqpot.train.trainer import Trainer
from uqpot.uq import Ensemble


@pytest.fixture
def nh3(ammonia):
    """24 NH3 frames to train on (batch 8: three steps an epoch), 8 to validate on."""
    return StructureDataset(list(ammonia.structures[:24])), StructureDataset(list(ammonia.structures[24:32]))


def model(members, ds):
    hp = dict(features=16, interactions=2, rbf=8, readout_hidden=16, members=members, seeds=list(range(members)))
    m = Ensemble(potential=hp) if members > 1 else Potential(**hp)
    m.fit_reference(ds)
    return m


def train(tmp_path, data, name, members, compile_, layout, dtype="float64", epochs=3):
    """(result with the per-epoch history, final weights) of ``epochs`` epochs on ``data`` (train, val)."""
    ds, va = data
    cfg = TrainConfig(epochs=epochs, batch_size=8, lr=1e-3, compile=compile_, layout=layout, progress=False,
                      device="cpu", dtype=dtype)
    m = model(members, ds)
    tr = Trainer(m, ds, va, cfg, tmp_path / name, seed=3)
    res = tr.fit()
    assert res.compiled is compile_ and res.epochs_run == epochs
    return res, torch.cat([p.detach().flatten() for p in m.parameters()])


@pytest.fixture
def aot_eager(monkeypatch):
    """``torch.compile`` with the ``aot_eager`` backend (capture and derived backward, eager kernels)."""
    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    yield
    torch._dynamo.reset()


def same_run(a, b, rel):
    """The histories of two runs agree epoch by epoch (training loss, validation loss and MAEs)."""
    for ha, hb in zip(a.history, b.history):
        for k in ("train_loss", "val_loss", "val_energy_mae", "val_forces_mae"):
            assert abs(ha[k] - hb[k]) <= rel * abs(ha[k]), (ha["epoch"], k, ha[k], hb[k])
    assert a.best_epoch == b.best_epoch


def test_compiled_step_trains_the_eager_network(tmp_path, nh3, aot_eager):
    """Three epochs (nine Adam steps) of an ensemble of three with its members' own batch orders (stacked
    dense batches; validation on the edge list eager, on the dense grid compiled): the compiled step ends
    with the eager run's per-epoch losses, best epochs and weights (float64)."""
    ref, w_ref = train(tmp_path, nh3, "eager", 3, False, "auto")
    comp, w_comp = train(tmp_path, nh3, "compiled", 3, True, "auto")
    assert comp.layout == ref.layout == "dense" and comp.member_order == ref.member_order == "independent"
    same_run(ref, comp, 1e-10)
    assert (w_comp - w_ref).abs().max() < 1e-10
    assert (w_ref - torch.cat([p.detach().flatten() for p in model(3, nh3[0]).parameters()])
            ).abs().max() > 1e-4  # they trained


def test_compiled_step_float32_first_epoch(tmp_path, nh3, aot_eager):
    """In float32 the first epoch agrees to float tolerance (the runs then part as the rounding of two
    routes to the same step grows: README, "The two training paths")."""
    ref, _ = train(tmp_path, nh3, "eager32", 3, False, "auto", "float32", epochs=1)
    comp, _ = train(tmp_path, nh3, "compiled32", 3, True, "auto", "float32", epochs=1)
    same_run(ref, comp, 1e-5)
    assert ref.compiled is False and comp.compiled is True
    assert ref.as_dict()["layout"] == "dense" and "compile_reason" in ref.as_dict()


@pytest.mark.slow
@pytest.mark.parametrize("members", [1, 3])
def test_inductor_step_trains_the_eager_network(tmp_path, nh3, members):
    """As above with inductor (the compiled step users get), for one network (eager, its own batches on the dense layout) and an
    ensemble: two to four minutes of compilation each on two loaded cores."""
    torch._dynamo.reset()
    ref, w_ref = train(tmp_path, nh3, "eager", members, False, "auto")
    comp, w_comp = train(tmp_path, nh3, "compiled", members, True, "auto")
    assert ref.layout == "dense" and comp.layout == "dense"  # one molecule: every network on the dense layout
    same_run(ref, comp, 1e-9)
    assert (w_comp - w_ref).abs().max() < 1e-9
