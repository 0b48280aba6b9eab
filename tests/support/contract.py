"""The contract every UQ method keeps, as plain check functions of a fitted model (float64, eval mode) and a
few labelled molecules.  ``tests/test_contract.py`` runs them for every registered method; a method defined
elsewhere (a test's toy method) runs the same checks by calling them.

Checks: every output key is registered in :mod:`uqpot.core.fields` with the kind its shape shows; save/load
round trip; forces = −dE/dx and dU/dx against central finite differences; the dense all-pairs layout equals
the edge list; the three reductions of U; the calibration fit; compiled MD equals eager MD (slow).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import uqpot
from uqpot.core import fields as F
from uqpot.data.batch import collate
from uqpot.data.structures import StructureDataset
from uqpot.evaluation.predict import predict

SMALL = dict(features=16, interactions=2, rbf=8, readout_hidden=8)


def small(members: int = 1, seed: int = 0) -> dict:
    return dict(SMALL, members=members, seeds=list(range(seed, seed + members)))


def generic_factory(name: str, train, val, **options):
    """The method from its own options around a small random potential, reference energies and post-hoc
    parts fitted (float64, eval mode)."""
    from uqpot.uq import METHODS
    from uqpot.uq.options import uq_options

    cls = METHODS[name]
    opts = uq_options(name, **options)
    m = cls.from_options(opts, small(cls.members_for(opts))).double()
    m.fit_reference(train)
    m.fit_posthoc(train, val, 8)
    return m.eval()


def check_fields(model, structures):
    """Every output is registered, and its kind (per atom / per structure, member axis) fits its shape."""
    b = collate(structures, cutoff=model.cutoff, dtype=model.dtype)
    out = model(b, create_graph=False)
    assert F.UNCERTAINTY in out and F.UNCERTAINTY_ATOM in out and F.ENERGY in out and F.FORCES in out
    for key, value in out.items():
        field = F.get(key)  # KeyError names an unregistered key
        n = b.numbers.shape[0] if field.per_atom else b.num_structures
        assert value.shape[field.axis] == n, (key, tuple(value.shape), field)
    pred = predict(model, StructureDataset(structures), batch_size=2,
                                 keys=(F.ENERGY, F.FORCES, F.UNCERTAINTY, F.UNCERTAINTY_ATOM))
    assert [len(u) for u in pred[F.UNCERTAINTY_ATOM]] == [s.n_atoms for s in structures]
    assert pred[F.UNCERTAINTY].shape == (len(structures),)


def check_round_trip(model, structures, tmp_path):
    path = uqpot.save(model, tmp_path / f"{model.method}.pt")
    loaded = uqpot.load(path).to(model.dtype)
    assert type(loaded) is type(model) and loaded.hparams == model.hparams
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k].to(v.dtype), v), k
    b = collate(structures, cutoff=model.cutoff, dtype=model.dtype)
    a, c = model(b, create_graph=False), loaded(b, create_graph=False)
    for k in (F.ENERGY, F.FORCES, F.UNCERTAINTY, F.UNCERTAINTY_ATOM):
        assert torch.equal(a[k], c[k]), k


def _fd(fn, positions, entries, h=1e-5):
    out = []
    for a, c in entries:
        p1, p2 = positions.clone(), positions.clone()
        p1[a, c] += h
        p2[a, c] -= h
        out.append((fn(p1) - fn(p2)) / (2 * h))
    return out


def check_derivatives(model, structure):
    """F = −∂E/∂x and ∂U/∂x (differentiable U, for the attack) against central differences."""
    b = collate([structure], cutoff=model.cutoff, dtype=torch.float64)
    entries = [(0, 0), (min(5, structure.n_atoms - 1), 2), (structure.n_atoms - 1, 1)]
    forces = model(b, create_graph=False)[F.FORCES]
    energy = lambda p: float(model(b.with_positions(p), compute_forces=False)[F.ENERGY].sum())  # noqa: E731
    for (a, c), d in zip(entries, _fd(energy, b.positions, entries)):
        assert -d == pytest.approx(float(forces[a, c]), rel=1e-4, abs=1e-6), ("forces", a, c)
    pos = b.positions.clone().requires_grad_(True)
    u = model.uncertainty(b.with_positions(pos)).per_structure.sum()
    (g,) = torch.autograd.grad(u, pos)
    assert torch.isfinite(g).all() and g.abs().max() > 0
    unc = lambda p: float(model.uncertainty(b.with_positions(p)).per_structure.sum())  # noqa: E731
    scale = max(1.0, abs(float(u.detach())))
    for (a, c), d in zip(entries, _fd(unc, b.positions, entries)):
        assert d == pytest.approx(float(g[a, c]), rel=1e-4, abs=1e-7 * scale), ("dU/dx", a, c)


def check_dense_equals_sparse(model, structures):
    outs = {lay: model(collate(structures, cutoff=model.cutoff, dtype=model.dtype, layout=lay), create_graph=False)
            for lay in ("sparse", "dense")}
    for k in (F.ENERGY, F.FORCES, F.UNCERTAINTY, F.UNCERTAINTY_ATOM):
        torch.testing.assert_close(outs["dense"][k], outs["sparse"][k], rtol=1e-9, atol=1e-9, msg=k)


def check_reductions(make, structures):
    """U per structure is the mean / max / sum of U per atom over each structure's atoms."""
    sizes = [s.n_atoms for s in structures]
    for reduction, fn in (("mean", np.mean), ("max", np.max), ("sum", np.sum)):
        model = make(reduction)
        b = collate(structures, cutoff=model.cutoff, dtype=model.dtype)
        unc = model.uncertainty(b)
        assert unc.reduction == reduction
        atoms = np.split(unc.per_atom.detach().numpy(), np.cumsum(sizes)[:-1])
        np.testing.assert_allclose(unc.per_structure.detach().numpy(), [fn(x) for x in atoms], rtol=1e-12)


def check_calibration(model, val):
    """σ² = a·U + b (Eq. 13) and the conformal quantiles fitted on a validation set: finite, ordered, and
    a calibrated variance that is positive for every structure."""
    from uqpot.evaluation.evaluate import fit_calibration, predictions
    from uqpot.metrics import uq as uqm

    cal = fit_calibration(model, val, 8)
    assert cal["n_structures"] == len(val) and np.isfinite([cal["a"], cal["b"], cal["floor"]]).all()
    q = cal["conformal"]["quantiles"]
    assert 0 < q["68"] < q["95"]
    u = predictions(model, val, 8)[F.UNCERTAINTY]
    assert np.all(uqm.calibrated_variance(u, cal["a"], cal["b"], floor=cal["floor"]) > 0)


def check_compiled_md(model, structures):
    """The compiled engine (dense layout, weights as detached views) follows the eager edge-list one."""
    from uqpot.md.batched import BatchedMD

    kw = dict(timestep_fs=0.25, temperatures_K=300.0, seeds=list(range(1, len(structures) + 1)), check_every=5,
              record_every=5)
    ref = BatchedMD(model, structures, layout="sparse", **kw).run(10)
    res = BatchedMD(model, structures, layout="dense", compile=True, **kw).run(10)
    for a, b in zip(ref.replicas, res.replicas):
        assert np.abs(a.final_positions - b.final_positions).max() < 1e-9
        u_a, u_b = np.array(a.uncertainty), np.array(b.uncertainty)
        assert len(u_a) == 3 and np.all(np.isfinite(u_a))
        assert np.abs(u_a - u_b).max() <= 1e-9 * (1 + np.abs(u_a).max())
