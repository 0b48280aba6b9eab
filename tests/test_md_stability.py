"""Stability criteria (paper Sec. 2.5) on hand-made structures, vectorised over replicas."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from uqpot.systems import System, get_system
from uqpot.md.neb import nh3_pyramid
from uqpot.md.stability import (REASONS, StabilityCriteria, check_structure, evaluate, max_distance_pairs)
from conftest import silica_like

NH3 = nh3_pyramid().positions
Z_NH3 = np.array([7, 1, 1, 1])


def moved(atom, vec):
    p = NH3.copy()
    p[atom] = p[atom] + np.asarray(vec)
    return p


def test_paper_presets():
    a = get_system("ammonia").stability_criteria()
    assert (a.min_distance, a.max_distance, a.max_distance_pairs, a.min_energy) == (0.75, 2.25, ((1, 7),), 0.0)
    s = get_system("silica").stability_criteria()
    assert (s.min_distance, s.min_kinetic_energy, s.max_kinetic_energy, s.max_distance) == (1.0, 0.0, 10_000.0, None)
    assert get_system("ammonia").stability_criteria(ground_state_energy=-3.5).min_energy == -3.5
    assert System().stability_criteria() == StabilityCriteria()
    with pytest.raises(ValidationError):
        StabilityCriteria(min_distanse=1.0)  # unknown keys are errors
    with pytest.raises(ValueError, match="unknown system"):
        get_system("water")


@pytest.mark.parametrize("positions, energy, expected", [
    (NH3, 1.0, "stable"),
    (NH3, -0.1, "below_ground_state"),  # below the 0 kcal/mol ground state
    (moved(1, (1.4, 0.0, 0.0)), 1.0, "dissociation"),  # N–H ≈ 2.35 Å
    (moved(1, 0.65 * (NH3[2] - NH3[1])), 1.0, "collision"),  # H–H ≈ 0.57 Å
    (moved(1, (np.nan, 0.0, 0.0)), 1.0, "nonfinite"),
    (NH3, float("nan"), "nonfinite"),
    (NH3, float("inf"), "nonfinite"),
])
def test_ammonia_single_structures(positions, energy, expected):
    crit = get_system("ammonia").stability_criteria(ground_state_energy=0.0)
    assert check_structure(crit, positions, Z_NH3, energy=energy, kinetic_energy=1.0) == expected


def test_hh_stretch_is_not_a_dissociation():
    """The upper bound is on N–H: two H 2.3 Å apart in an intact molecule are fine, unless all pairs count."""
    p = nh3_pyramid(bond=1.35, angle_deg=120.0).positions  # H–H = 2.34 Å, N–H = 1.35 Å
    assert np.linalg.norm(p[1] - p[2]) > 2.25
    assert check_structure(get_system("ammonia").stability_criteria(), p, Z_NH3, energy=1.0) == "stable"
    every_pair = get_system("ammonia").stability_criteria(max_distance_pairs=None)
    assert check_structure(every_pair, p, Z_NH3, energy=1.0) == "dissociation"


def test_precedence_of_reasons():
    crit = get_system("ammonia").stability_criteria(ground_state_energy=0.0)
    # colliding, dissociated and below the ground state at once: collision is reported
    p = moved(1, (1.5, 0.0, 0.0))
    p[3] = p[2] + 0.1
    assert check_structure(crit, p, Z_NH3, energy=-5.0) == "collision"
    assert REASONS[0] == "stable" and REASONS.index("nonfinite") == 1


def test_silica_kinetic_energy_and_periodic_images():
    crit = get_system("silica").stability_criteria()
    q = silica_like()
    pos, z, cell = q.positions, q.numbers, q.cell.array
    assert check_structure(crit, pos, z, cell=cell, pbc=True, kinetic_energy=50.0) == "stable"
    assert check_structure(crit, pos, z, cell=cell, pbc=True, kinetic_energy=0.0) == "kinetic_zero"
    assert check_structure(crit, pos, z, cell=cell, pbc=True, kinetic_energy=2.0e4) == "kinetic_high"
    assert check_structure(crit, pos, z, cell=cell, pbc=True, kinetic_energy=float("nan")) == "nonfinite"
    # two atoms 4.5 Å apart in the cell but 0.5 Å apart through the periodic boundary
    cube = np.eye(3) * 5.0
    p2 = np.array([[0.2, 2.5, 2.5], [4.7, 2.5, 2.5]])
    assert check_structure(crit, p2, [14, 8], cell=cube, pbc=True, kinetic_energy=1.0) == "collision"
    assert check_structure(crit, p2, [14, 8], cell=cube, pbc=False, kinetic_energy=1.0) == "stable"


def test_vectorised_over_replicas_with_mixed_outcomes():
    """Five NH3 replicas in one call: stable, collision, dissociation, below ground state, NaN."""
    crit = get_system("ammonia").stability_criteria(ground_state_energy=0.0)
    geoms = [NH3, moved(1, 0.7 * (NH3[2] - NH3[1])), moved(3, (0.0, 0.0, -2.0)), NH3, moved(2, (np.inf, 0, 0))]
    energy = torch.tensor([1.0, 1.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    pos = torch.as_tensor(np.concatenate(geoms))
    batch = torch.arange(5).repeat_interleave(4)
    # full intra-replica edge list (what the MD engine's neighbour list holds for NH3)
    ii, jj = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
    mask = ii != jj
    edges = np.concatenate([np.stack([ii[mask] + 4 * r, jj[mask] + 4 * r]) for r in range(5)], axis=1)
    pairs = max_distance_pairs(crit, np.tile(Z_NH3, 5), np.full(5, 4))
    assert pairs.shape == (2, 15)  # three N–H pairs per replica
    failed, reason = evaluate(crit, pos, batch, 5, energy=energy, kinetic_energy=torch.ones(5, dtype=torch.float64),
                              edge_index=torch.as_tensor(edges), max_pairs=torch.as_tensor(pairs))
    assert failed.tolist() == [False, True, True, True, True]
    assert [REASONS[int(k)] for k in reason] == ["stable", "collision", "dissociation", "below_ground_state",
                                                 "nonfinite"]
    assert reason.dtype == torch.int64


def test_no_criteria_checks_finiteness_only():
    crit = StabilityCriteria()
    p = moved(1, 0.95 * (NH3[2] - NH3[1]))  # atoms nearly on top of each other
    assert check_structure(crit, p, Z_NH3, energy=-1e9) == "stable"
    forces = np.zeros((4, 3))
    forces[0, 0] = np.nan
    assert check_structure(crit, NH3, Z_NH3, forces=forces) == "nonfinite"


def test_max_distance_needs_molecules():
    with pytest.raises(ValueError, match="molecules"):
        max_distance_pairs(get_system("ammonia").stability_criteria(), np.array([14, 8]), np.array([2]), np.array([True]))
