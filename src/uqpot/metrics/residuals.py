"""The inputs of the UQ metrics: one value per structure (U, ε), and force-component residuals given per
structure (a list of arrays), as an array whose first axis indexes structures, or flat; each metric checks
its inputs here (finite, one value per structure, matching lengths)."""

from __future__ import annotations

import numpy as np


def _vector(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one value per structure (1-D), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains non-finite values")
    return a


def _pair(uncertainty, error) -> tuple[np.ndarray, np.ndarray]:
    u = _vector(uncertainty, "uncertainty")
    e = _vector(error, "error")
    if u.shape != e.shape:
        raise ValueError(f"uncertainty and error differ in length: {u.shape[0]} vs {e.shape[0]}")
    if u.size < 2:
        raise ValueError("need at least two structures")
    return u, e


def _structure_list(residuals) -> list[np.ndarray] | None:
    """Per-structure residual arrays when ``residuals`` is a list/tuple (or object array), else None."""
    if isinstance(residuals, (list, tuple)) or (isinstance(residuals, np.ndarray) and residuals.dtype == object):
        return [np.asarray(r, dtype=float) for r in residuals]
    return None


def flatten_residuals(residuals) -> np.ndarray:
    """All force-component residuals as one flat float array (structure by structure, C order)."""
    parts = _structure_list(residuals)
    if parts is not None:
        flat = np.concatenate([p.ravel() for p in parts]) if parts else np.zeros(0)
    else:
        flat = np.asarray(residuals, dtype=float).ravel()
    if not np.all(np.isfinite(flat)):
        raise ValueError("residuals contain non-finite values")
    return flat


def per_component(values, residuals) -> np.ndarray:
    """Broadcast ``values`` (one per structure, one per component, or a scalar) to the flat component
    layout of :func:`flatten_residuals`.

    Rules: a scalar is repeated; an array with the total number of components (or, for a list of
    residual arrays, a list of arrays of matching sizes; for a numeric residual array, an array of its
    shape) is taken per component; an array with one value per structure (the first axis of a numeric
    residual array, the list entries otherwise) is repeated over that structure's components.
    """
    parts = _structure_list(residuals)
    if parts is not None:
        sizes = np.array([p.size for p in parts], dtype=int)
        v_parts = _structure_list(values) if isinstance(values, (list, tuple)) else None
        if v_parts is not None and len(v_parts) == len(parts) and all(
            vp.size == n for vp, n in zip(v_parts, sizes)
        ) and not all(vp.ndim == 0 for vp in v_parts):
            return np.concatenate([vp.ravel() for vp in v_parts]) if v_parts else np.zeros(0)
        v = np.asarray(values, dtype=float)
        if v.ndim == 0:
            return np.full(int(sizes.sum()), float(v))
        v = v.ravel()
        if v.size == len(parts):
            return np.repeat(v, sizes)
        if v.size == sizes.sum():
            return v
        raise ValueError(
            f"cannot match {v.size} values to {len(parts)} structures / {int(sizes.sum())} components"
        )
    r = np.asarray(residuals, dtype=float)
    v = np.asarray(values, dtype=float)
    if v.ndim == 0:
        return np.full(r.size, float(v))
    if v.shape == r.shape:
        return v.ravel()
    if v.ndim == 1 and r.ndim >= 1 and v.size == r.shape[0]:
        return np.repeat(v, r.size // max(r.shape[0], 1))
    if v.size == r.size:
        return v.ravel()
    raise ValueError(f"cannot broadcast values of shape {v.shape} to residuals of shape {r.shape}")


def _structure_stats(uncertainty, residuals) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U, n_i, S_i): per-structure uncertainty, number of components and sum of squared residuals.

    The first axis of a numeric residual array (or the list entries) indexes structures."""
    u = _vector(uncertainty, "uncertainty")
    parts = _structure_list(residuals)
    if parts is None:
        r = np.asarray(residuals, dtype=float)
        if r.ndim == 0 or r.shape[0] != u.size:
            raise ValueError(f"residuals of shape {r.shape} do not have one entry per structure ({u.size})")
        r = r.reshape(u.size, -1)
        n = np.full(u.size, r.shape[1], dtype=float)
        s = np.sum(r * r, axis=1)
    else:
        if len(parts) != u.size:
            raise ValueError(f"{len(parts)} residual arrays for {u.size} uncertainties")
        n = np.array([p.size for p in parts], dtype=float)
        s = np.array([np.sum(p * p) for p in parts], dtype=float)
    if not np.all(np.isfinite(s)):
        raise ValueError("residuals contain non-finite values")
    if np.any(n == 0):
        raise ValueError("a structure has no residual components")
    return u, n, s
