"""A hint when the reference data of an evaluation look as if they were in another energy unit than declared.

A file of energies in eV read as kcal/mol gives an energy MAE of ~9e4 kcal/mol on rMD17 ethanol, reported
without a word unless something compares the magnitudes.  The heuristic: for every other known energy unit
u, rescale the reference energies (and forces) from the declared unit to u and compare the model's error
before and after.  If one rescaling divides the error by at least ``GAIN`` (and the error was large to start
with), the data are very likely in u: a warning names u and the option that declares it.  A model that is
merely poor does not trigger it (a rescaling by 23 or 627 does not make a poor model good), and it needs no
minimum number of structures, so it also catches the one-frame file that the consistency check of
:func:`uqpot.data.io.check_unit_consistency` (which needs pairs of nearby frames) cannot judge.
"""

from __future__ import annotations

import numpy as np

from .units import ENERGY_UNITS

#: how much a rescaling must reduce the error to count as evidence of a unit mix-up
GAIN = 5.0
#: units of the same factor under another name are not alternatives of each other
_CANONICAL = {"Ha": "Hartree"}


def _mae(a, b) -> float:
    return float(np.mean(np.abs(np.asarray(a, float) - np.asarray(b, float))))


def energy_unit_hint(e_pred, e_true, f_pred, f_true, declared: str, option: str = "--energy-unit") -> str | None:
    """A warning sentence when the data look like another energy unit than ``declared``, else None.

    ``e_*`` per structure (kcal/mol, as read with ``declared``), ``f_*`` lists of (n, 3) arrays."""
    e_pred, e_true = np.asarray(e_pred, float), np.asarray(e_true, float)
    if not len(e_true) or not np.all(np.isfinite(e_pred)):
        return None
    fp = np.concatenate([np.asarray(f).ravel() for f in f_pred]) if len(f_pred) else np.zeros(0)
    ft = np.concatenate([np.asarray(f).ravel() for f in f_true]) if len(f_true) else np.zeros(0)
    base_e = _mae(e_pred, e_true)
    base_f = _mae(fp, ft) if len(ft) else 0.0
    d = ENERGY_UNITS[declared]
    best = None
    for unit, factor in ENERGY_UNITS.items():
        if unit in _CANONICAL or np.isclose(factor, d):
            continue
        r = factor / d  # values declared in `declared` but really in `unit`: multiply by r
        gain_e = base_e / max(_mae(e_pred, e_true * r), 1e-12)
        gain_f = base_f / max(_mae(fp, ft * r), 1e-12) if len(ft) else 1.0
        # energies carry the evidence (their absolute scale is fixed by the model's reference energies)
        if gain_e >= GAIN and base_e > 1.0 and (best is None or gain_e > best[1]):
            best = (unit, gain_e, r, gain_f)
    if best is None:
        return None
    unit, _, r, gain_f = best
    forces = "; the forces agree" if gain_f >= GAIN else ""  # a poorly trained model's forces tell little
    return (f"the reference energies look like {unit}, not the declared {declared}: rescaled by {r:.4g} their MAE "
            f"against the model would fall from {base_e:.4g} to {_mae(e_pred, e_true * r):.4g} kcal/mol{forces}; if "
            f"they are in {unit}, declare it ({option} {unit})")
