"""Kohn-Sham DFT through PySCF: the reference method (oracle) for molecules.

Any PySCF functional (``xc``), basis set and dispersion correction (``disp``, through pyscf-dispersion:
``"d3bj"``, ``"d3zero"``, ``"d4"``, ...), restricted (``spin=0``) or unrestricted (``spin>0``; ``spin`` is
2S, PySCF's convention), density fitting on by default.

Presets (``PySCFOracle.from_preset(name)`` or ``get_oracle("pyscf", preset=name)``):

* ``"bp86-d3bj/def2-svp"``: the ammonia data's level: ``dft.RKS(mol).density_fit()``, ``xc="bp86"``,
  ``disp="d3bj"`` (PySCF's default auxiliary basis and grid).
* ``"pbe/def2-svp"``: rMD17's level: density fitting with ``auxbasis="def2-universal-jfit"`` (RI-J, as
  the published labels), ``grids.level = 5``, ``conv_tol = 1e-10``.

The method string that keys the store is ``"pyscf:<xc>[-<disp>]/<basis>"`` followed by
``";key=value"`` for every result-changing setting (density fitting, auxbasis, grid level, conv_tol,
charge, spin) that differs from the preset of that name (or, where there is none, from PySCF's
defaults), so two different levels of theory never share a name.  ``method=`` overrides it.

Units: PySCF's energy (Hartree) and gradient (Hartree/Bohr) become energy in kcal/mol and forces
(−gradient) in kcal/mol/Å through :mod:`uqpot.core.units`.  A non-converged SCF (``mf.converged`` False)
is a failure; periodic structures are refused (a failure per structure).
"""

from __future__ import annotations

import numpy as np

from ..core.units import convert_energy, convert_force
from .base import BaseOracle, NotConverged, OracleError

#: PySCF's own defaults for the settings that enter the method string
PYSCF_DEFAULTS = {"density_fit": True, "auxbasis": None, "grid_level": None, "conv_tol": 1e-9,
                  "charge": 0, "spin": 0}

PRESETS: dict[str, dict] = {
    "bp86-d3bj/def2-svp": {"xc": "bp86", "basis": "def2-svp", "disp": "d3bj", "density_fit": True,
                           "auxbasis": None, "grid_level": None, "conv_tol": 1e-9},
    "pbe/def2-svp": {"xc": "pbe", "basis": "def2-svp", "disp": None, "density_fit": True,
                     "auxbasis": "def2-universal-jfit", "grid_level": 5, "conv_tol": 1e-10},
}

_UNSET = object()


def _base_name(xc: str, disp: str | None, basis: str) -> str:
    return f"{xc.lower()}{'-' + disp.lower() if disp else ''}/{basis.lower()}"


class PySCFOracle(BaseOracle):
    """DFT energies and forces from PySCF (kcal/mol, kcal/mol/Å)."""

    def __init__(self, xc: str, basis: str, *, disp: str | None = None, density_fit: bool = True,
                 auxbasis: str | None = None, grid_level: int | None = None, conv_tol: float = 1e-9,
                 max_cycle: int = 100, charge: int = 0, spin: int = 0, threads: int | None = None,
                 max_memory: int | None = None, method: str | None = None, retry_failures: bool = False):
        self.xc = str(xc)
        self.basis = str(basis)
        self.disp = disp or None
        self.density_fit = bool(density_fit)
        self.auxbasis = auxbasis
        self.grid_level = None if grid_level is None else int(grid_level)
        self.conv_tol = float(conv_tol)
        self.max_cycle = int(max_cycle)
        self.charge = int(charge)
        self.spin = int(spin)
        self.threads = None if threads is None else int(threads)
        self.max_memory = max_memory
        if self.max_cycle < 1:
            raise OracleError("max_cycle must be >= 1")
        super().__init__(method or self.default_method(), retry_failures=retry_failures)

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> "PySCFOracle":
        key = preset.lower().removeprefix("pyscf:")
        if key not in PRESETS:
            raise OracleError(f"unknown PySCF preset {preset!r}; known: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[key], **overrides})

    def settings(self) -> dict:
        return {"density_fit": self.density_fit, "auxbasis": self.auxbasis, "grid_level": self.grid_level,
                "conv_tol": self.conv_tol, "charge": self.charge, "spin": self.spin}

    def default_method(self) -> str:
        base = _base_name(self.xc, self.disp, self.basis)
        reference = {**PYSCF_DEFAULTS, **{k: v for k, v in PRESETS.get(base, {}).items()
                                          if k in PYSCF_DEFAULTS}}
        quals = []
        for k, v in self.settings().items():
            if v != reference[k]:
                quals.append(f"{k}={'default' if v is None else v}")
        return "pyscf:" + base + "".join(";" + q for q in quals)

    # -- one structure --------------------------------------------------------------------------------
    def build(self, structure):
        """The PySCF ``(mol, mf)`` for a structure (not yet run)."""
        from pyscf import dft, gto

        if structure.periodic:
            raise OracleError("the PySCF oracle labels molecules only (this structure is periodic)")
        mol = gto.Mole()
        mol.atom = [(int(z), tuple(float(x) for x in p)) for z, p in zip(structure.numbers, structure.positions)]
        mol.unit = "Angstrom"
        mol.basis = self.basis
        mol.charge = self.charge
        mol.spin = self.spin
        mol.verbose = 0
        if self.max_memory is not None:
            mol.max_memory = int(self.max_memory)
        mol.build()
        mf = dft.RKS(mol) if self.spin == 0 else dft.UKS(mol)
        mf.xc = self.xc
        if self.disp:
            mf.disp = self.disp
        if self.density_fit:
            mf = mf.density_fit(auxbasis=self.auxbasis)
        if self.grid_level is not None:
            mf.grids.level = self.grid_level
        mf.conv_tol = self.conv_tol
        mf.max_cycle = self.max_cycle
        mf.verbose = 0
        return mol, mf

    def compute(self, structure):
        from pyscf import lib

        def run():
            _, mf = self.build(structure)
            energy = mf.kernel()
            if not mf.converged:
                raise NotConverged(f"SCF not converged in {self.max_cycle} cycles (conv_tol {self.conv_tol:g})")
            grad = mf.nuc_grad_method().kernel()  # dE/dx, Hartree/Bohr
            return energy, np.asarray(grad)

        if self.threads is not None:
            with lib.with_omp_threads(self.threads):
                energy, grad = run()
        else:
            energy, grad = run()
        return (float(convert_energy(energy, "Hartree", "kcal/mol")),
                convert_force(-grad, "Hartree", "Bohr", "kcal/mol", "Å"))
