"""Beyond the paper: LLPR and shallow ensembles behind the UQ interface, and conformal calibration."""

import math

import numpy as np
import pytest
import torch

import uqpot
from uqpot.core import fields as F
from uqpot.nn.painn import PaiNNOptions as ModelConfig
from uqpot.fit.config import RunConfig, uq_config
from uqpot.train.config import TrainConfig
from uqpot.data.batch import collate, iterate_batches
from uqpot.core.errors import ConfigError
from uqpot.metrics import uq as uqm
from uqpot.uq import LLPR, ShallowEnsemble
from uqpot.uq.shallow import ShallowEnsembleLoss
from uqpot.nn import response
from uqpot.nn.response import position_grads

SMALL = dict(features=16, interactions=2, rbf=8, readout_hidden=8)


def small(seed=0):
    return dict(SMALL, members=1, seeds=[seed])


@pytest.fixture(scope="module")
def data(ethanol):
    return ethanol[:40]


@pytest.fixture(scope="module")
def llpr(data):
    """A small LLPR (random network, float64) fitted on 20 frames, α and ς on 10 others."""
    m = LLPR(potential=small()).double()
    m.fit_reference(data[:20])
    m.fit_posthoc(data[:20], data[20:30], 8)
    return m.eval()


def _features_numpy(m, batch) -> tuple[np.ndarray, np.ndarray]:
    """Per-atom ξ and per-structure f = Σ_i s·[ssp(ξ_i W₁ + b₁), 1] computed in NumPy from the weights."""
    xi = m.potential.forward_members(batch, compute_forces=False)[F.FEATURES][0].detach().numpy()
    ro = m.potential.readout
    W1, b1 = ro.lin1.weight[0].detach().numpy(), ro.lin1.bias[0, 0].detach().numpy()
    h = np.logaddexp(0.0, xi @ W1 + b1) - math.log(2.0)
    ht = np.concatenate([h, np.ones((len(h), 1))], axis=1) * float(m.potential.energy_scale)
    f = np.zeros((batch.num_structures, ht.shape[1]))
    np.add.at(f, batch.batch.numpy(), ht)
    return ht, f


def _jacobian(m, batch) -> np.ndarray:
    """J[d, n, a] = ∂f_d(structure of n)/∂r_na, by torch's dense Jacobian (one structure per atom)."""
    def fn(p):
        o = m.potential.forward_members(batch.with_positions(p), compute_forces=False)
        ht = m.last_layer_features({k: v.squeeze(0) for k, v in o.items()})
        return torch.zeros(batch.num_structures, ht.shape[1], dtype=ht.dtype).index_add(0, batch.batch, ht)

    J = torch.autograd.functional.jacobian(fn, batch.positions.clone()).numpy()  # (B, d, N, 3)
    return J.sum(0)


def test_llpr_variances_equal_a_direct_numpy_computation(data):
    """σ²_E = α² f*ᵀ(FᵀF + ς²I)⁻¹f* and σ²_F = α² J*ᵀ(·)⁻¹J* against NumPy, for both Gram matrices."""
    for gram in ("energy", "energy_forces"):
        m = LLPR(potential=small(), gram=gram).double()
        m.fit_reference(data[:20])
        m.fit_posthoc(data[:20], data[20:30], 8)
        G = np.zeros((9, 9))
        for _, b in iterate_batches(data[:20], 8, 5.0, dtype="float64"):
            _, f = _features_numpy(m, b)
            G += f.T @ f
            if gram == "energy_forces":
                J = _jacobian(m, b).reshape(9, -1)
                G += J @ J.T
        a2, s2 = m.fit_info["alpha2"], m.fit_info["sigma2"]
        sigma = np.linalg.inv(G + s2 * np.eye(9))
        np.testing.assert_allclose(m.llpr_inverse.numpy(), sigma, rtol=1e-6)
        b = collate([data[i] for i in (30, 31, 32)], cutoff=5.0, dtype="float64")
        out = m(b, create_graph=False)
        _, f = _features_numpy(m, b)
        np.testing.assert_allclose(out[F.ENERGY_VARIANCE].numpy(), a2 * np.einsum("bi,ij,bj->b", f, sigma, f),
                                   rtol=1e-7)
        J = _jacobian(m, b)
        var = a2 * np.einsum("dna,de,ena->na", J, sigma, J)
        np.testing.assert_allclose(out["forces_variance"].numpy(), var, rtol=1e-7)
        np.testing.assert_allclose(out[F.UNCERTAINTY_ATOM].numpy(), var.mean(-1), rtol=1e-7)
        per_structure = [var[3 * 0:9].mean(), var[9:18].mean(), var[18:27].mean()]
        np.testing.assert_allclose(out[F.UNCERTAINTY].numpy(), per_structure, rtol=1e-7)


def _val_force_nll(m, val) -> float:
    nll, n = 0.0, 0
    for _, b in iterate_batches(val, 8, 5.0, dtype="float64"):
        out = m(b, create_graph=False)
        v, r2 = out["forces_variance"], (out[F.FORCES] - b.forces).pow(2)
        nll += float((0.5 * torch.log(2 * math.pi * v) + r2 / (2 * v)).sum())
        n += r2.numel()
    return nll / n


def test_llpr_fitted_constants_minimise_the_validation_nll(llpr, data):
    val = data[20:30]
    a2, s2 = llpr.fit_info["alpha2"], llpr.fit_info["sigma2"]
    best = _val_force_nll(llpr, val)
    assert best == pytest.approx(llpr.fit_info["nll"], rel=1e-6)
    lam, V = llpr.llpr_eigvals.clone(), llpr.llpr_eigvecs.clone()
    try:
        for fa, fs in [(0.5, 1), (2, 1), (1, 1e3), (1, 1e6), (1.0, 1e9), (0.1, 1)]:
            llpr.set_posterior(lam, V, a2 * fa, s2 * fs)
            assert _val_force_nll(llpr, val) > best - 1e-9, (fa, fs)
    finally:
        llpr.set_posterior(lam, V, a2, s2)
    assert llpr.fit_info["fitted_on"] == "validation"
    assert llpr.fit_info["nll_at_sigma2_grid_ends"][1] >= llpr.fit_info["nll"]


def test_llpr_samples_are_an_unbiased_last_layer_ensemble(data, llpr):
    """K posterior samples: the directions are α·V(Λ+ς²)^{-1/2}Z/√K, so E[DDᵀ] = α²Σ; with many samples
    the sampled force variance approaches the exact one."""
    m = LLPR(potential=small(), samples=4000).double()
    m.load_state_dict({k: v for k, v in llpr.state_dict().items() if k != "llpr_directions"}, strict=False)
    m.fit_info = dict(llpr.fit_info)
    lam, V = llpr.llpr_eigvals, llpr.llpr_eigvecs
    gen = torch.Generator().manual_seed(3)
    Z = torch.randn(9, 4000, generator=gen, dtype=torch.float64)
    m.set_posterior(lam, V, llpr.fit_info["alpha2"], llpr.fit_info["sigma2"],
                    directions=(V / (lam + llpr.fit_info["sigma2"]).sqrt()) @ Z / math.sqrt(4000))
    b = collate([data[i] for i in (30, 31)], cutoff=5.0, dtype="float64")
    exact = llpr(b, create_graph=False)[F.UNCERTAINTY]
    sampled = m(b, create_graph=False)[F.UNCERTAINTY]
    np.testing.assert_allclose(sampled.numpy(), exact.numpy(), rtol=0.1)
    # the fitted K-sample variant has K directions; the same one is derived from the exact LLPR without data
    k8 = LLPR(potential=small(), samples=8).double()
    k8.fit_reference(data[:20])
    k8.fit_posthoc(data[:20], data[20:30], 8)
    assert k8.llpr_directions.shape == (9, 8) and k8(b, create_graph=False)[F.UNCERTAINTY].shape == (2,)
    derived = llpr.with_samples(8)
    torch.testing.assert_close(derived.llpr_directions, k8.llpr_directions, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(derived(b, create_graph=False)[F.UNCERTAINTY], k8(b, create_graph=False)[F.UNCERTAINTY],
                               rtol=1e-6, atol=1e-9)
    assert llpr.with_samples(0).llpr_directions.shape == (9, 9)


def test_llpr_with_output_equals_an_llpr_fitted_for_that_output(data, llpr):
    """The atomic-energy variant derived from a fitted LLPR (same posterior) is the LLPR fitted with
    output "atomic_energy" (its α, ς are fitted on the forces too), and its U is α²·h̃ᵀΣh̃."""
    fitted = LLPR(potential=small(), output="atomic_energy").double()
    fitted.fit_reference(data[:20])
    fitted.fit_posthoc(data[:20], data[20:30], 8)
    derived = llpr.with_output("atomic_energy").eval()
    b = collate([data[i] for i in (30, 31, 32)], cutoff=5.0, dtype="float64")
    u_derived = derived(b, create_graph=False)[F.UNCERTAINTY_ATOM]
    torch.testing.assert_close(u_derived, fitted.eval()(b, create_graph=False)[F.UNCERTAINTY_ATOM],
                               rtol=1e-6, atol=1e-12)
    with torch.no_grad():
        out = {k: v.squeeze(0) for k, v in llpr.potential.forward_members(b, compute_forces=False).items()}
        ht = llpr.last_layer_features(out)
    direct = llpr.llpr_alpha2 * ((ht @ llpr.llpr_inverse) * ht).sum(-1)
    torch.testing.assert_close(u_derived, direct, rtol=1e-8, atol=1e-12)
    assert not torch.allclose(u_derived, llpr(b, create_graph=False)[F.UNCERTAINTY_ATOM])
    assert llpr.output == "forces"  # the source is not changed


def test_llpr_save_load_round_trip(tmp_path, llpr, data):
    m = llpr.float()
    try:
        assert m.llpr_inverse.dtype == torch.float64  # the posterior stays float64
        path = uqpot.save(m, tmp_path / "llpr.pt")
        loaded = uqpot.load(path)
        assert type(loaded) is LLPR and loaded.hparams == m.hparams and loaded.fitted
        for k, v in m.state_dict().items():
            assert torch.equal(v, loaded.state_dict()[k]), k
        b = collate([data[i] for i in range(3)], cutoff=5.0)
        a, c = m(b, create_graph=False), loaded(b, create_graph=False)
        for k in (F.ENERGY, F.FORCES, F.UNCERTAINTY, F.UNCERTAINTY_ATOM, F.ENERGY_VARIANCE):
            assert torch.equal(a[k], c[k]), k
    finally:
        llpr.double()


def test_unfitted_llpr_refuses_to_predict(data):
    m = LLPR(potential=small())
    m.fit_reference(data[:10])
    with pytest.raises(RuntimeError, match="not fitted"):
        m(collate([data[0]], cutoff=5.0))


@pytest.mark.parametrize("method", ["llpr", "llpr_atomic", "shallow_ensemble"])
def test_uncertainty_differentiable_wrt_positions(method, data, llpr):
    if method == "llpr":
        m = llpr
    elif method == "llpr_atomic":
        m = LLPR(potential=small(), output="atomic_energy").double()
        m.fit_reference(data[:20])
        m.fit_posthoc(data[:20], data[20:30], 8)
    else:
        m = ShallowEnsemble(potential=small(), heads=4).double()
        m.fit_reference(data[:20])
    m.eval()
    b = collate([data[3]], cutoff=5.0, dtype="float64")
    pos = b.positions.clone().requires_grad_(True)
    u = m.uncertainty(b.with_positions(pos)).per_structure.sum()
    (g,) = torch.autograd.grad(u, pos)
    assert torch.isfinite(g).all() and g.abs().max() > 0
    h = 1e-5
    for a, c in [(0, 0), (5, 2), (8, 1)]:
        p1, p2 = b.positions.clone(), b.positions.clone()
        p1[a, c] += h
        p2[a, c] -= h
        u1 = m.uncertainty(b.with_positions(p1)).per_structure.sum().item()
        u2 = m.uncertainty(b.with_positions(p2)).per_structure.sum().item()
        assert (u1 - u2) / (2 * h) == pytest.approx(g[a, c].item(), rel=1e-4, abs=1e-7 * max(1.0, abs(u1)))


def test_position_grads_batched_equals_loop(data):
    m = ShallowEnsemble(potential=small(), heads=5).double()
    m.fit_reference(data[:10])
    b = collate([data[i] for i in range(3)], cutoff=5.0, dtype="float64")
    pos = b.positions.clone().requires_grad_(True)
    out = m.forward_members(b.with_positions(pos), compute_forces=False)
    e = out["energy_members"][0]  # (K, B)
    loop = position_grads(e, pos, chunk=1)
    for chunk in (2, 5):
        torch.testing.assert_close(position_grads(e, pos, chunk=chunk), loop, rtol=1e-12, atol=1e-12)


def _part(s, n):
    """The first n atoms of a structure (a smaller molecule of the same elements)."""
    from uqpot.data.structures import Structure

    return Structure(s.numbers[:n].copy(), s.positions[:n].copy(), s.cell.copy(), s.pbc.copy())


def test_structure_jacobian_equals_reverse_mode_on_structures_of_different_sizes(data, llpr):
    # one tangent moves one atom slot of every structure: sizes 9, 5, 9, 2 in one batch
    b = collate([data[30], _part(data[31], 5), data[32], _part(data[33], 2)], cutoff=5.0, dtype="float64")
    fn = lambda p: llpr._structure_features(b, p)  # noqa: E731
    pos = b.positions.clone().requires_grad_(True)
    rev = position_grads(fn(pos).T, pos)  # (d, N, 3)
    for chunk in (1, 7, None):
        fwd = response.structure_jacobian(fn, b.positions, b.batch, chunk=chunk)  # (N, 3, d)
        torch.testing.assert_close(fwd, rev.permute(1, 2, 0), rtol=1e-10, atol=1e-12)
    assert rev.abs().max() > 0


@pytest.mark.parametrize("layout", ["sparse", "dense"])
def test_llpr_forward_mode_force_variance_equals_reverse_mode(data, llpr, layout):
    b = collate([data[30], _part(data[31], 5), data[32], _part(data[33], 2)], cutoff=5.0, dtype="float64",
                layout=layout)
    sampled = llpr.with_samples(4).eval()
    for m in (llpr, sampled):
        try:
            m.jacobian = "reverse"
            rev = m(b, create_graph=False)
            m.jacobian = "forward"
            assert m.forward_mode(b, False) and not m.forward_mode(b, True)  # a kept graph takes reverse mode
            fwd = m(b, create_graph=False)
        finally:
            m.jacobian = "auto"
        for key in (F.FORCES_VARIANCE, F.UNCERTAINTY_ATOM, F.UNCERTAINTY, F.FORCES, F.ENERGY):
            torch.testing.assert_close(fwd[key], rev[key], rtol=1e-10, atol=1e-14)
        assert rev[F.FORCES_VARIANCE].min() > 0


def test_llpr_auto_route_takes_forward_mode_only_where_it_is_cheaper(data):
    # d = 33 directions: forward mode needs 3·n_max tangents at about 3 reverse passes each, so it is taken
    # for 2 atoms (18 < 33) but not for 9 (81); with 4 posterior samples reverse mode for both
    from uqpot.uq.llpr import FORWARD_PASS_COST

    m = LLPR(potential=dict(small(), readout_hidden=32)).double()
    small_b = collate([_part(data[1], 2), _part(data[2], 2)], cutoff=5.0, dtype="float64")
    full_b = collate([data[1], data[2]], cutoff=5.0, dtype="float64")
    assert m.dim == 33 and m.jacobian == "auto" and FORWARD_PASS_COST == 3.0
    assert m.forward_mode(small_b, False) and not m.forward_mode(full_b, False)
    assert not m.forward_mode(small_b, True)  # a kept graph (attacks, biased MD) takes reverse mode
    sampled = LLPR(potential=dict(small(), readout_hidden=32), samples=4).double()
    assert not sampled.forward_mode(small_b, False) and not sampled.forward_mode(full_b, False)


def test_shallow_ensemble_head_forces_equal_per_head_autograd(data):
    m = ShallowEnsemble(potential=small(), heads=4).double()
    m.fit_reference(data[:20])
    b = collate([data[i] for i in range(3)], cutoff=5.0, dtype="float64")
    out = m.forward_members(b, create_graph=False, head_forces=True)
    assert out["forces_members"].shape == (1, 4, 27, 3) and out["energy_members"].shape == (1, 4, 3)
    # training forces (one backward of the mean energy) are the mean of the heads' forces
    torch.testing.assert_close(m.forward_members(b, create_graph=False)[F.FORCES], out["forces_members"].mean(1))
    heads = torch.unique(out["energy_members"][0, :, 0])
    assert len(heads) == 4  # the heads differ
    for k in range(4):  # one head at a time, by plain autograd
        pos = b.positions.clone().requires_grad_(True)
        o = m.forward_members(b.with_positions(pos), compute_forces=False)
        (g,) = torch.autograd.grad(o["energy_members"][0, k].sum(), pos)
        torch.testing.assert_close(out["forces_members"][0, k], -g, rtol=1e-10, atol=1e-10)
    # head 0 is the potential's own readout
    torch.testing.assert_close(out["energy_members"][0, 0], m.potential(b, compute_forces=False)[F.ENERGY])
    res = m(b, create_graph=False)
    fk = out["forces_members"][0]
    torch.testing.assert_close(res[F.FORCES], fk.mean(0))
    torch.testing.assert_close(res[F.UNCERTAINTY_ATOM], fk.var(0, correction=1).mean(-1))


def test_shallow_ensemble_loss_matches_formula(data):
    m = ShallowEnsemble(potential=small(), heads=3).double()
    m.fit_reference(data[:20])
    b = collate([data[0], data[1]], cutoff=5.0, dtype="float64")
    pred = m.forward_members(b, create_graph=False, head_forces=True)
    loss, _ = ShallowEnsembleLoss(0.1, 1.0, 1e-4)(pred, b)
    fk = pred["forces_members"][0].detach().numpy()
    mu, var = fk.mean(0), fk.var(0, ddof=1) + 1e-4
    nll = np.mean(0.5 * np.log(2 * np.pi * var) + (b.forces.numpy() - mu) ** 2 / (2 * var))
    e = np.mean(np.abs(pred[F.ENERGY][0].detach().numpy() - b.energy.numpy()))
    mae = np.mean(np.abs(mu - b.forces.numpy()))
    assert loss.item() == pytest.approx(0.1 * e + mae + nll, rel=1e-10)
    # the NLL moves only the spread, the MAE only the mean: gradients w.r.t. the per-head forces
    fk_t = pred["forces_members"].detach().clone().requires_grad_(True)
    parts = ShallowEnsembleLoss(0.0, 1.0, 1e-4)
    l, _ = parts({**pred, "forces_members": fk_t, F.FORCES: fk_t.mean(1)}, b)
    (g,) = torch.autograd.grad(l.sum(), fk_t)
    r = b.forces.numpy() - mu
    s2 = fk.var(0, ddof=1) + 1e-4
    dvar = 2 * (fk - mu) / (fk.shape[0] - 1)  # ∂Var/∂F_k
    expect = (0.5 / s2 - r ** 2 / (2 * s2 ** 2)) * dvar / r.size - np.sign(r) / (fk.shape[0] * r.size)
    np.testing.assert_allclose(g[0].numpy(), expect, rtol=1e-8, atol=1e-14)


def test_shallow_ensemble_save_load_round_trip(tmp_path, data):
    m = ShallowEnsemble(potential=small(), heads=3)
    m.fit_reference(data[:20])
    m.eval()
    loaded = uqpot.load(uqpot.save(m, tmp_path / "se.pt"))
    assert loaded.hparams == m.hparams
    b = collate([data[i] for i in range(3)], cutoff=5.0)
    a, c = m(b, create_graph=False), loaded(b, create_graph=False)
    for k in (F.ENERGY, F.FORCES, F.UNCERTAINTY):
        assert torch.equal(a[k], c[k]), k


# ----------------------------------------------------------------------------------------- conformal


def test_conformal_quantile_finite_sample_correction():
    s = np.arange(1.0, 20.0)  # n = 19
    assert uqm.conformal_quantile(s, 0.90) == 18.0  # k = ⌈20 · 0.9⌉ = 18
    assert uqm.conformal_quantile(s, 0.95) == 19.0  # k = ⌈20 · 0.95⌉ = 19
    assert uqm.conformal_quantile(s, 0.96) == math.inf  # k = 20 > n
    assert uqm.conformal_quantile(np.arange(1.0, 21.0), 0.8, group_size=4) == 20.0  # ⌈24 · 0.8⌉ = 20
    assert uqm.conformal_quantile(np.arange(1.0, 21.0), 0.8) == 17.0  # ⌈21 · 0.8⌉ = 17
    with pytest.raises(ValueError):
        uqm.conformal_quantile(s, 1.0)


def test_conformal_coverage_is_at_least_nominal_on_exchangeable_data():
    """Heavy-tailed residuals with a misspecified σ: the Gaussian intervals of σ miss the nominal coverage,
    the conformal ones keep it on average over many calibration/test draws — and with n = 19 the mean
    coverage equals k/(n + 1) exactly (the finite-sample correction is tight)."""
    rng = np.random.default_rng(0)
    for n_val, reps in ((19, 4000), (200, 400)):
        cov95, gauss95 = [], []
        for _ in range(reps):
            sig_v, sig_t = rng.uniform(0.5, 2, n_val), rng.uniform(0.5, 2, 200)
            r_v = rng.standard_t(3, n_val) * sig_v * 1.7
            r_t = rng.standard_t(3, 200) * sig_t * 1.7
            q = uqm.fit_conformal(r_v, sig_v)["quantiles"]
            cov = uqm.coverage_metrics(r_t, sig_t, {"quantiles": q})
            cov95.append(cov["conformal_coverage_95"])
            gauss95.append(cov["coverage_95"])
        mean, se = np.mean(cov95), np.std(cov95) / np.sqrt(reps)
        assert mean >= 0.95 - 3 * se
        if n_val == 19:
            assert mean == pytest.approx(19 / 20, abs=4 * se)
        assert np.mean(gauss95) < 0.93  # the Gaussian interval of the misspecified σ undercovers


def test_conformal_grouped_components_keep_the_guarantee():
    """Structures of g = 6 correlated components (a shared per-structure error scale): pooling with the
    per-structure correction covers ≥ nominal with few calibration structures."""
    rng = np.random.default_rng(1)
    n_struct, g, reps = 10, 6, 3000
    cov = []
    for _ in range(reps):
        scale_v = rng.lognormal(0, 1, n_struct)[:, None]
        r_v = rng.normal(size=(n_struct, g)) * scale_v
        q = uqm.conformal_quantile(np.abs(r_v), 0.9, group_size=g)
        r_t = rng.normal(size=g) * rng.lognormal(0, 1)
        cov.append(np.mean(np.abs(r_t) <= q))
    assert np.mean(cov) >= 0.9 - 3 * np.std(cov) / np.sqrt(reps)


def test_coverage_of_a_calibrated_gaussian():
    rng = np.random.default_rng(2)
    sigma = rng.uniform(0.1, 3, 200000)
    r = rng.normal(size=sigma.size) * sigma
    m = uqm.coverage_metrics(r, sigma, uqm.fit_conformal(r[:100000], sigma[:100000]))
    for p in (68, 95):
        assert m[f"coverage_{p}"] == pytest.approx(p / 100, abs=0.005)
        assert m[f"conformal_coverage_{p}"] == pytest.approx(p / 100, abs=0.005)
    assert uqm.gaussian_interval_factor(0.95) == pytest.approx(1.959964, rel=1e-6)
    assert math.isnan(uqm.coverage_metrics(r, sigma)["conformal_coverage_95"])


# ----------------------------------------------------------------------------------------- config + training


def test_uq_config_for_the_new_methods(ethanol_path):
    from uqpot.core.config_io import parse

    base = {"data": {"path": str(ethanol_path)}}
    cfg = parse(RunConfig, {**base, "uq": {"method": "llpr", "gram": "energy", "samples": 8}})
    assert cfg.uq.method_options() == {"gram": "energy", "fit_target": "forces", "samples": 8, "output": "forces"}
    cfg = parse(RunConfig, {**base, "uq": {"method": "shallow_ensemble", "heads": 4}})
    assert cfg.uq.method_options() == {"min_variance": 1e-4, "heads": 4, "nll_epochs": 10, "nll_lr": 1e-4,
                                       "nll_batch_size": 16}
    with pytest.raises(ConfigError, match="'uq.heads' applies to shallow_ensemble"):
        parse(RunConfig, {**base, "uq": {"method": "llpr", "heads": 4}})
    with pytest.raises(ConfigError, match="'uq.gram' applies to llpr"):
        parse(RunConfig, {**base, "uq": {"method": "gmm", "gram": "energy"}})
    with pytest.raises(ConfigError, match="uq.heads"):
        parse(RunConfig, {**base, "uq": {"method": "shallow_ensemble", "heads": 1}})
    with pytest.raises(ValueError, match="samples"):
        LLPR(potential=small(), samples=1)


@pytest.mark.parametrize("method", ["llpr", "shallow_ensemble"])
def test_fit_model_trains_calibrates_and_reports_coverage(tmp_path, method, ethanol):
    from uqpot.fit.run import fit_model

    train, val, test = ethanol[:32], ethanol[32:44], ethanol[44:56]
    uq = uq_config(method=method, **({"heads": 3, "nll_epochs": 2, "nll_lr": 1e-3} if method == "shallow_ensemble" else {}))
    cfg = TrainConfig(epochs=3, batch_size=8, lr=2e-3, progress=False)
    summary = fit_model(ModelConfig(**SMALL), uq, cfg, 0, train, val, test, tmp_path)
    t = summary["test"]
    assert t["method"] == method and t["n_structures"] == 12
    for k in ("spearman", "roc_auc_p20", "cnll", "coverage_68", "coverage_95", "conformal_coverage_68",
              "conformal_coverage_95"):
        assert np.isfinite(t[k]), k
    payload = uqpot.nn.modelfile.read(tmp_path / "model.pt")
    conformal = payload["extra"]["calibration"]["conformal"]
    assert set(conformal["quantiles"]) == {"68", "95"} and conformal["group_size"] == 27
    assert conformal["quantiles"]["95"] > conformal["quantiles"]["68"] > 0
    # per-structure correction with 12 validation structures: k = ⌈(324 + 27)·0.95⌉ = 334 > 324 → +∞
    assert conformal["quantiles_structure"]["95"] == math.inf
    assert conformal["quantiles_structure"]["68"] >= conformal["quantiles"]["68"]
    model = uqpot.load(tmp_path / "model.pt")
    assert model.method == method
    if method == "shallow_ensemble":  # stage 2: force-NLL fine-tuning, best validation epoch kept
        ph = summary["posthoc"]
        assert ph["fitted_on"] == "validation" and len(ph["val_loss"]) == 3
        assert ph["val_loss"][ph["best_epoch"]] == min(ph["val_loss"])
    if method == "llpr":
        assert summary["posthoc"]["fitted_on"] == "validation" and model.fitted
        # the network is the plain potential (SI Eq. 1): same weights as a plain training with that seed
        from uqpot.train.trainer import Trainer

        from uqpot.nn.potential import Potential

        plain = Potential(**small(0))
        plain.fit_reference(train)
        Trainer(plain, train, val, cfg, tmp_path / "plain", seed=0).fit()
        plain = uqpot.load(tmp_path / "plain" / "model.pt")
        for k, v in plain.state_dict().items():
            torch.testing.assert_close(model.potential.state_dict()[k], v, rtol=1e-5, atol=1e-6)


def test_attack_runs_on_llpr(llpr, data):
    """Adversarial sampling uses the LLPR as any UQ model: U climbs."""
    from uqpot.sample.adversarial import AttackConfig, BoltzmannReference, attack

    ref = BoltzmannReference.from_energies(data[:20].energies(), [s.n_atoms for s in data[:20]], kT=20.0)
    seeds = [data[i] for i in (30, 31)]
    res = attack(llpr, seeds, ref, AttackConfig(iterations=5, lr=0.01, n_seeds=2, energy_cutoff=None,
                                                 min_displacement=0.0, kT=20.0))
    u = res.history["uncertainty"]
    assert u.shape == (6, 2) and np.all(u[-1] > u[0])


def test_shallow_fine_tuning_is_a_trainer_stage_with_the_configured_loss_weights(data):
    from uqpot.train.stages import run_stage

    m = ShallowEnsemble(potential=small(), heads=3, nll_epochs=2, nll_lr=1e-3, nll_batch_size=5).double()
    m.fit_reference(data[:20])
    (stage,) = m.stages(TrainConfig(energy_weight=0.3, forces_weight=2.0))
    assert (stage.loss.energy_weight, stage.loss.forces_weight, stage.loss.min_variance) == (0.3, 2.0, 1e-4)
    assert (stage.epochs, stage.lr, stage.batch_size, stage.forward_kwargs) == (2, 1e-3, 5, {"head_forces": True})
    assert m.fit_posthoc(data[:20], data[20:30]) == {}  # the fine-tuning is not a post-hoc fit any more
    before = {k: v.clone() for k, v in m.state_dict().items()}
    rec = run_stage(m, stage, data[:20], data[20:30], 8)
    assert rec["fitted_on"] == "validation" and len(rec["val_loss"]) == 3
    assert rec["val_loss"][rec["best_epoch"]] == min(rec["val_loss"])
    changed = any(not torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert changed == (rec["best_epoch"] > 0)
