"""Forces are minus the gradient of the energy; energy is invariant and forces equivariant under
rotations, translations and permutations; for molecules and for periodic cells smaller than 2x cutoff."""

import copy

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from uqpot.data.batch import collate
from uqpot.data.structures import Structure
from uqpot.nn.potential import Potential
from conftest import silica_like


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Potential()  # the paper's architecture
    # random, non-trivial readout scale and reference energies
    m.energy_scale.fill_(3.0)
    m.atomref[[1, 6, 8, 14]] = torch.tensor([-300.0, -23000.0, -47000.0, -180000.0], dtype=torch.float64)
    return m.double().eval()


def _run(model, structures):
    b = collate(structures, cutoff=model.cutoff, dtype="float64")
    out = model(b, create_graph=False)
    return out["energy"].detach().numpy(), out["forces"].detach().numpy()


def _fd_forces(model, s: Structure, h=1e-4):
    fd = np.zeros_like(s.positions)
    base = collate([s], cutoff=model.cutoff, dtype="float64")  # same neighbour list for every displacement
    for a in range(s.n_atoms):
        for c in range(3):
            e = []
            for sign in (1, -1):
                p = base.positions.clone()
                p[a, c] += sign * h
                e.append(model(base.with_positions(p), compute_forces=False)["energy_residual"].item())
            fd[a, c] = -(e[0] - e[1]) / (2 * h)
    return fd


def _silica_structure(repeat=(1, 1, 1), seed=0):
    return Structure.from_atoms(silica_like(repeat, seed=seed))


def test_forces_are_minus_energy_gradient_molecule(model, ethanol):
    s = ethanol[3]
    _, f = _run(model, [s])
    fd = _fd_forces(model, s)
    rel = np.abs(fd - f).max() / np.abs(f).max()
    assert rel < 1e-5, rel


def test_forces_are_minus_energy_gradient_periodic(model):
    s = _silica_structure()  # 9 atoms, cell 4.9 x 4.9 x 5.4 Å < 2 x cutoff
    _, f = _run(model, [s])
    fd = _fd_forces(model, s)
    rel = np.abs(fd - f).max() / np.abs(f).max()
    assert rel < 1e-5, rel


def test_rotation_translation_invariance_molecule(model, ethanol):
    s = ethanol[5]
    e0, f0 = _run(model, [s])
    for seed in range(3):
        R = Rotation.random(random_state=seed).as_matrix()
        t = np.random.default_rng(seed).normal(size=3) * 5
        s2 = copy.deepcopy(s)
        s2.positions = s.positions @ R.T + t
        e1, f1 = _run(model, [s2])
        assert e1[0] == pytest.approx(e0[0], abs=1e-8)
        np.testing.assert_allclose(f1, f0 @ R.T, atol=1e-9)


def test_permutation_invariance(model, ethanol):
    s = ethanol[7]
    e0, f0 = _run(model, [s])
    perm = np.random.default_rng(1).permutation(s.n_atoms)
    s2 = copy.deepcopy(s)
    s2.numbers, s2.positions = s.numbers[perm], s.positions[perm]
    e1, f1 = _run(model, [s2])
    assert e1[0] == pytest.approx(e0[0], abs=1e-8)
    np.testing.assert_allclose(f1, f0[perm], atol=1e-9)


def test_periodic_invariances(model):
    atoms = silica_like((1, 1, 1), seed=2)
    s = Structure.from_atoms(atoms)
    e0, f0 = _run(model, [s])
    # rotate positions and cell together
    R = Rotation.random(random_state=4).as_matrix()
    s_rot = copy.deepcopy(s)
    s_rot.positions, s_rot.cell = s.positions @ R.T, s.cell @ R.T
    e1, f1 = _run(model, [s_rot])
    assert e1[0] == pytest.approx(e0[0], abs=1e-7)
    np.testing.assert_allclose(f1, f0 @ R.T, atol=1e-8)
    # translate and wrap back into the cell
    a2 = atoms.copy()
    a2.translate([1.3, -2.1, 0.7])
    a2.wrap()
    e2, f2 = _run(model, [Structure.from_atoms(a2)])
    assert e2[0] == pytest.approx(e0[0], abs=1e-7)
    np.testing.assert_allclose(f2, f0, atol=1e-8)
    # a supercell has exactly twice the energy; forces repeat
    e3, f3 = _run(model, [Structure.from_atoms(atoms.repeat((2, 1, 1)))])
    assert e3[0] == pytest.approx(2 * e0[0], rel=1e-10)
    np.testing.assert_allclose(f3, np.concatenate([f0, f0]), atol=1e-8)


def test_batched_equals_one_by_one(model, ethanol):
    structures = [ethanol[i] for i in range(5)] + [_silica_structure()]
    e_all, f_all = _run(model, structures)
    offset = 0
    for k, s in enumerate(structures):
        e, f = _run(model, [s])
        assert e_all[k] == pytest.approx(e[0], abs=1e-8)
        np.testing.assert_allclose(f_all[offset:offset + s.n_atoms], f, atol=1e-9)
        offset += s.n_atoms


def test_float32_close_to_float64(ethanol):
    torch.manual_seed(1)
    m = Potential()
    m.fit_reference(ethanol[:50])
    e64, f64 = _run(copy.deepcopy(m).double().eval(), [ethanol[0], ethanol[1]])
    b = collate([ethanol[0], ethanol[1]], cutoff=5.0, dtype="float32")
    out = m.float().eval()(b, create_graph=False)
    assert out["energy"].dtype == torch.float64  # absolute energies kept in float64
    np.testing.assert_allclose(out["energy"].detach().numpy(), e64, atol=1e-3)
    np.testing.assert_allclose(out["forces"].detach().numpy(), f64, atol=1e-3)
