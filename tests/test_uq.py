"""The four UQ methods behind one interface: batched ensembles, losses, differentiable uncertainties,
post-hoc GMM, persistence."""


import numpy as np
import pytest
import torch
from scipy import special

import uqpot
from uqpot.core import fields as F
from uqpot.fit.config import RunConfig
from uqpot.train.config import TrainConfig
from uqpot.data.batch import collate
from uqpot.core.errors import ConfigError
from uqpot.nn.potential import Potential
from uqpot.train.trainer import Trainer
from uqpot.uq import GMM, MVE, Ensemble, Evidential, reduce_atoms
from uqpot.uq.evidential import EvidentialLoss
from uqpot.uq.mve import MVELoss

SMALL = dict(features=16, interactions=2, rbf=8, readout_hidden=8)


def small(members=1, seeds=None):
    return dict(SMALL, members=members, seeds=seeds or list(range(members)))


def make(method, ds, **kw):
    cls = {"ensemble": Ensemble, "mve": MVE, "evidential": Evidential, "gmm": GMM}[method]
    m = cls(potential=small(3 if method == "ensemble" else 1), **kw)
    m.fit_reference(ds)
    if method == "gmm":
        m.fit_posthoc(ds, batch_size=16)
    return m


@pytest.fixture(scope="module")
def data(ethanol):
    return ethanol[:30]


def test_stacked_ensemble_equals_separate_models(data):
    ens = Potential(**small(3, [4, 5, 6]))
    singles = [Potential(**small(1, [s])) for s in (4, 5, 6)]
    for p in [ens] + singles:
        p.fit_reference(data)
    b = collate([data[i] for i in range(5)], cutoff=5.0)
    out = ens.forward_members(b, create_graph=False)
    for m, single in enumerate(singles):
        o = single(b, create_graph=False)
        torch.testing.assert_close(out[F.ENERGY][m], o[F.ENERGY], rtol=1e-6, atol=1e-4)
        torch.testing.assert_close(out[F.FORCES][m], o[F.FORCES], rtol=1e-5, atol=1e-5)


def test_ensemble_trained_together_equals_each_alone(tmp_path, data):
    """One shared batch order (``member_order: shared``): member m equals a single network with member m's
    seed trained on the same order (independent orders: tests/test_member_order.py)."""
    train, val = data[:16], data[16:24]
    cfg = TrainConfig(epochs=3, batch_size=4, lr=2e-3, progress=False, member_order="shared")
    ens = Potential(**small(3, [10, 11, 12]))
    ens.fit_reference(train)
    Trainer(ens, train, val, cfg, tmp_path / "ens", seed=7).fit()
    together = uqpot.load(tmp_path / "ens" / "model.pt")
    for m, s in enumerate((10, 11, 12)):
        alone = Potential(**small(1, [s]))
        alone.fit_reference(train)
        Trainer(alone, train, val, cfg, tmp_path / f"m{m}", seed=7).fit()
        alone = uqpot.load(tmp_path / f"m{m}" / "model.pt")
        for k, v in alone.state_dict().items():
            t = together.state_dict()[k]
            if k in dict(together.named_parameters()):
                t = t[m:m + 1]
            torch.testing.assert_close(t, v, rtol=1e-5, atol=1e-6, msg=f"member {m}, {k}")


def test_ensemble_uncertainty_is_eq5(data):
    ens = make("ensemble", data)
    b = collate([data[i] for i in range(4)], cutoff=5.0, dtype="float32")
    out = ens(b, create_graph=False)
    fm = ens.forward_members(b, create_graph=False)[F.FORCES].detach().double().numpy()  # (M, N, 3)
    mu = fm.mean(0)
    for k in range(4):
        sl = slice(9 * k, 9 * k + 9)
        eq5 = ((fm[:, sl] - mu[sl]) ** 2).mean((1, 2)).sum() / (fm.shape[0] - 1)
        assert out[F.UNCERTAINTY][k].item() == pytest.approx(eq5, rel=1e-5)
    np.testing.assert_allclose(out[F.FORCES].detach().numpy(), mu, rtol=1e-5, atol=1e-5)


def test_reductions():
    from types import SimpleNamespace

    b = SimpleNamespace(num_structures=2, batch=torch.tensor([0, 0, 0, 1, 1]), n_atoms=torch.tensor([3, 2]))
    v = torch.tensor([1.0, 2.0, 6.0, -1.0, 5.0])
    assert reduce_atoms(v, b, "mean").tolist() == [3.0, 2.0]
    assert reduce_atoms(v, b, "max").tolist() == [6.0, 5.0]
    assert reduce_atoms(v, b, "sum").tolist() == [9.0, 4.0]


def test_mve_loss_matches_formula(data):
    m = make("mve", data)
    b = collate([data[0], data[1]], cutoff=5.0, dtype="float64")
    m.double()
    pred = m.forward_members(b, create_graph=False)
    loss, _ = MVELoss(0.1, 1.0)(pred, b)
    var = pred["forces_variance"][0].detach().numpy()[:, None]
    r = (pred[F.FORCES][0] - b.forces).detach().numpy()
    nll = np.mean(0.5 * np.log(2 * np.pi * var) + r ** 2 / (2 * var))
    e = np.mean(np.abs(pred[F.ENERGY][0].detach().numpy() - b.energy.numpy()))
    assert loss.item() == pytest.approx(0.1 * e + nll, rel=1e-10)


def test_evidential_loss_matches_formula(data):
    m = make("evidential", data)
    m.double()
    b = collate([data[0], data[1]], cutoff=5.0, dtype="float64")
    pred = m.forward_members(b, create_graph=False)
    loss, _ = EvidentialLoss(0.1, 1.0, 0.2)(pred, b)
    nu, al, be = (pred[k][0].detach().numpy()[:, None] for k in ("nu", "alpha", "beta"))
    err = (pred[F.FORCES][0] - b.forces).detach().numpy()
    om = 2 * be * (1 + nu)
    nll = (0.5 * np.log(np.pi / nu) - al * np.log(om) + (al + 0.5) * np.log(err ** 2 * nu + om)
           + special.gammaln(al) - special.gammaln(al + 0.5))
    f_term = np.mean(nll + 0.2 * np.abs(err) * (2 * nu + al))
    e = np.mean(np.abs(pred[F.ENERGY][0].detach().numpy() - b.energy.numpy()))
    assert loss.item() == pytest.approx(0.1 * e + f_term, rel=1e-10)
    out = m(b, create_graph=False)
    assert torch.all(out["alpha"] > 1) and torch.all(out["nu"] > 0) and torch.all(out["beta"] > 0)
    torch.testing.assert_close(out[F.UNCERTAINTY_ATOM], out["beta"] / (out["nu"] * (out["alpha"] - 1)))


def test_gmm_nll_matches_sklearn_and_bic_choice(data):
    m = GMM(potential=small(), candidates=[1, 2, 3], seed=0)
    m.fit_reference(data)
    info = m.fit_posthoc(data, batch_size=16)
    assert [c["components"] for c in info["curve"]] == [1, 2, 3]
    bics = [c["bic"] for c in info["curve"]]
    assert info["chosen"] == [1, 2, 3][int(np.argmin(bics))] == m.n_components
    assert info["curve"][0]["silhouette"] is None  # one component: undefined
    assert all(-1 <= c["silhouette"] <= 1 for c in info["curve"][1:])
    # torch NLL equals scikit-learn's -score_samples for the same mixture
    from sklearn.mixture import GaussianMixture

    X = m.features_of(data, 16)
    g = GaussianMixture(m.n_components, covariance_type="full", init_params="kmeans", random_state=0,
                        reg_covar=1e-6, max_iter=200).fit(X)
    nll = m.nll(torch.as_tensor(X)).detach().numpy()
    np.testing.assert_allclose(nll, -g.score_samples(X), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("method", ["ensemble", "mve", "evidential", "gmm"])
def test_uncertainty_differentiable_wrt_positions(method, data):
    m = make(method, data).double()
    s = data[3]
    b = collate([s], cutoff=5.0, dtype="float64")
    pos = b.positions.clone().requires_grad_(True)
    u = m.uncertainty(b.with_positions(pos)).per_structure.sum()
    (g,) = torch.autograd.grad(u, pos)
    assert torch.isfinite(g).all() and g.abs().max() > 0
    h = 1e-5
    for a, c in [(0, 0), (5, 2)]:
        p1, p2 = b.positions.clone(), b.positions.clone()
        p1[a, c] += h
        p2[a, c] -= h
        u1 = m.uncertainty(b.with_positions(p1)).per_structure.sum().item()
        u2 = m.uncertainty(b.with_positions(p2)).per_structure.sum().item()
        assert (u1 - u2) / (2 * h) == pytest.approx(g[a, c].item(), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("method", ["ensemble", "mve", "evidential", "gmm"])
def test_save_load_round_trip(tmp_path, method, data):
    m = make(method, data).eval()
    path = uqpot.save(m, tmp_path / f"{method}.pt")
    loaded = uqpot.load(path)
    assert type(loaded) is type(m) and loaded.hparams == m.hparams
    b = collate([data[i] for i in range(3)], cutoff=5.0)
    a, c = m(b, create_graph=False), loaded(b, create_graph=False)
    for k in (F.ENERGY, F.FORCES, F.UNCERTAINTY, F.UNCERTAINTY_ATOM):
        assert torch.equal(a[k], c[k]), k


def test_uq_config_rejects_foreign_options(ethanol_path):
    from uqpot.core.config_io import parse

    base = {"data": {"path": str(ethanol_path)}}
    with pytest.raises(ConfigError, match="'uq.lam' applies to evidential, not to 'ensemble'"):
        parse(RunConfig, {**base, "uq": {"method": "ensemble", "lam": 0.3}})
    with pytest.raises(ConfigError, match="uq.members"):
        parse(RunConfig, {**base, "uq": {"method": "ensemble", "members": 1}})
    with pytest.raises(ConfigError, match="uq.method"):
        parse(RunConfig, {**base, "uq": {"method": "dropout"}})


def test_divergent_evidential_never_saves_nan(tmp_path, data):
    """At an absurd learning rate the evidential loss blows up: training either recovers by rollback or
    fails clearly; any model file written holds finite numbers only."""
    from uqpot.core.errors import TrainingError

    m = make("evidential", data)
    cfg = TrainConfig(epochs=4, batch_size=4, lr=5.0, progress=False, max_nonfinite=0)
    try:
        Trainer(m, data[:16], data[16:24], cfg, tmp_path, loss_fn=m.make_loss(cfg)).fit()
    except TrainingError as exc:
        assert "non-finite loss at epoch" in str(exc)
    if (tmp_path / "model.pt").exists():
        saved = uqpot.load(tmp_path / "model.pt")
        assert all(torch.isfinite(t).all() for t in saved.state_dict().values() if t.is_floating_point())
