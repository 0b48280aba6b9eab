"""Nitrogen-inversion barrier of NH3 by the nudged elastic band (paper Fig. 3b and 3e).

The paper compares the inversion profile and barrier of each UQ method's potential with DFT (BP86-D3/def2-SVP)
in generations 1 and 3.  Here, with ASE's NEB (:class:`ase.mep.NEB`, climbing image, 11 images by default,
FIRE or BFGS):

1. the pyramidal NH3 minimum is built (N–H 1.012 Å, H–N–H 106.7°, C3 axis along z) and relaxed with the
   method; its mirror image (z → −z through the nitrogen) is the other minimum, relaxed as well;
2. the band is interpolated linearly between them (through the planar geometry) and relaxed with a climbing
   image (rotation and translation removed);
3. the profile E(image) − E(initial minimum) in kcal/mol, the path length in Å and the barrier
   max E − E(initial minimum) are returned (:class:`NEBResult`).

A method is any of: a uqpot model (Potential or UQ method; through
:class:`~uqpot.md.calculator.UQPotCalculator` for the endpoints' relaxation and
:mod:`uqpot.md.band`, every image of the band in one model call, for the band), a uqpot oracle (``uqpot.oracle``: PySCF, tblite, any
:class:`~uqpot.oracle.ase.ASEOracle`; through :class:`OracleCalculator`), an ASE calculator (shared by the
images) or a zero-argument factory of ASE calculators (one per image).  ASE works in eV and Å; results are
converted to kcal/mol with :mod:`uqpot.core.units`.  ``fmax`` values are in eV/Å (ASE's unit; 0.01 eV/Å ≈
0.23 kcal/mol/Å).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from ..core.units import EV_TO_KCAL_PER_MOL
from .band import attach_band

OPTIMIZERS = ("FIRE", "BFGS")


class OracleCalculator(Calculator):
    """An ASE calculator (eV, eV/Å) on top of a uqpot oracle's ``compute(structure)`` (kcal/mol,
    kcal/mol/Å); a failed calculation raises (NEB cannot go on without it)."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, oracle, **kwargs):
        super().__init__(**kwargs)
        self.oracle = oracle

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        from ..data.structures import Structure

        super().calculate(atoms, properties, system_changes)
        s = Structure.from_atoms(self.atoms)
        energy, forces = self.oracle.compute(s)
        self.results["energy"] = self.results["free_energy"] = float(energy) / EV_TO_KCAL_PER_MOL
        self.results["forces"] = np.asarray(forces, dtype=np.float64) / EV_TO_KCAL_PER_MOL


def calculator_factory(method) -> tuple[Callable[[], Calculator], bool]:
    """``(factory, shared)``: how to give each image a calculator for ``method`` (see the module docstring);
    ``shared`` says whether the factory returns the same object every time."""
    from ..oracle.base import BaseOracle
    from .calculator import UQPotCalculator

    if isinstance(method, Calculator):
        return (lambda: method), True
    if isinstance(method, torch.nn.Module):
        calc = UQPotCalculator(method, energy_unit="eV")
        return (lambda: calc), True
    if isinstance(method, BaseOracle):
        return (lambda: OracleCalculator(method)), False
    if callable(method):
        return method, False
    raise TypeError(f"cannot make an ASE calculator from {method!r}")


def nh3_pyramid(bond: float = 1.012, angle_deg: float = 106.7) -> Atoms:
    """Pyramidal NH3 (N at the origin, C3 axis along +z, H below), bond in Å, H–N–H angle in degrees."""
    theta = math.radians(angle_deg)
    # H–H distance d = 2 r sin(θ/2); the H ring radius ρ = d / √3; height h = √(r² − ρ²)
    rho = 2.0 * bond * math.sin(theta / 2.0) / math.sqrt(3.0)
    h = math.sqrt(bond ** 2 - rho ** 2)
    pos = [[0.0, 0.0, 0.0]] + [[rho * math.cos(2 * math.pi * k / 3), rho * math.sin(2 * math.pi * k / 3), -h]
                               for k in range(3)]
    return Atoms("NH3", positions=pos)


def mirror(atoms: Atoms, axis: int = 2) -> Atoms:
    """The mirror image through the plane normal to ``axis`` containing atom 0 (the inverted umbrella)."""
    out = atoms.copy()
    out.calc = None
    pos = out.positions.copy()
    pos[:, axis] = 2.0 * pos[0, axis] - pos[:, axis]
    out.positions = pos
    return out


def _optimizer(name: str):
    from ase.optimize import BFGS, FIRE

    try:
        return {"FIRE": FIRE, "BFGS": BFGS}[name.upper()]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}") from None


def relax(atoms: Atoms, calculator: Calculator, fmax: float = 0.005, steps: int = 1000,
          optimizer: str = "BFGS") -> tuple[Atoms, bool]:
    """A relaxed copy of ``atoms`` (fmax in eV/Å) and whether it converged."""
    a = atoms.copy()
    a.calc = calculator
    opt = _optimizer(optimizer)(a, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    return a, converged


@dataclass
class NEBResult:
    """A relaxed band: energies (kcal/mol) relative to the initial minimum, along ``path`` (Å)."""

    energies: np.ndarray  # (n_images,) kcal/mol, E − E(initial)
    path: np.ndarray  # (n_images,) Å, cumulative distance along the band
    barrier: float  # kcal/mol: max E − E(initial)
    barrier_reverse: float  # kcal/mol: max E − E(final)
    saddle_index: int
    converged: bool
    steps: int
    fmax: float  # eV/Å of the final band
    images: list = field(repr=False, default_factory=list)
    endpoints_converged: tuple = (True, True)
    absolute_energy_initial: float = float("nan")  # kcal/mol, the method's own frame

    def as_dict(self) -> dict:
        return {"energies_kcal_mol": [float(e) for e in self.energies], "path_angstrom": [float(p) for p in self.path],
                "barrier_kcal_mol": float(self.barrier), "barrier_reverse_kcal_mol": float(self.barrier_reverse),
                "saddle_index": int(self.saddle_index), "converged": bool(self.converged), "steps": int(self.steps),
                "fmax_eV_per_angstrom": float(self.fmax), "endpoints_converged": list(self.endpoints_converged),
                "absolute_energy_initial_kcal_mol": float(self.absolute_energy_initial)}


def run_neb(initial: Atoms, final: Atoms, method, *, n_images: int = 11, climb: bool = True,
            optimizer: str = "FIRE", fmax: float = 0.01, steps: int = 2000, k: float = 0.1,
            interpolation: str = "linear", remove_rotation_and_translation: bool = True,
            neb_method: str = "improvedtangent") -> NEBResult:
    """NEB between two (relaxed) endpoints with ``n_images`` images in total (endpoints included).

    ``fmax`` (eV/Å) is the convergence threshold of the band; ``k`` the spring constant (eV/Å²);
    ``interpolation`` ``"linear"`` or ``"idpp"``."""
    from ase.mep import NEB

    if n_images < 3:
        raise ValueError("a band needs at least 3 images")
    images = [initial.copy()] + [initial.copy() for _ in range(n_images - 2)] + [final.copy()]
    if isinstance(method, torch.nn.Module):  # a uqpot model: the whole band in one call (uqpot.md.band)
        attach_band(method, images)
        shared = False
    else:
        factory, shared = calculator_factory(method)
        for im in images:
            im.calc = factory()
    neb = NEB(images, k=k, climb=climb, remove_rotation_and_translation=remove_rotation_and_translation,
              method=neb_method, allow_shared_calculator=shared)
    neb.interpolate(method=interpolation)
    opt = _optimizer(optimizer)(neb, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    energies = np.array([im.get_potential_energy() for im in images]) * EV_TO_KCAL_PER_MOL
    pos = np.array([im.positions for im in images])
    path = np.concatenate([[0.0], np.cumsum(np.linalg.norm((pos[1:] - pos[:-1]).reshape(len(images) - 1, -1), axis=1))])
    rel = energies - energies[0]
    top = int(np.argmax(energies))
    fmax_now = float(np.sqrt((neb.get_forces() ** 2).sum(axis=1).max())) if len(images) > 2 else 0.0
    snapshots = []
    for im in images:
        a = im.copy()
        a.calc = None
        snapshots.append(a)
    return NEBResult(energies=rel, path=path, barrier=float(energies[top] - energies[0]),
                     barrier_reverse=float(energies[top] - energies[-1]), saddle_index=top, converged=converged,
                     steps=int(opt.nsteps), fmax=fmax_now, images=snapshots,
                     absolute_energy_initial=float(energies[0]))


def nh3_inversion_barrier(method, *, n_images: int = 11, climb: bool = True, optimizer: str = "FIRE",
                          fmax: float = 0.01, steps: int = 2000, relax_fmax: float = 0.005,
                          start: Atoms | None = None, **neb_options: Any) -> NEBResult:
    """The NH3 nitrogen-inversion profile and barrier (kcal/mol) of ``method`` (paper Fig. 3b/3e).

    Both minima (``start``, default :func:`nh3_pyramid`, and its mirror image) are relaxed with the method
    (BFGS, ``relax_fmax`` eV/Å), then the climbing-image band is relaxed (``optimizer``, ``fmax`` eV/Å)."""
    factory, _ = calculator_factory(method)
    left0 = nh3_pyramid() if start is None else start.copy()
    left, ok_left = relax(left0, factory(), fmax=relax_fmax, steps=steps)
    right, ok_right = relax(mirror(left), factory(), fmax=relax_fmax, steps=steps)
    left.calc = right.calc = None
    res = run_neb(left, right, method, n_images=n_images, climb=climb, optimizer=optimizer, fmax=fmax,
                  steps=steps, **neb_options)
    res.endpoints_converged = (ok_left, ok_right)
    return res
