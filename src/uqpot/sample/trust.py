"""Trust levels in force units, turned into each method's U through its stored calibration, and the
picking of diverse candidates from MD frames.

Every UQ model trained by uqpot stores the calibration of its U on the validation set (paper Eq. 13):
σ²(U) = a·U + b per force component (kcal/mol/Å)², not extrapolated below ``floor`` (the variance at the
lowest validation U).  A trust band [σ_lo, σ_hi] in kcal/mol/Å is therefore the band
U_lo = (σ_lo² − b)/a ≤ U < U_hi = (σ_hi² − b)/a in the method's own unit, so the same setting means the
same thing for an ensemble (U = σ²_F), LLPR, a GMM (U = NLL) or MVE: the frames whose calibrated force
error scale lies between the two levels.  This is DP-GEN's rule (frames whose ensemble force deviation lies
between two trust levels are labelled: below, the model is already right; above, the frame is likely
unphysical) made method-agnostic by the calibration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Calibration:
    """σ²(U) = max(a·U + b, floor), (kcal/mol/Å)² per force component."""

    a: float
    b: float
    floor: float = 0.0

    @classmethod
    def from_extra(cls, extra: dict, where: str = "the model file") -> "Calibration":
        cal = (extra or {}).get("calibration")
        if not cal:
            raise ValueError(f"{where} has no stored calibration of its uncertainty (σ² = a·U + b); the md "
                             "samplers set their trust levels through it: train or wrap the UQ model with uqpot")
        return cls(float(cal["a"]), float(cal["b"]), float(cal.get("floor") or 0.0))

    def variance(self, u):
        return np.maximum(self.a * np.asarray(u, dtype=np.float64) + self.b, self.floor)

    def sigma(self, u):
        """Calibrated σ_F (kcal/mol/Å) of U."""
        return np.sqrt(np.maximum(self.variance(u), 0.0))

    def u_of_sigma(self, sigma: float) -> float:
        """The lowest U whose calibrated σ_F reaches ``sigma`` (σ is non-decreasing in U): −inf when the
        floor already reaches it (every U is that uncertain), +inf when no U does (a = 0)."""
        s2 = float(sigma) ** 2
        if self.a > 0:
            return -math.inf if self.floor >= s2 else (s2 - self.b) / self.a
        return -math.inf if max(self.b, self.floor) >= s2 else math.inf


@dataclass(frozen=True)
class TrustBand:
    """The trust band in force units (kcal/mol/Å) and in U."""

    sigma_lo: float
    sigma_hi: float
    u_lo: float
    u_hi: float

    @classmethod
    def from_calibration(cls, sigma_lo: float, sigma_hi: float, cal: Calibration) -> "TrustBand":
        if not 0 <= sigma_lo < sigma_hi:
            raise ValueError(f"trust levels need 0 <= trust_lo < trust_hi (got {sigma_lo}, {sigma_hi} kcal/mol/Å)")
        return cls(float(sigma_lo), float(sigma_hi), cal.u_of_sigma(sigma_lo), cal.u_of_sigma(sigma_hi))

    def inside(self, u) -> np.ndarray:
        u = np.asarray(u, dtype=np.float64)
        return (u >= self.u_lo) & (u < self.u_hi)


def fingerprint(positions: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    """A molecule's sorted interatomic distances per element pair, concatenated: invariant to translation,
    rotation and the exchange of like atoms."""
    z = np.asarray(numbers)
    i, j = np.triu_indices(len(z), k=1)
    d = np.linalg.norm(positions[i] - positions[j], axis=1)
    key = np.minimum(z[i], z[j]) * 1000 + np.maximum(z[i], z[j])
    order = np.lexsort((d, key))
    return d[order]


def structural_distance(a: np.ndarray, b: np.ndarray, *, numbers, cell=None, pbc=None) -> float:
    """Å.  Molecules: RMS difference of the :func:`fingerprint` distances; periodic cells (same atoms, same
    cell): RMS minimum-image displacement between the two frames."""
    if pbc is not None and np.any(pbc):
        d = b - a
        frac = np.linalg.solve(np.asarray(cell).T, d.T).T
        frac[:, np.asarray(pbc)] -= np.round(frac[:, np.asarray(pbc)])
        d = frac @ np.asarray(cell)
        return float(np.sqrt(np.mean((d ** 2).sum(-1))))
    fa, fb = fingerprint(a, numbers), fingerprint(b, numbers)
    return float(np.sqrt(np.mean((fa - fb) ** 2)))


def pick_diverse(frames: list[dict], score: np.ndarray, max_picks: int, min_distance: float) -> tuple[list[int], list[dict]]:
    """Greedy: frames by decreasing ``score``; a frame is taken if it is at least ``min_distance`` (Å,
    :func:`structural_distance`) from every frame taken so far, until ``max_picks``.  ``frames``: dicts with
    ``positions``, ``numbers``, ``cell``, ``pbc``.  Returns the picked indices and a reason for each frame
    left out."""
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")
    picked, left = [], []
    for k in order:
        f = frames[k]
        if len(picked) >= max_picks:
            left.append({"frame": int(k), "reason": "budget reached"})
            continue
        near = None
        for p in picked:
            g = frames[p]
            if len(g["numbers"]) == len(f["numbers"]) and np.array_equal(g["numbers"], f["numbers"]):
                if structural_distance(g["positions"], f["positions"], numbers=f["numbers"], cell=f["cell"],
                                       pbc=f["pbc"]) < min_distance:
                    near = p
                    break
        if near is not None:
            left.append({"frame": int(k), "reason": f"within {min_distance} Å of picked frame {near}"})
            continue
        picked.append(int(k))
    return picked, left
