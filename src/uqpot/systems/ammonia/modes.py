"""NH3's minimum and normal modes on the oracle's forces (steps 1-2 of the ammonia build, :mod:`.build`):
a BFGS optimisation, a central-difference Hessian with translations and rotations projected out, and the
inversion path through the planar geometry."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ...data.sets._build import Labeller
from ...data.sets._common import BuildError
from ...data.structures import Structure
from ...core.units import convert_energy


@dataclass
class NormalModes:
    """Harmonic analysis at the minimum: eigenvalues (kcal/mol/Å²/amu), frequencies (cm⁻¹), modes as
    Cartesian displacements per unit normal coordinate (Å per Å·amu^½), the umbrella mode's index."""

    eigenvalues: np.ndarray
    frequencies: np.ndarray
    modes: np.ndarray  # (k, n, 3)
    umbrella: int
    hessian: np.ndarray = field(repr=False)


def wavenumber(eigenvalue_kcal_per_mol_a2_amu):
    """Harmonic wavenumber (cm⁻¹) of a mass-weighted Hessian eigenvalue in kcal/mol/Å²/amu."""
    from ase import units as u

    lam_si = convert_energy(np.asarray(eigenvalue_kcal_per_mol_a2_amu, dtype=float), "kcal/mol", "eV") * u._e \
        / (1e-20 * u._amu)  # 1/s²
    return np.sign(lam_si) * np.sqrt(np.abs(lam_si)) / (2 * math.pi * u._c * 100.0)


def _structure(numbers, positions, info=None):
    return Structure(numbers=np.asarray(numbers, dtype=np.int64).copy(), positions=np.asarray(positions, float),
                     cell=np.zeros((3, 3)), pbc=np.zeros(3, dtype=bool), info=dict(info or {}))


def optimise(numbers, positions, labeller: Labeller, fmax: float, max_steps: int, progress=None):
    """BFGS (ASE) on the oracle's forces; returns (positions, labelled minimum, steps, converged)."""
    from ase import Atoms
    from ase.calculators.calculator import Calculator, all_changes
    from ase.optimize import BFGS

    kcal_to_ev = convert_energy(1.0, "kcal/mol", "eV")

    class OracleCalculator(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            s = labeller.one(_structure(self.atoms.numbers, self.atoms.positions, {"stage": "optimise"}),
                             "optimise")
            self.results = {"energy": s.energy * kcal_to_ev, "forces": s.forces * kcal_to_ev}
            if progress is not None:
                fm = float(np.sqrt((s.forces**2).sum(1)).max())
                progress.update(advance=1, note=f"max force {fm:.3g} kcal/mol/Å")

    atoms = Atoms(numbers=numbers, positions=positions)
    atoms.calc = OracleCalculator()
    opt = BFGS(atoms, logfile=None, maxstep=0.1)
    converged = bool(opt.run(fmax=fmax * kcal_to_ev, steps=max_steps))
    x = atoms.positions.copy()
    minimum = labeller.one(_structure(numbers, x, {"stage": "optimise"}), "optimise")
    return x, minimum, int(opt.nsteps), converged


def normal_modes(numbers, x0, labeller: Labeller, step: float, progress=None) -> NormalModes:
    """Central-difference Hessian of the oracle (2·3N labels), mass-weighted, translations/rotations out."""
    from ase.data import atomic_masses
    from scipy.linalg import null_space

    n = len(numbers)
    displaced = []
    for j in range(3 * n):
        for sign in (1.0, -1.0):
            x = x0.copy()
            x.reshape(-1)[j] += sign * step
            displaced.append(_structure(numbers, x, {"stage": "hessian", "coordinate": j, "sign": int(sign)}))
    out, records = labeller(displaced, "hessian")
    if any(s is None for s in out):
        bad = next(r for r in records if not r.ok)
        raise BuildError(f"{labeller.oracle.method}: a Hessian displacement failed: {bad.error}")
    if progress is not None:
        progress.update(completed=len(displaced))
    hess = np.empty((3 * n, 3 * n))
    for j in range(3 * n):
        fp, fm = out[2 * j].forces.reshape(-1), out[2 * j + 1].forces.reshape(-1)
        hess[:, j] = -(fp - fm) / (2.0 * step)  # kcal/mol/Å²
    hess = 0.5 * (hess + hess.T)
    m = atomic_masses[np.asarray(numbers)]
    sq = np.repeat(np.sqrt(m), 3)
    hm = hess / np.outer(sq, sq)
    com = (m[:, None] * x0).sum(0) / m.sum()
    r = x0 - com
    rigid = []
    for k in range(3):
        t = np.zeros((n, 3))
        t[:, k] = 1.0
        rigid.append((t * np.sqrt(m)[:, None]).reshape(-1))
        axis = np.zeros(3)
        axis[k] = 1.0
        rigid.append((np.cross(axis, r) * np.sqrt(m)[:, None]).reshape(-1))
    basis = null_space(np.array(rigid), rcond=1e-8)  # (3n, 3n - 6) internal motions
    lam, u = np.linalg.eigh(basis.T @ hm @ basis)
    if lam.min() <= 0:
        raise BuildError(f"the optimised structure is not a minimum: Hessian eigenvalue {lam.min():.3g} "
                         "kcal/mol/Å²/amu (tighten fmax)")
    modes_mw = (basis @ u).T  # (k, 3n), orthonormal in mass-weighted coordinates
    modes = (modes_mw / sq).reshape(len(lam), n, 3)
    ni = int(np.flatnonzero(np.asarray(numbers) == 7)[0])
    hs = [i for i in range(n) if i != ni]
    axis = x0[ni] - x0[hs].mean(0)
    axis /= np.linalg.norm(axis)
    overlap = [abs(float(modes[k, ni] @ axis)) / np.linalg.norm(modes[k]) for k in range(len(lam))]
    return NormalModes(eigenvalues=lam, frequencies=wavenumber(lam), modes=modes,
                       umbrella=int(np.argmax(overlap)), hessian=hess)


def inversion_path(numbers, x0, t: float) -> np.ndarray:
    """NH3 with each N-H bond's angle to the C3 axis moved from the minimum's (t = 0) through planarity
    (t = 0.5) to the mirror image (t = 1), N-H lengths fixed; t outside [0, 1] over-pyramidalises."""
    numbers = np.asarray(numbers)
    ni = int(np.flatnonzero(numbers == 7)[0])
    hs = [i for i in range(len(numbers)) if i != ni]
    n_pos = x0[ni]
    u = n_pos - x0[hs].mean(0)
    u /= np.linalg.norm(u)
    x = x0.copy()
    for i in hs:
        v = x0[i] - n_pos
        r = np.linalg.norm(v)
        beta0 = math.acos(float(np.clip(v @ -u / r, -1, 1)))
        w = v - (v @ u) * u
        w /= np.linalg.norm(w)
        beta = beta0 + t * (math.pi - 2.0 * beta0)
        x[i] = n_pos + r * (math.cos(beta) * -u + math.sin(beta) * w)
    return x
