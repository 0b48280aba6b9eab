"""What the data-set modules share: their errors and energy histograms."""

from __future__ import annotations

from ...core.errors import UqpotError


class FetchError(UqpotError):
    """A download that could not be made (no network, HTTP error); the message says what to do instead."""


class BuildError(UqpotError):
    """A data-set build that cannot go on (a failed reference calculation it depends on, bad options)."""


def energy_histogram(energies, edges) -> dict:
    """Counts of ``energies`` (kcal/mol) in the bins ``edges`` (kcal/mol), as JSON-ready lists."""
    import numpy as np

    counts, edges = np.histogram(np.asarray(energies, dtype=np.float64), bins=np.asarray(edges, dtype=np.float64))
    return {"edges_kcal_per_mol": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def format_histogram(hist: dict, width: int = 40) -> str:
    """A text histogram (one line per bin) of :func:`energy_histogram`'s output."""
    edges, counts = hist["edges_kcal_per_mol"], hist["counts"]
    top = max(counts) if counts and max(counts) > 0 else 1
    lines = []
    for lo, hi, c in zip(edges[:-1], edges[1:], counts):
        lines.append(f"  [{lo:8.2f}, {hi:8.2f}) {c:5d} {'#' * int(round(width * c / top))}")
    return "\n".join(lines)
