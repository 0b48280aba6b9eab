"""Fine-tuning: a training that starts from trained weights (a pretrained or earlier model) instead of a
random initialisation.

``warm_start(model, sources)`` copies the network weights of trained models into a freshly built model of
the same backbone and sizes:

* a plain potential or a UQ method of the same kind and sizes: every weight (heads included);
* a plain potential into a UQ method: the method's potential gets it, the method's own new parts (MVE and
  evidential heads) keep their seeded initialisation;
* an ensemble of M members from one file: every member starts from the same weights, and the members then
  differ by their own batch orders (``train.member_order``) and by nothing else; from M files
  (``loop.init_model: [a.pt, b.pt, ...]``): member m starts from file m.

The per-element reference energies are kept from the source and shifted by a least-squares fit of the
new training set's residuals (:func:`refit_shift`): the same level of theory gives a shift of ~0, another
(a foundation model fine-tuned on other DFT) moves every e_ref(Z) by the offset between them.  The energy
scale of the source is kept, so the fine-tuned network sees the units it was trained in.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.batch import iterate_batches
from ..nn.backbone import build_potential
from ..nn.potential import SHARED_BUFFERS, Potential, composition_counts
from ..uq import build_method


def _potential(model) -> Potential:
    return model if isinstance(model, Potential) else model.potential


def _check_same_network(target: Potential, source: Potential, where: str) -> None:
    keep = ("members", "seeds")
    a = {k: v for k, v in target.hparams.items() if k not in keep}
    b = {k: v for k, v in source.hparams.items() if k not in keep}
    if a != b:
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise ValueError(f"{where}: its network differs from the one to fine-tune in {', '.join(diff)}")


def _copy_members(target: Potential, sources: list[Potential]) -> None:
    """Member m of ``target`` from ``sources[m]`` (or every member from ``sources[0]``); the buffers every
    member shares (reference energies, scale, elements) from the first source."""
    M = target.members
    if len(sources) not in (1, M):
        raise ValueError(f"{len(sources)} initial models for {M} members: give 1 or {M}")
    src_states = [s.state_dict() for s in sources]
    with torch.no_grad():
        for name, t in target.state_dict().items():
            if name in SHARED_BUFFERS or t.dim() == 0 or t.shape[0] != M:
                t.copy_(src_states[0][name].to(t.dtype))
                continue
            for m in range(M):
                src, s = (src_states[0], sources[0]) if len(sources) == 1 else (src_states[m], sources[m])
                t[m].copy_(src[name][m if s.members == M else 0].to(t.dtype))


def warm_start(model, sources: list, names: list[str] | None = None) -> None:
    """Copies the trained weights of ``sources`` (loaded models) into ``model`` (see module)."""
    names = names or [f"initial model {k}" for k in range(len(sources))]
    target = _potential(model)
    src = sources[0]
    if (len(sources) == 1 and model.kind != "potential" and getattr(src, "kind", "") == model.kind
            and _potential(src).members == target.members):
        _check_same_network(target, _potential(src), names[0])
        model.load_state_dict(src.state_dict(), strict=True)  # the method's heads too
        return
    pots = [_potential(s) for s in sources]
    for p, n in zip(pots, names):
        _check_same_network(target, p, n)
    _copy_members(target, pots)


def refit_shift(model, train, batch_size: int = 64) -> np.ndarray:
    """Shifts the reference energies by the least-squares fit of E_data − E_model on composition over
    ``train`` (kcal/mol per element); returns the shift of each of the training set's elements."""
    pot = _potential(model)
    elements = train.elements()
    if not train.has_energy:
        return np.zeros(len(elements))
    counts = composition_counts(train, elements)
    pred = np.zeros(len(train))
    was = pot.training
    pot.eval()
    with torch.no_grad():
        for idx, b in iterate_batches(train, batch_size, pot.cutoff, dtype=pot.dtype, device=pot.device):
            e = pot.forward_members(b, compute_forces=False)["energy"].mean(0)
            pred[idx] = e.cpu().numpy()
    pot.train(was)
    delta, *_ = np.linalg.lstsq(counts, train.energies() - pred, rcond=None)
    with torch.no_grad():
        pot.atomref[elements] += torch.as_tensor(delta, dtype=torch.float64, device=pot.atomref.device)
    return delta


def build_from(sources: list, uq_cfg, seed: int, members: int, plain: bool, names: list[str] | None = None):
    """The model to train for ``uq_cfg`` (``members`` stacked networks; a plain potential when ``plain``),
    sized as the trained ``sources`` (their backbone and hyper-parameters, seeds from ``seed``) and
    warm-started from them."""
    hp = dict(_potential(sources[0]).hparams)
    hp.update(members=members, seeds=[seed + k for k in range(members)])
    model = build_potential(hp) if plain else build_method(uq_cfg, hp)
    model = model.to(dtype=_potential(sources[0]).dtype)
    warm_start(model, sources, names)
    return model
