"""Selection in feature space: candidates chosen for diversity in the model's own features.

Beside the geometric rule of :func:`uqpot.sample.trust.pick_diverse` (the most uncertain frames first, each
at least ``min_distance`` Å from those taken), ``selection: features`` picks by greedy farthest-point
sampling in the model's last-layer features, as apax and ALEBREW select:

* a structure's feature vector: per element, the mean over its atoms (and over an ensemble's members) of the
  invariant per-atom features ξ that feed the readout (:data:`uqpot.core.fields.FEATURES`), concatenated over the
  model's elements (zeros for an element the structure lacks): invariant to rotation, translation and the
  exchange of like atoms;
* every coordinate scaled by its standard deviation over the training structures (so that no feature
  dominates by its units);
* the first pick is the most uncertain frame (highest U); each next pick is the frame farthest (Euclidean,
  scaled features) from everything already known: the training structures and the frames picked so far
  (ties: the higher U).  So the oracle's budget goes to frames unlike each other *and* unlike the data.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core import fields as F
from ..data.batch import collate


@torch.no_grad()
def feature_vectors(model, structures, batch_size: int = 32) -> np.ndarray:
    """(n, n_elements · D): per element, the mean last-layer feature of the structure's atoms (module
    docstring)."""
    net = getattr(model, "potential", model)
    elements = list(net.elements())
    out = []
    for start in range(0, len(structures), batch_size):
        chunk = list(structures[start:start + batch_size])
        b = collate(chunk, cutoff=model.cutoff, dtype=model.dtype, device=model.device)
        xi = net.forward_members(b, compute_forces=False)[F.FEATURES].mean(0).double().cpu().numpy()  # (N, D)
        numbers, index = b.numbers.cpu().numpy(), b.batch.cpu().numpy()
        for s in range(len(chunk)):
            parts = []
            for z in elements:
                mask = (index == s) & (numbers == z)
                parts.append(xi[mask].mean(0) if mask.any() else np.zeros(xi.shape[1]))
            out.append(np.concatenate(parts))
    return np.asarray(out)


def farthest_point(candidates: np.ndarray, score: np.ndarray, max_picks: int,
                   reference: np.ndarray | None = None) -> list[int]:
    """Greedy farthest-point picks among ``candidates`` (n, d): the highest ``score`` first, then each time
    the candidate whose distance to the nearest of ``reference`` (m, d) and the picks so far is largest
    (ties: higher score).  Returns candidate indices in the order picked."""
    cand = np.asarray(candidates, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    n = len(cand)
    if n == 0 or max_picks < 1:
        return []
    nearest = np.full(n, np.inf)
    if reference is not None and len(reference):
        ref = np.asarray(reference, dtype=np.float64)
        nearest = np.sqrt(((cand[:, None, :] - ref[None, :, :]) ** 2).sum(-1)).min(1)
    picked = [int(np.lexsort((np.arange(n), -score))[0])]
    taken = np.zeros(n, dtype=bool)
    taken[picked[0]] = True
    while len(picked) < min(max_picks, n):
        d = np.sqrt(((cand - cand[picked[-1]]) ** 2).sum(-1))
        nearest = np.minimum(nearest, d)
        key = np.where(taken, -np.inf, nearest)
        best = np.flatnonzero(key == key.max())
        k = int(best[np.argmax(score[best])])
        picked.append(k)
        taken[k] = True
    return picked


def pick_in_feature_space(model, frames: list, score: np.ndarray, max_picks: int, train) -> tuple[list[int], list[dict]]:
    """The frames (dicts with ``positions``, ``numbers``, ``cell``, ``pbc``) picked by :func:`farthest_point`
    on scaled feature vectors, the training structures ``train`` as the reference; a reason for each left."""
    from ..data.structures import Structure

    if not frames:
        return [], []
    structs = [Structure(np.asarray(f["numbers"]), np.asarray(f["positions"], dtype=np.float64),
                         np.asarray(f["cell"], dtype=np.float64), np.asarray(f["pbc"])) for f in frames]
    ref = feature_vectors(model, list(train))
    cand = feature_vectors(model, structs)
    scale = ref.std(0) if len(ref) > 1 else np.ones(ref.shape[1])
    scale = np.where(scale > 1e-12, scale, 1.0)
    picked = farthest_point(cand / scale, score, max_picks, ref / scale)
    chosen = set(picked)
    left = [{"frame": k, "reason": "budget reached (feature-space selection)"} for k in range(len(frames))
            if k not in chosen]
    return picked, left
