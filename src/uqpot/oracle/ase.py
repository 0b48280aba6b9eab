"""Any ASE calculator as an oracle.

``ASEOracle("tblite.ase.TBLite", {"method": "GFN2-xTB"})`` imports the calculator class (or any callable
that returns a calculator) from its dotted path and builds it with the keyword arguments.  ASE
calculators work in eV and eV/Å; the oracle converts to kcal/mol and kcal/mol/Å through
:mod:`uqpot.core.units` (``energy_unit`` declares another energy unit for an unusual calculator; lengths are
Å, ASE's convention).

The default method string is ``"ase:<path>(k=v,...)"`` with the keyword arguments sorted; pass
``method=`` to name it yourself (e.g. to leave out arguments that do not change the results).

By default a fresh calculator is built for every structure, so a label never depends on what was
computed before it (tblite, for one, starts its SCF from the previous wavefunction: reusing it makes
forces depend on the labelling order at the 1e-3 kcal/mol/Å level).  ``reuse_calculator=True`` keeps one
calculator per oracle object and process (for deterministic, expensive-to-start calculators such as
LAMMPS); after an exception it is rebuilt, so one failed structure cannot poison the next.

``threads`` caps the OpenMP/BLAS threads of the calculation (through threadpoolctl); on a machine
shared with other work an uncapped OpenMP calculator (tblite) can run 100x slower.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import numpy as np

from ..core.units import convert_energy, convert_force
from .base import BaseOracle, OracleError


def import_object(path: str):
    """``"package.module.Name"`` (or ``"package.module:Name"``) → the object."""
    if ":" in path:
        module, _, name = path.partition(":")
    else:
        module, _, name = path.rpartition(".")
    if not module or not name:
        raise OracleError(f"{path!r} is not an import path like 'package.module.Name'")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise OracleError(f"cannot import {module!r} for calculator {path!r}: {e}") from None
    try:
        return getattr(mod, name)
    except AttributeError:
        raise OracleError(f"module {module!r} has no {name!r}") from None


def known_kwargs(factory) -> set[str]:
    """The keyword arguments ``factory`` declares: its signature's names and, for an ASE calculator, its
    ``default_parameters`` and those of ASE's ``Calculator``."""
    import inspect

    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return set()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = {n for n, p in params.items() if p.kind in kinds} - {"self"}
    from ase.calculators.calculator import Calculator

    if isinstance(factory, type) and issubclass(factory, Calculator):
        names |= set(getattr(factory, "default_parameters", {}) or {})
        names |= set(inspect.signature(Calculator.__init__).parameters) - {"self", "kwargs"}
    return names


def unused_kwargs(factory, kwargs: dict) -> list[str]:
    """Keyword arguments that ``factory`` would not use: names outside its signature when it takes no
    ``**kwargs``; for an ASE calculator that takes ``**kwargs`` and declares its parameters
    (``default_parameters``: EMT, Lennard-Jones, tblite, ...), names it does not declare (ASE stores any
    keyword without checking it, so a misspelt one is silently ignored).  Calculators that declare nothing
    (VASP checks its own keywords) are not second-guessed."""
    import inspect

    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return []
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        from ase.calculators.calculator import Calculator

        declares = (isinstance(factory, type) and issubclass(factory, Calculator)
                    and bool(getattr(factory, "default_parameters", None)))
        if not declares:
            return []
    return sorted(set(kwargs) - known_kwargs(factory))


def _kw_repr(kwargs: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(kwargs.items()))


class ASEOracle(BaseOracle):
    """Energies and forces from an ASE calculator, converted to kcal/mol and kcal/mol/Å."""

    _transient = ("_calc",)

    def __init__(self, calculator: str | Callable[..., Any], kwargs: dict | None = None, *,
                 method: str | None = None, energy_unit: str = "eV", reuse_calculator: bool = False,
                 threads: int | None = None, retry_failures: bool = False):
        self.calculator = calculator
        self.kwargs = dict(kwargs or {})
        self.energy_unit = energy_unit
        self.reuse_calculator = bool(reuse_calculator)
        self.threads = None if threads is None else int(threads)
        convert_energy(1.0, energy_unit, "kcal/mol")  # validates the unit
        if isinstance(calculator, str):
            factory = import_object(calculator)  # fail at construction on a wrong path, not per structure
            name = calculator
            unknown = unused_kwargs(factory, self.kwargs)
            if unknown:
                raise OracleError(f"kwargs: {', '.join(map(repr, unknown))} not among the keyword arguments of "
                                  f"{calculator} ({', '.join(sorted(known_kwargs(factory)))}); the calculator would "
                                  "ignore it")
        elif callable(calculator):
            name = f"{getattr(calculator, '__module__', '?')}.{getattr(calculator, '__qualname__', calculator)}"
        else:
            raise OracleError(f"calculator must be an import path or a callable, got {calculator!r}")
        self._calc = None
        super().__init__(method or f"ase:{name}({_kw_repr(self.kwargs)})", retry_failures=retry_failures)

    def make_calculator(self):
        factory = import_object(self.calculator) if isinstance(self.calculator, str) else self.calculator
        return factory(**self.kwargs)

    def _calculator(self):
        if self._calc is None:
            self._calc = self.make_calculator()
        return self._calc

    def _release(self) -> None:
        calc, self._calc = self._calc, None
        if calc is not None and hasattr(calc, "clean"):
            try:
                calc.clean()
            except Exception:  # noqa: BLE001
                pass

    def prepare_atoms(self, structure):
        """The ``ase.Atoms`` handed to the calculator (geometry only; subclasses may add e.g. charges)."""
        return _bare_atoms(structure)

    def compute(self, structure):
        if self.threads is None:
            return self._compute(structure)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=self.threads):
            return self._compute(structure)

    def _compute(self, structure):
        atoms = self.prepare_atoms(structure)
        try:
            atoms.calc = self._calculator()
            energy = atoms.get_potential_energy()
            forces = np.array(atoms.get_forces(), dtype=np.float64)
            stress = None
            if bool(np.all(atoms.pbc)) and "stress" in getattr(atoms.calc, "implemented_properties", ()):
                stress = np.array(atoms.get_stress(voigt=False), dtype=np.float64)
        except Exception:
            self._release()
            raise
        finally:
            atoms.calc = None
            if not self.reuse_calculator:
                self._release()
        e = float(convert_energy(energy, self.energy_unit, "kcal/mol"))
        f = convert_force(forces, self.energy_unit, "Å", "kcal/mol", "Å")
        if stress is None:
            return e, f
        # energy per Å³: the energy conversion only (lengths are Å on both sides)
        return e, f, stress * float(convert_energy(1.0, self.energy_unit, "kcal/mol"))


def _bare_atoms(structure):
    from ase import Atoms

    return Atoms(numbers=structure.numbers, positions=structure.positions, cell=structure.cell,
                 pbc=structure.pbc)
