"""Reference methods (oracles) that label structures with energies (kcal/mol) and forces (kcal/mol/Å).

``get_oracle(name, **options)`` builds one from a config:

* ``"pyscf"``: :class:`~uqpot.oracle.pyscf.PySCFOracle`; ``preset="bp86-d3bj/def2-svp"`` or
  ``"pbe/def2-svp"`` and/or ``xc``, ``basis``, ``disp``, ``density_fit``, ``auxbasis``, ``grid_level``,
  ``conv_tol``, ``max_cycle``, ``charge``, ``spin``, ``threads``, ``max_memory``.  ``"pyscf:<preset>"``
  is short for ``"pyscf"`` with that preset.
* ``"ase"``: :class:`~uqpot.oracle.ase.ASEOracle`; ``calculator`` (import path such as
  ``"tblite.ase.TBLite"``), ``kwargs`` (its keyword arguments), ``energy_unit``, ``reuse_calculator``,
  ``threads``.
* ``"tblite"``: an ASE oracle on ``tblite.ase.TBLite``; ``xtb`` (``"GFN2-xTB"``, ``"GFN1-xTB"``) and
  tblite's own keyword arguments (``charge``, ``multiplicity``, ``accuracy``, ``max_iterations``, ...);
  ``threads``.
* ``"bks"``: :class:`~uqpot.oracle.bks.BKSOracle` (silica through LAMMPS); ``wall``, ``coulomb_cutoff``,
  ``ewald_accuracy``.

Every oracle also takes ``method`` (the level-of-theory string that keys the store) and
``retry_failures``.  Unknown options are errors.
"""

from __future__ import annotations

from ..core.errors import ConfigError
from ..core.units import UnitError
from .base import BaseOracle, LabelRecord, LabelResult, NotConverged, Oracle, OracleError

#: keyword arguments of tblite's calculator that do not change its results (left out of the method name)
_TBLITE_QUIET = {"verbosity"}


def tblite_oracle(xtb: str = "GFN2-xTB", *, method: str | None = None, threads: int | None = None,
                  retry_failures: bool = False, **calc_kwargs):
    """GFN-xTB through tblite's ASE calculator (a fast oracle for tests and quick loops).

    ``calc_kwargs`` go to ``tblite.ase.TBLite``; ``threads`` caps its OpenMP threads.
    """
    from .ase import ASEOracle

    kwargs = {"method": xtb, "verbosity": 0, **calc_kwargs}
    quals = "".join(f";{k}={v}" for k, v in sorted(calc_kwargs.items()) if k not in _TBLITE_QUIET)
    return ASEOracle("tblite.ase.TBLite", kwargs, method=method or f"tblite:{xtb.lower()}{quals}",
                     threads=threads, retry_failures=retry_failures)


def _pyscf(preset: str | None = None, **options):
    from .pyscf import PySCFOracle

    if preset is not None:
        return PySCFOracle.from_preset(preset, **options)
    return PySCFOracle(**options)


def _ase(calculator, kwargs: dict | None = None, **options):
    from .ase import ASEOracle

    return ASEOracle(calculator, kwargs, **options)


def _bks(**options):
    from .bks import BKSOracle

    return BKSOracle(**options)


FACTORIES = {"pyscf": _pyscf, "ase": _ase, "tblite": tblite_oracle, "bks": _bks}


def get_oracle(name: str, **options) -> BaseOracle:
    """An oracle by name (``pyscf``, ``ase``, ``tblite``, ``bks``; ``pyscf:<preset>``) from config options."""
    key = str(name).lower()
    if key.startswith("pyscf:"):
        if "preset" in options:
            raise ConfigError(None, f"oracle {name!r} names its preset; do not also pass preset=")
        options = {"preset": key.split(":", 1)[1], **options}
        key = "pyscf"
    if key not in FACTORIES:
        raise ConfigError(None, f"unknown oracle {name!r}; known: {', '.join(FACTORIES)} (or pyscf:<preset>)")
    factory = FACTORIES[key]
    try:
        return factory(**options)
    except TypeError as e:
        if "argument" in str(e):  # an unknown, missing or duplicated option
            raise ConfigError(None, f"oracle {name!r}: {e}; see help(uqpot.oracle)") from None
        raise
    except (OracleError, UnitError) as e:  # a calculator that cannot be imported, an option it would ignore
        raise ConfigError(None, f"oracle {name!r}: {e}") from None


def oracle_from_config(config: dict) -> BaseOracle:
    """An oracle from a mapping ``{"name": ..., **options}`` (a config section)."""
    config = dict(config)
    try:
        name = config.pop("name")
    except KeyError:
        raise ConfigError(None, "an oracle config needs 'name' (pyscf, ase, tblite, bks)") from None
    return get_oracle(name, **config)


__all__ = ["Oracle", "BaseOracle", "LabelResult", "LabelRecord", "OracleError", "NotConverged", "get_oracle",
           "oracle_from_config", "tblite_oracle"]
