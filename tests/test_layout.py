"""The dense all-pairs layout and the compiled paths give what the sparse edge list and eager autograd give:
energies, forces, features, second derivatives, UQ outputs, a training run and an MD campaign (float64)."""

import numpy as np
import pytest
import torch
from ase import Atoms

from uqpot.core import fields as F
from uqpot.train.config import TrainConfig
from uqpot.core.errors import ConfigError
from uqpot.data.batch import DENSE_MAX_ATOMS, choose_layout, collate, collate_dataset, dense_layout
from uqpot.data.structures import Structure, StructureDataset
from uqpot.md.analytic import MorsePotential
from uqpot.md.batched import BatchedMD
from uqpot.md.neb import nh3_pyramid
from uqpot.md.stability import StabilityCriteria
from uqpot.nn.potential import Potential
from uqpot.train.trainer import Trainer
from uqpot.uq import GMM, MVE, Ensemble, Evidential
from conftest import silica_like


def mixed(ethanol, ammonia):
    """Ethanol (9 atoms) and NH3 (4 atoms) frames in one batch, and two NH3 8 Å apart (pairs beyond the
    cutoff), so the padded grid has padding and masked distant pairs."""
    a = nh3_pyramid()
    b = nh3_pyramid()
    b.translate([8.0, 0.0, 0.0])
    far = Structure.from_atoms(a + b)
    return [ethanol[0], ammonia[0], ethanol[1], far, ammonia[3]]


def rattled_nh3(n: int) -> list:
    """n pyramidal NH3 start structures, each rattled by 0.05 Å with its own seed."""
    out = []
    for k in range(n):
        a = nh3_pyramid()
        a.rattle(0.05, seed=k)
        out.append(a)
    return out


def small(members=1, dtype=torch.float64, ds=None):
    torch.manual_seed(0)
    m = Potential(features=16, interactions=2, rbf=8, readout_hidden=16, members=members,
                  seeds=list(range(members)))
    if ds is not None:
        m.fit_reference(ds)
    return m.to(dtype)


def test_choose_layout_rules():
    assert choose_layout("auto", periodic=False, max_atoms=9) == "dense"
    assert choose_layout("auto", periodic=False, max_atoms=DENSE_MAX_ATOMS + 1) == "sparse"
    assert choose_layout("auto", periodic=True, max_atoms=3) == "sparse"
    assert choose_layout("sparse", periodic=False, max_atoms=3) == "sparse"
    with pytest.raises(ValueError, match="periodic"):
        choose_layout("dense", periodic=True, max_atoms=9)
    with pytest.raises(ValueError, match="unknown layout"):
        choose_layout("diagonal", periodic=False, max_atoms=9)
    with pytest.raises(ValueError, match="periodic"):
        collate([Structure.from_atoms(silica_like())], cutoff=5.0, layout="dense")
    index, mask = dense_layout(np.array([2, 3]))
    assert index.tolist() == [0, 1, 3, 4, 5]
    assert mask.shape == (2, 3, 3) and mask.sum() == 2 + 6 and not mask[:, range(3), range(3)].any()


@pytest.mark.parametrize("members", [1, 3])
def test_dense_equals_sparse(members, ethanol, ammonia):
    structs = mixed(ethanol, ammonia)
    m = small(members, ds=StructureDataset(structs)).eval()
    bs = collate(structs, cutoff=5.0, dtype="float64")
    bd = collate(structs, cutoff=5.0, dtype="float64", layout="dense")
    assert bd.dense and not bs.dense and bd.pair_mask.shape == (5, 9, 9)
    a, b = m.forward_members(bs), m.forward_members(bd)
    for key in (F.ENERGY, F.FORCES, F.FEATURES, F.ATOMIC_ENERGY):
        assert a[key].shape == b[key].shape
        assert (a[key] - b[key]).abs().max() < 1e-10, key
    # the two NH3 8 Å apart do not feel each other: the forces on the first are those of it alone
    far = structs[3]
    one = Structure.from_atoms(Atoms(numbers=far.numbers[:4], positions=far.positions[:4]))
    alone = m.forward_members(collate([one], cutoff=5.0, dtype="float64", layout="dense"))
    start = sum(s.n_atoms for s in structs[:3])
    assert (b[F.FORCES][:, start:start + 4] - alone[F.FORCES]).abs().max() < 1e-10


def test_dense_second_derivatives_equal_sparse(ethanol, ammonia):
    """The adversarial attack differentiates force-based uncertainties w.r.t. positions: d(Σ F²)/dx."""
    structs = mixed(ethanol, ammonia)
    m = small(ds=StructureDataset(structs)).eval()
    grads = []
    for layout in ("sparse", "dense"):
        b = collate(structs, cutoff=5.0, dtype="float64", layout=layout)
        x = b.positions.clone().requires_grad_(True)
        out = m(b.with_positions(x), create_graph=True)
        (g,) = torch.autograd.grad(out[F.FORCES].pow(2).sum(), x)
        grads.append(g)
    assert (grads[0] - grads[1]).abs().max() < 1e-9


@pytest.mark.parametrize("method", ["ensemble", "mve", "evidential", "gmm"])
def test_uq_methods_on_the_dense_layout(method, ethanol, ammonia):
    structs = mixed(ethanol, ammonia)
    ds = StructureDataset(structs)
    hp = dict(features=16, interactions=2, rbf=8, readout_hidden=16)
    cls = {"ensemble": Ensemble, "mve": MVE, "evidential": Evidential, "gmm": GMM}[method]
    torch.manual_seed(0)
    m = cls(potential=dict(hp, members=3 if method == "ensemble" else 1,
                           seeds=[0, 1, 2] if method == "ensemble" else [0]))
    m.fit_reference(ds)
    m = m.double().eval()
    if method == "gmm":
        m.fit_posthoc(ds, batch_size=5)
    a = m(collate(structs, cutoff=5.0, dtype="float64"))
    b = m(collate(structs, cutoff=5.0, dtype="float64", layout="dense"))
    for key in (F.ENERGY, F.FORCES, F.UNCERTAINTY, F.UNCERTAINTY_ATOM):
        assert (a[key] - b[key]).abs().max() <= 1e-9 * (1 + a[key].abs().max()), key


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _trained_weights(tmp_path, ethanol, layout, comp):
    """The weights after two epochs of an ensemble of two (float64), with one shared batch order on every
    layout (independent member orders need the dense layout)."""
    tr, va = ethanol.subset(list(range(24))), ethanol.subset(list(range(24, 32)))
    m = small(members=2, ds=tr)
    cfg = TrainConfig(epochs=2, batch_size=8, layout=layout, compile=comp, progress=False, device="cpu",
                      dtype="float64", member_order="shared")
    res = Trainer(m, tr, va, cfg, tmp_path / f"{layout}{comp}").fit()
    assert res.epochs_run == 2
    return _flat(m)


def test_training_dense_equals_sparse(tmp_path, ethanol):
    """Two epochs of an ensemble of two on the edge list and on the dense layout: the same weights."""
    ref = _trained_weights(tmp_path, ethanol, "sparse", False)
    dense = _trained_weights(tmp_path, ethanol, "dense", False)
    assert (dense - ref).abs().max() < 1e-10
    assert (ref - _flat(small(members=2, ds=ethanol.subset(list(range(24)))))).abs().max() > 1e-4  # they moved


@pytest.mark.slow
def test_training_compiled_equals_sparse(tmp_path, ethanol):
    """The compiled training step on the dense layout (forces by torch.func.grad) gives the weights of the
    eager edge-list step. Slow: compiling the step takes about two minutes on two CPU cores; the default
    run covers the compiled MD call (test_md_compiled_uq_methods_equal_eager[gmm])."""
    ref = _trained_weights(tmp_path, ethanol, "sparse", False)
    comp = _trained_weights(tmp_path, ethanol, "dense", True)
    assert (comp - ref).abs().max() < 1e-10


@pytest.mark.slow  # about 75 s of compilation on two cores; test_md_compiled_uq_methods_equal_eager[gmm] covers the compiled call by default
def test_md_dense_compiled_equals_sparse_with_removals():
    """A campaign on the padded dense layout through the compiled model follows the sparse eager one, also
    after a replica failed and was removed (the padding keeps the compiled shapes)."""
    starts = rattled_nh3(3)
    model = small().eval()
    crit = StabilityCriteria(max_kinetic_energy=200.0)  # kcal/mol: the replica at 1e5 K fails at once
    kw = dict(timestep_fs=0.25, temperatures_K=[300.0, 1e5, 500.0], seeds=[1, 2, 3], criteria=crit,
              check_every=10)
    ref = BatchedMD(model, starts, layout="sparse", **kw).run(60)
    md = BatchedMD(model, starts, layout="dense", compile=True, **kw)
    res = md.run(60)
    assert md.layout == "dense" and md.neighbor_builds == 2  # start, and after the removal: never stale
    assert not res.replicas[1].stable and res.replicas[1].failure_step == ref.replicas[1].failure_step
    for k in (0, 2):
        assert res.replicas[k].stable and ref.replicas[k].stable
        assert np.abs(res.replicas[k].final_positions - ref.replicas[k].final_positions).max() < 1e-9
    # the compiled call reads the weights as detached views: the model keeps its trainable parameters, and
    # an in-place change of a weight reaches the compiled call
    assert all(p.requires_grad for p in model.parameters())
    batch = md._model_batch.with_positions(torch.cat([md.x, md.x.new_zeros(md._capacity[0] - len(md.x), 3)]))
    f_before = md._call(batch)[0]
    with torch.no_grad():
        model.readout.lin1.weight.mul_(2.0)
    f_after, f_eager = md._call(batch)[0], md._call_model(batch)[0]
    assert (f_after - f_before).abs().max() > 1e-6
    assert (f_after - f_eager).abs().max() < 1e-9


def test_md_layout_choice():
    a = Atoms("NH3", positions=nh3_pyramid().positions)
    assert BatchedMD(small().eval(), [a], timestep_fs=0.5).layout == "sparse"  # eager: the edge list
    with pytest.raises(ValueError, match="dense"):
        BatchedMD(MorsePotential(), [a], timestep_fs=0.5, layout="dense")
    # the compiled model call exists on the dense layout only: edge lists, periodic cells and models that
    # read edge lists are refused with a message, before anything runs
    for model, start, kw in ((MorsePotential(), a, {}), (small().eval(), a, {"layout": "sparse"}),
                             (small().eval(), silica_like(), {})):
        with pytest.raises(ValueError, match="dense layout only"):
            BatchedMD(model, [start], timestep_fs=0.5, compile=True, **kw)


def test_collate_dataset_dense(ethanol):
    b = collate_dataset(ethanol, [0, 1, 2], 5.0, layout="auto")
    assert b.dense and b.pair_mask.shape == (3, 9, 9) and int(b.pair_mask.sum()) == 3 * 72


def test_trainer_auto_layout(tmp_path, ethanol):
    """'auto' trains molecules on the dense grid only under the compiled step (eager, the edge list is as
    fast); an explicit layout is kept."""
    tr, va = ethanol.subset(list(range(8))), ethanol.subset(list(range(8, 12)))

    def first_batch(**kw):
        t = Trainer(small(ds=tr), tr, va, TrainConfig(progress=False, device="cpu", **kw), tmp_path / str(kw))
        return next(iter(t._batches(tr, 4, shuffle=False)))[1]

    assert not first_batch().dense
    assert first_batch(compile=True).dense
    assert first_batch(layout="dense").dense
    with pytest.raises(ConfigError, match="dense layout only"):
        first_batch(layout="sparse", compile=True)
    periodic = StructureDataset([Structure.from_atoms(silica_like(seed=k)) for k in range(3)])
    for s in periodic:
        s.energy, s.forces = 0.0, np.zeros_like(s.positions)
    with pytest.raises(ConfigError, match="dense layout only"):
        Trainer(small(ds=periodic), periodic, periodic, TrainConfig(progress=False, compile=True), tmp_path / "p")


# one method in the default run; the other three compile for 20-45 s each on two CPU cores
@pytest.mark.parametrize("method", [pytest.param("ensemble", marks=pytest.mark.slow),
                                    pytest.param("mve", marks=pytest.mark.slow),
                                    pytest.param("evidential", marks=pytest.mark.slow), "gmm"])
def test_md_compiled_uq_methods_equal_eager(method, ammonia):
    """Every UQ method runs the compiled engine (weights passed as detached views) with the positions and
    the uncertainty along the trajectory of the eager edge-list engine, and keeps its trainable weights."""
    starts = rattled_nh3(3)
    cls = {"ensemble": Ensemble, "mve": MVE, "evidential": Evidential, "gmm": GMM}[method]
    torch.manual_seed(0)
    m = cls(potential=dict(features=16, interactions=2, rbf=8, readout_hidden=16,
                           members=3 if method == "ensemble" else 1, seeds=[0, 1, 2] if method == "ensemble" else [0]))
    ds = StructureDataset(list(ammonia)[:8])
    m.fit_reference(ds)
    m = m.double().eval()
    if method == "gmm":
        m.fit_posthoc(ds, batch_size=4)
    kw = dict(timestep_fs=0.25, temperatures_K=300.0, seeds=[1, 2, 3], check_every=10, record_every=10)
    ref = BatchedMD(m, starts, layout="sparse", **kw).run(30)
    res = BatchedMD(m, starts, layout="dense", compile=True, **kw).run(30)
    for a, b in zip(ref.replicas, res.replicas):
        assert np.abs(a.final_positions - b.final_positions).max() < 1e-9
        u_a, u_b = np.array(a.uncertainty), np.array(b.uncertainty)
        assert len(u_a) == 4 and np.all(np.isfinite(u_a)) and np.ptp(u_a) > 0  # U moves along the run
        assert np.abs(u_a - u_b).max() <= 1e-9 * (1 + np.abs(u_a).max())
    assert all(p.requires_grad for p in m.parameters())


@pytest.mark.slow
def test_reduce_overhead_mode_equals_eager(tmp_path, ethanol):
    """compile_mode 'reduce-overhead' (CUDA graphs on a GPU; on this CPU the same compiled code without a
    graph capture): the compiled training step and the compiled MD call give the eager results."""
    tr, va = ethanol.subset(list(range(16))), ethanol.subset(list(range(16, 24)))
    weights = []
    for comp, mode in ((False, "default"), (True, "reduce-overhead")):
        m = small(ds=tr)
        cfg = TrainConfig(epochs=1, batch_size=8, layout="dense", compile=comp, compile_mode=mode, progress=False,
                          device="cpu", dtype="float64")
        Trainer(m, tr, va, cfg, tmp_path / f"t{comp}").fit()
        weights.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    assert (weights[1] - weights[0]).abs().max() < 1e-10
    starts = rattled_nh3(2)
    model = small().eval()
    kw = dict(timestep_fs=0.25, temperatures_K=300.0, seeds=[1, 2], check_every=10)
    ref = BatchedMD(model, starts, layout="dense", **kw).run(20)
    res = BatchedMD(model, starts, layout="dense", compile=True, compile_mode="reduce-overhead", **kw).run(20)
    for a, b in zip(ref.replicas, res.replicas):
        assert np.abs(a.final_positions - b.final_positions).max() < 1e-9


def test_inference_batches_are_capped_in_atoms_and_give_the_same_predictions():
    """Inference passes split a batch of large cells to at most INFERENCE_MAX_ATOMS atoms (a structure larger
    than that alone); per-structure predictions do not depend on the split."""
    from uqpot.data.batch import INFERENCE_MAX_ATOMS, iterate_batches
    from uqpot.evaluation.predict import predict

    cells = [Structure.from_atoms(silica_like((3, 2, 2), seed=k)) for k in range(6)]  # 108 atoms each
    big = [Structure.from_atoms(silica_like((4, 4, 4), seed=9))]  # 576 atoms
    data = StructureDataset(cells + big + cells[:2])
    sizes = [[data[int(i)].n_atoms for i in idx] for idx, _ in iterate_batches(data, 64, 5.0, max_atoms=300)]
    assert all(sum(s) <= 300 or len(s) == 1 for s in sizes) and sum(map(len, sizes)) == len(data)
    assert [576] in sizes and len(sizes) == 5
    assert [len(idx) for idx, _ in iterate_batches(data, 64, 5.0)] == [len(data)]  # no cap: one batch
    assert INFERENCE_MAX_ATOMS >= 512
    model = Potential(features=16, interactions=1, rbf=8, cutoff=4.0, readout_hidden=8, seeds=[0]).double()
    model.fit_reference(StructureDataset(cells))
    together = predict(model, data, batch_size=64)
    one_by_one = predict(model, data, batch_size=1)
    np.testing.assert_allclose(together[F.ENERGY], one_by_one[F.ENERGY], rtol=1e-12)
    for a, b in zip(together[F.FORCES], one_by_one[F.FORCES]):
        np.testing.assert_allclose(a, b, atol=1e-10)
