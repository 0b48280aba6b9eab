"""Batch orders of a stacked ensemble's members: one shared permutation per epoch, or each member its own.

M networks trained separately each shuffle the training set with their own generator; a stacked ensemble
trained on one batch per step shares one order, which correlates the members.  ``train.member_order``:

* ``independent``: member m draws its permutation from ``default_rng(seed_m)`` (its own seed, the generator a
  single network with that seed would use), so member m sees exactly the batches it would see alone, and the
  M members are still trained in one stacked call: the M batches of a step are stacked along the member axis
  (positions (M, N, 3), energies (M, B), forces (M, N, 3)) on the dense layout.  That needs every training
  structure to be the same molecule (same atoms in the same order, no cell), which rMD17 and NH3 are: then
  the M batches share atoms, batch index and pair grid and differ only in positions and labels;
* ``shared``: one permutation for all members (what the trainer did before);
* ``auto`` (default): ``independent`` where the data allows it, else ``shared``.

A single network (M = 1) takes the same path where the data allows it: its batches, drawn from its seed as
before, go through the stacked (dense) layout with a member axis of one, as each member of an ensemble's and
each replicate of a stacked study's (:mod:`uqpot.fit.replicates`) do.  One path for every method and every
replicate matters more than it seems: Adam normalises each gradient component, so a component near zero
whose sign a rounding difference flips moves its weight by a whole learning rate at once; two paths that
sum in other orders (the edge list against the dense grid, a position tensor with or without its member
axis) then part within tens of steps (measured: the same MVE seed on the two layouts, float64, 30 epochs of
the quick ammonia preset, test force MAE 4.89 against 8.38 kcal/mol/Å), while one path gives bit-identical
networks however many members or replicates share the stack.

Measured (``benchmarks/ensemble_diversity.py --ood 5.0``, 5 members, NH3: 70 geometries below 5 kcal/mol
for training, 17 for validation, 51 above for testing, 500 epochs, lr 5e-4, seeds 0, 10, 20): one shared
order gives Spearman 0.666 [0.347, 0.985], separately trained members 0.830 [0.726, 0.935] (per seed +0.16,
+0.00, +0.33; paired difference +0.165 [-0.241, 0.570]), ROC-AUC (20th percentile) 0.805 against 0.873,
force MAE 7.47 against 7.48 kcal/mol/Å.  Three seeds do not make the gain significant, but it never goes the
other way in Spearman and costs nothing, so independent orders are the default.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.batch import AtomsBatch, DENSE_MAX_ATOMS, collate_dataset
from ..data.structures import StructureDataset
from ..core.errors import ConfigError

ORDERS = ("auto", "shared", "independent")


def one_molecule(dataset: StructureDataset) -> str | None:
    """None if every structure is the same molecule (same atoms, same order, no periodic cell) small enough
    for the dense layout; else why not."""
    if not len(dataset):
        return "the training set is empty"
    first = np.asarray(dataset.structures[0].numbers)
    if len(first) > DENSE_MAX_ATOMS:
        return f"its structures have more than {DENSE_MAX_ATOMS} atoms (the dense layout's limit)"
    for s in dataset.structures:
        if bool(np.any(s.pbc)):
            return "it holds periodic structures"
        if len(s.numbers) != len(first) or not np.array_equal(s.numbers, first):
            return "its structures are not all the same molecule (same atoms in the same order)"
    return None


def resolve_member_order(dataset: StructureDataset, order: str, members: int, layout: str) -> str:
    """``shared`` or ``independent`` for a training on ``dataset`` (``ConfigError`` if ``independent`` was
    asked for and the data or the layout cannot have it)."""
    if order not in ORDERS:
        raise ConfigError(None, f"train.member_order: unknown value {order!r}; use one of {', '.join(ORDERS)}")
    if order == "shared":
        return "shared"
    why = one_molecule(dataset)
    if why is None and layout == "sparse":
        why = "train.layout is 'sparse' (independent orders stack the members' batches on the dense layout)"
    if why is None:
        return "independent"
    if order == "independent":
        raise ConfigError(None, f"train.member_order 'independent' needs one molecule on the dense layout, and {why}; "
                                "set train.member_order: shared (or auto)")
    return "shared"


def member_seeds(model) -> list[int]:
    """The seeds of a model's members (a potential's, or the potential inside a UQ method)."""
    hp = model.hparams
    return [int(s) for s in (hp["seeds"] if "seeds" in hp else hp["potential"]["seeds"])]


def stack_member_batches(batches: list[AtomsBatch]) -> AtomsBatch:
    """M batches of the same molecule (same atoms, same grid) → one batch with a member axis on positions,
    energies and forces."""
    b0 = batches[0]
    for b in batches[1:]:
        if b.num_structures != b0.num_structures or not torch.equal(b.numbers, b0.numbers) or not b.dense:
            raise ValueError("member batches must hold the same molecule, as many structures, on the dense layout")
    out = AtomsBatch(**{f: getattr(b0, f) for f in b0.__dataclass_fields__})
    out.positions = torch.stack([b.positions for b in batches])
    if b0.energy is not None:
        out.energy = torch.stack([b.energy for b in batches])
    if b0.forces is not None:
        out.forces = torch.stack([b.forces for b in batches])
    return out


def member_batches(dataset: StructureDataset, batch_size: int, cutoff: float, rngs: list[np.random.Generator],
                   dtype, device, subsets: list[np.ndarray] | None = None):
    """Yields ``(indices (M, b), stacked batch, mask (M,) or None)``: step k gives member m the k-th batch of its
    own permutation (of ``subsets[m]``, its own structures of ``dataset``, where given).  Subsets of different
    sizes (replicates, each on its own data) are stepped with masks (:func:`masked_stacked_batches`)."""
    subsets = subsets or [np.arange(len(dataset))] * len(rngs)
    yield from masked_stacked_batches(dataset, [s[rng.permutation(len(s))] for s, rng in zip(subsets, rngs)],
                                      batch_size, cutoff, dtype, device)


def masked_stacked_batches(dataset: StructureDataset, orders: list[np.ndarray], batch_size: int, cutoff: float,
                           dtype, device):
    """Yields ``(indices (M, b), stacked batch, mask)``: step k gives member m the k-th chunk of ``orders[m]``.
    Where every member's chunk has the same size (orders of one length), one stacked batch per step and
    ``mask`` None.  Orders of different lengths (replicates on their own training
    sets) give chunks of different sizes, or none, at the end of an epoch: the members with chunks of one size
    step together, one stacked batch per size, ``mask`` (M,) bool naming them; the others carry a copy of the
    first such member's chunk (so the batch stacks) and must not step (the loss and the optimizer take the
    mask: :class:`uqpot.train.optim.MemberAdam`)."""
    steps = max(-(-len(o) // batch_size) for o in orders)
    for k in range(steps):
        chunks = [o[k * batch_size:(k + 1) * batch_size] for o in orders]
        sizes = sorted({len(c) for c in chunks if len(c)}, reverse=True)
        for size in sizes:
            members = [m for m, c in enumerate(chunks) if len(c) == size]
            idx = [chunks[m] if len(chunks[m]) == size else chunks[members[0]] for m in range(len(chunks))]
            batches = [collate_dataset(dataset, i, cutoff, dtype=dtype, device=device, layout="dense") for i in idx]
            mask = None
            if len(members) < len(chunks):
                mask = torch.zeros(len(chunks), dtype=torch.bool)
                mask[members] = True
            yield np.stack(idx), stack_member_batches(batches), mask


def member_splits(model, n_train: int, n_val: int) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """Each member's (training, validation) indices into the pool = training + validation structures, of the
    given sizes, drawn from the member's seed; None unless the model asks for per-member splits
    (:class:`uqpot.uq.ensemble.Ensemble`, ``splits: per_member``)."""
    if getattr(model, "member_splits", "shared") != "per_member":
        return None
    trains, vals = [], []
    for s in member_seeds(model):
        perm = np.random.default_rng([int(s), 97]).permutation(n_train + n_val)
        trains.append(np.sort(perm[:n_train]))
        vals.append(np.sort(perm[n_train:]))
    return trains, vals
