"""Smooth analytic reference potentials for testing the MD engines: a Morse pair potential, once as a torch
module with the forward interface of :class:`~uqpot.nn.potential.Potential` and once as an independent
NumPy ASE calculator.

    E = ½ Σ_{i≠j, r_ij < r_c} f_c(r_ij) · D_ab [(1 − exp(−a_ab (r_ij − r0_ab)))² − 1],
    f_c(r) = ½ (cos(π r / r_c) + 1)

with parameters per element pair (a, b) (D in kcal/mol, a in 1/Å, r0 in Å).  Pairs without parameters
do not interact.  :data:`NH3_MORSE` holds parameters for ammonia: N–H bonds (D = 105 kcal/mol, a = 2.09 Å⁻¹,
r0 = 1.012 Å; harmonic constant 2Da² ≈ 920 kcal/mol/Å², an N–H stretch near 3400 cm⁻¹) and H–H terms
(D = 8 kcal/mol, a = 1.8 Å⁻¹, r0 = 1.627 Å) that hold the H–N–H angle near 107°.  With these the pyramidal
molecule is the global minimum (every pair at its r0) and the planar geometry a saddle: a smooth double well
like the nitrogen inversion, with a barrier of about 1.0 kcal/mol (DFT: about 5 kcal/mol).

These are test fixtures with exactly known forces, not models of anything: use them to check integrators,
units and stability bookkeeping (the torch module and the calculator agree to round-off).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.data import atomic_numbers
from torch import nn

from ..core import fields as F
from ..data.batch import AtomsBatch
from ..core.units import EV_TO_KCAL_PER_MOL

#: Morse parameters for NH3: (element, element) -> (D kcal/mol, a 1/Å, r0 Å)
NH3_MORSE: dict[tuple[str, str], tuple[float, float, float]] = {
    ("N", "H"): (105.0, 2.09, 1.012),
    ("H", "H"): (8.0, 1.8, 1.627),
}

_MAX_Z = 119


def _z(e) -> int:
    return int(e) if not isinstance(e, str) else atomic_numbers[e]


def _tables(params: dict) -> np.ndarray:
    """(119, 119, 3) table of (D, a, r0); zeros where a pair has no parameters."""
    table = np.zeros((_MAX_Z, _MAX_Z, 3))
    for (ea, eb), (d, a, r0) in params.items():
        za, zb = _z(ea), _z(eb)
        table[za, zb] = table[zb, za] = (d, a, r0)
    return table


def _cosine_cutoff(r, cutoff, xp):
    return 0.5 * (xp.cos(r * (math.pi / cutoff)) + 1.0) * (r < cutoff)


class MorsePotential(nn.Module):
    """Morse pair potential with the forward interface of :class:`~uqpot.nn.potential.Potential`:
    ``forward(batch, compute_forces=True, create_graph=False)`` returns ``energy`` (B,) float64 kcal/mol
    and ``forces`` (N, 3) kcal/mol/Å.

    With ``with_uncertainty=True`` it also returns a deterministic stand-in for an uncertainty,
    ``uncertainty_atom`` = |F_i|² ((kcal/mol/Å)²) and ``uncertainty`` its mean per structure, so that code
    which records U along trajectories can be tested against a known function of the geometry.
    """

    def __init__(self, params: dict | None = None, cutoff: float = 5.0, with_uncertainty: bool = False,
                 dtype=torch.float64):
        super().__init__()
        self.cutoff = float(cutoff)
        self.with_uncertainty = bool(with_uncertainty)
        self.register_buffer("table", torch.as_tensor(_tables(NH3_MORSE if params is None else params),
                                                      dtype=dtype))

    @property
    def dtype(self) -> torch.dtype:
        return self.table.dtype

    @property
    def device(self) -> torch.device:
        return self.table.device

    def forward(self, batch: AtomsBatch, compute_forces: bool = True, create_graph: bool | None = False,
                retain_graph: bool | None = None) -> dict[str, torch.Tensor]:
        create_graph = bool(create_graph)
        positions = batch.positions
        with torch.enable_grad() if compute_forces or positions.requires_grad else torch.no_grad():
            if compute_forces and not positions.requires_grad:
                positions = positions.detach().requires_grad_(True)
            i, j = batch.edge_index[0], batch.edge_index[1]
            vec = positions.index_select(0, j) - positions.index_select(0, i)
            if batch.periodic:
                vec = vec + batch.edge_offsets().to(vec.dtype)
            r = torch.sqrt((vec * vec).sum(-1))
            p = self.table[batch.numbers[i], batch.numbers[j]].to(r.dtype)  # (E, 3)
            d, a, r0 = p[:, 0], p[:, 1], p[:, 2]
            morse = d * ((1.0 - torch.exp(-a * (r - r0))) ** 2 - 1.0)
            e_edge = 0.5 * morse * _cosine_cutoff(r, self.cutoff, torch)
            e_atom = r.new_zeros(batch.positions.shape[0]).index_add(0, i, e_edge)
            energy = e_atom.new_zeros(batch.num_structures).index_add(0, batch.batch, e_atom)
            out = {F.ENERGY: energy.to(torch.float64), F.ATOMIC_ENERGY: e_atom}
            if compute_forces:
                (grad,) = torch.autograd.grad(energy.sum(), positions, create_graph=create_graph,
                                              retain_graph=create_graph if retain_graph is None else retain_graph)
                out[F.FORCES] = -grad
        if self.with_uncertainty and compute_forces:
            u_atom = (out[F.FORCES] ** 2).sum(-1)
            out[F.UNCERTAINTY_ATOM] = u_atom
            out[F.UNCERTAINTY] = u_atom.new_zeros(batch.num_structures).index_add(0, batch.batch, u_atom) \
                / batch.n_atoms.to(u_atom.dtype)
        return out


class MorseCalculator(Calculator):
    """The same Morse potential as :class:`MorsePotential`, as a NumPy ASE calculator (eV, eV/Å), with
    ASE's own neighbour list (so it is an independent implementation)."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, params: dict | None = None, cutoff: float = 5.0, **kwargs):
        super().__init__(**kwargs)
        self.table = _tables(NH3_MORSE if params is None else params)
        self.cutoff = float(cutoff)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        from ase.neighborlist import neighbor_list

        super().calculate(atoms, properties, system_changes)
        i, j, dvec = neighbor_list("ijD", self.atoms, self.cutoff)
        r = np.linalg.norm(dvec, axis=1)
        z = self.atoms.numbers
        d, a, r0 = self.table[z[i], z[j]].T
        ex = np.exp(-a * (r - r0))
        morse = d * ((1.0 - ex) ** 2 - 1.0)
        dmorse = d * 2.0 * (1.0 - ex) * a * ex
        fc = _cosine_cutoff(r, self.cutoff, np)
        dfc = -0.5 * math.pi / self.cutoff * np.sin(r * math.pi / self.cutoff) * (r < self.cutoff)
        energy = 0.5 * float(np.sum(morse * fc))  # kcal/mol
        de_dr = 0.5 * (dmorse * fc + morse * dfc)  # each ordered pair carries half the pair energy
        g = (de_dr / r)[:, None] * dvec  # dE/d r_j of the pair (i, j); -g on i
        forces = np.zeros((len(self.atoms), 3))
        np.add.at(forces, i, g)
        np.add.at(forces, j, -g)
        self.results["energy"] = self.results["free_energy"] = energy / EV_TO_KCAL_PER_MOL
        self.results["forces"] = forces / EV_TO_KCAL_PER_MOL
