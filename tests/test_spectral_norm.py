"""Spectrally normalised PaiNN (model.spectral_norm, SNGP/DUE-style distance-aware features): every message
and update linear map has a spectral norm of at most c once its power iteration has run, inference does not
change the stored vectors, forces stay −∇E, the model round-trips through its file, members stay independent,
and a plain PaiNN's hyper-parameters and configs are as before."""

import numpy as np
import pytest
import torch

from uqpot.core import fields as F
from uqpot.nn.painn import PaiNNOptions as ModelConfig
from uqpot.data.batch import collate
from uqpot.data.structures import Structure
from uqpot.md.neb import nh3_pyramid
from uqpot.evaluation.models import load, save
from uqpot.nn.potential import Potential
from uqpot.nn.stacked import StackedLinear

HP = dict(features=16, interactions=2, rbf=8, readout_hidden=8, cutoff=5.0)


def _batch(n=3, dtype="float64"):
    out = []
    for k in range(n):
        a = nh3_pyramid()
        a.rattle(0.08, seed=k)
        out.append(Structure.from_atoms(a))
    return collate(out, cutoff=5.0, dtype=dtype)


def _sn_layers(model):
    return [m for m in model.modules() if isinstance(m, StackedLinear) and m.spectral_bound is not None]


def test_spectral_norm_bounds_every_update_layer():
    torch.manual_seed(0)
    model = Potential(**HP, spectral_norm=0.7, seeds=[3]).double()
    model.known_elements[[1, 7]] = True
    layers = _sn_layers(model)
    assert len(layers) == 2 * (2 + 3)  # per interaction: φ (2 maps), update uv and MLP (3 maps)
    with torch.no_grad():
        for layer in layers:  # weights large enough that the cap acts
            layer.weight.mul_(4.0)
    model.train()
    b = _batch()
    for _ in range(200):  # power iterations converge during training forwards
        model(b)
    for layer in layers:
        sig = torch.linalg.matrix_norm(layer.effective_weight().detach(), ord=2)
        assert float(sig.max()) <= 0.7 * (1 + 1e-2)  # the estimate of σ converges from below
        assert float(torch.linalg.matrix_norm(layer.weight.detach(), ord=2).max()) > 0.7  # the cap acted
    model.eval()
    u0 = [layer.sn_u.clone() for layer in layers]
    e1, e2 = model(b)[F.ENERGY], model(b)[F.ENERGY]
    assert torch.equal(e1, e2) and all(torch.equal(a, layer.sn_u) for a, layer in zip(u0, layers))
    plain = Potential(**HP, seeds=[3])
    assert "spectral_norm" not in plain.hparams and not _sn_layers(plain)
    assert model.hparams["spectral_norm"] == 0.7


def test_spectral_norm_forces_members_and_file(tmp_path):
    torch.manual_seed(0)
    model = Potential(**HP, spectral_norm=0.9, members=2, seeds=[5, 6]).double()
    model.known_elements[[1, 7]] = True
    model.train()
    b = _batch()
    for _ in range(5):
        model.forward_members(b)
    model.eval()
    single = Potential(**HP, spectral_norm=0.9, seeds=[5]).double()
    single.known_elements[[1, 7]] = True
    single.train()
    for _ in range(5):
        single(b)
    single.eval()
    # member 0 of the stacked pair is the single network with its seed (power iterations per member)
    torch.testing.assert_close(model.forward_members(b)[F.ENERGY][0], single(b)[F.ENERGY], rtol=1e-12, atol=1e-12)
    # forces are -dE/dx (central differences, float64)
    s = Structure.from_atoms(nh3_pyramid())
    x0 = s.positions.copy()
    f = single(collate([s], cutoff=5.0, dtype="float64"))[F.FORCES].detach().numpy()
    h, fd = 1e-5, np.zeros_like(x0)
    for i in range(len(x0)):
        for c in range(3):
            e = []
            for sgn in (1, -1):
                p = x0.copy()
                p[i, c] += sgn * h
                e.append(float(single(collate([Structure(s.numbers, p, s.cell, s.pbc)], cutoff=5.0,
                                              dtype="float64"))[F.ENERGY][0]))
            fd[i, c] = -(e[0] - e[1]) / (2 * h)
    assert np.abs(f - fd).max() < 1e-6
    save(single, tmp_path / "sn.pt")
    back = load(tmp_path / "sn.pt").double()
    torch.testing.assert_close(back(b)[F.ENERGY], single(b)[F.ENERGY], rtol=1e-12, atol=1e-12)
    assert back.hparams["spectral_norm"] == 0.9


def test_model_section_writes_spectral_norm_only_when_set():
    assert "spectral_norm" not in ModelConfig().model_dump(mode="json")
    assert ModelConfig(spectral_norm=0.95).model_dump(mode="json")["spectral_norm"] == 0.95
    with pytest.raises(ValueError):
        ModelConfig(spectral_norm=0.0)
    from uqpot.fit.run import potential_hparams
    from uqpot.uq.options import parse_uq

    hp = potential_hparams(ModelConfig(spectral_norm=0.95, **{k: v for k, v in HP.items()}), parse_uq({"method": "gmm"}), 0)
    assert hp["spectral_norm"] == 0.95 and Potential(**hp).hparams["spectral_norm"] == 0.95


def test_eval_factor_is_cached_exactly_and_dropped_when_the_weights_change():
    """In eval mode max(1, σ/c) is computed once per weight state: the outputs (energy and forces) equal,
    bit for bit, those of the uncached path (``functional_call`` with plain tensors bypasses the cache), and
    an in-place weight update, a ``load_state_dict`` or a training forward invalidates the kept factor."""
    torch.manual_seed(0)
    model = Potential(**HP, spectral_norm=0.5, seeds=[4]).double()
    model.known_elements[[1, 7]] = True
    layers = _sn_layers(model)
    with torch.no_grad():
        for layer in layers:
            layer.weight.mul_(3.0)
    model.train()
    b = _batch()
    for _ in range(3):
        model(b)
    model.eval()

    def uncached():
        params = {k: v.detach().clone() for k, v in model.named_parameters()}
        params.update({k: v.clone() for k, v in model.named_buffers()})
        return torch.func.functional_call(model, params, (b,))

    def same(a, ref):
        assert torch.equal(a[F.ENERGY], ref[F.ENERGY]) and torch.equal(a[F.FORCES], ref[F.FORCES])

    out1 = model(b)
    factors = [layer._sn_cache[2] for layer in layers]
    assert any(float(f.max()) > 1.0 for f in factors)  # the cap acts, so the factor matters
    out2 = model(b)
    assert all(layer._sn_cache[2] is f for layer, f in zip(layers, factors))  # the second forward hit the cache
    same(out1, uncached())
    same(out2, out1)

    with torch.no_grad():  # an optimiser-like in-place update of one layer
        layers[0].weight.mul_(1.7)
    out3 = model(b)
    assert layers[0]._sn_cache[2] is not factors[0]
    same(out3, uncached())
    assert not torch.equal(out3[F.ENERGY], out1[F.ENERGY])

    other = Potential(**HP, spectral_norm=0.5, seeds=[9]).double()
    other.known_elements[[1, 7]] = True
    other.train()
    other(b)
    other.eval()
    model.load_state_dict(other.state_dict())
    same(model(b), other(b))

    model.train()
    model(b)  # a training forward moves sn_u, so the eval factor is recomputed
    model.eval()
    same(model(b), uncached())
