"""Running a model over a data set, batch by batch, with per-structure outputs on the host."""

from __future__ import annotations

import numpy as np
import torch

from . import fields as F
from .data.batch import iterate_batches
from .data.structures import StructureDataset
from .errors import DataError


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


def _is_per_atom(key: str, value: torch.Tensor, batch) -> bool:
    if key in F.FIELDS:
        return F.FIELDS[key].per_atom
    return value.shape[0] == batch.numbers.shape[0] and value.shape[0] != batch.num_structures


def predict(model, dataset: StructureDataset, batch_size: int = 64, device=None, keys=(F.ENERGY, F.FORCES),
            dtype=None) -> dict[str, list | np.ndarray]:
    """Model outputs for every structure: per-structure fields as arrays with the structures along the
    first axis, per-atom fields as a list of arrays (one per structure)."""
    check_elements(model, dataset)
    device = device or model.device
    dtype = dtype or model.dtype
    model.eval()
    chunks: dict[str, list] = {k: [] for k in keys}
    per_atom: dict[str, bool] = {}
    for _, batch in iterate_batches(dataset, batch_size, model.cutoff, dtype=dtype, device=device):
        out = model(batch, compute_forces=F.FORCES in keys, create_graph=False)
        counts = batch.n_atoms.tolist()
        for k in keys:
            v = out[k].detach().cpu().double()
            per_atom[k] = _is_per_atom(k, v, batch)
            if per_atom[k]:
                chunks[k].extend(x.numpy() for x in torch.split(v, counts))
            else:
                chunks[k].append(v.numpy())
    return {k: (v if per_atom.get(k) else np.concatenate(v)) for k, v in chunks.items()}
