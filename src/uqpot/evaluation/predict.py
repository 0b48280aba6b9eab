"""Running a model over a data set, batch by batch, with per-structure outputs on the host."""

from __future__ import annotations

import numpy as np
import torch

from ..core import fields as F
from ..data.batch import INFERENCE_MAX_ATOMS, iterate_batches
from ..data.structures import StructureDataset
from ..core.errors import DataError


def check_elements(model, dataset: StructureDataset) -> None:
    """Refuses structures with elements the model never saw in training (their reference energy and
    embedding are untrained, so predictions would be meaningless)."""
    known = set(model.elements()) if hasattr(model, "elements") else set()
    if not known:
        return
    for s in dataset:
        unknown = sorted({int(z) for z in s.numbers} - known)
        if unknown:
            from ase.data import chemical_symbols

            names = ", ".join(chemical_symbols[z] for z in unknown)
            raise DataError(s.source, f"element(s) {names} not in the model's training set "
                                      f"({', '.join(chemical_symbols[z] for z in sorted(known))})",
                            frame=s.frame, field=F.NUMBERS)


def predict(model, dataset: StructureDataset, batch_size: int = 64, device=None, keys=(F.ENERGY, F.FORCES),
            dtype=None) -> dict[str, list | np.ndarray]:
    """Model outputs for every structure, by the kind each key has in :mod:`uqpot.core.fields`: per-structure
    fields as arrays with the structures along the first axis, per-atom fields as a list of arrays (one per
    structure, atoms along the first axis).  A ``<prop>_members`` field's member axis comes after the
    structure (or atom) axis.  Unregistered keys are refused (KeyError)."""
    check_elements(model, dataset)
    fields = {k: F.get(k) for k in keys}
    device = device or model.device
    dtype = dtype or model.dtype
    model.eval()
    chunks: dict[str, list] = {k: [] for k in keys}
    for _, batch in iterate_batches(dataset, batch_size, model.cutoff, dtype=dtype, device=device,
                                    max_atoms=INFERENCE_MAX_ATOMS):
        stress = {"compute_stress": True} if F.STRESS in keys else {}
        out = model(batch, compute_forces=F.FORCES in keys, create_graph=False, **stress)
        counts = batch.n_atoms.tolist()
        for k, field in fields.items():
            v = out[k].detach().cpu().double()
            if field.members:  # (K, N|B, ...) -> (N|B, K, ...)
                v = v.movedim(0, 1)
            if field.per_atom:
                chunks[k].extend(x.numpy() for x in torch.split(v, counts))
            else:
                chunks[k].append(v.numpy())
    return {k: (v if fields[k].per_atom else np.concatenate(v)) for k, v in chunks.items()}
