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

What trains (``finetune.trainable``, :func:`freeze`): ``all`` (every weight), ``readout`` (the readout only:
the backbone's features are frozen, which keeps a foundation model's representation and costs the fewest
updated weights) or ``last_blocks`` (the last ``blocks`` interaction blocks and the readout).  The blocks are
the backbone's own (:meth:`uqpot.nn.potential.Potential.parameter_blocks`); a UQ method's own parts (MVE
and evidential heads) always train, since they start from their seeded initialisation.  A frozen weight
gets no gradient and no Adam state (:class:`uqpot.train.optim.MemberAdam` takes the weights that require
one); the record of what trained goes into the model file (``extra.fine_tuning``).

Re-initialised readouts (``finetune.readout: reinit``, :func:`reinit_readout`): after the warm start, member
m's readout is replaced by the backbone's own initialisation from member m's seed
(:meth:`uqpot.nn.potential.Potential.fresh_readout`), the rest of the network keeps the trained weights.  Copies
of one foundation model fine-tuned from the same weights stay nearly identical (their force spread measured at
0.4% of their error); a readout of their own is the one part that starts them apart, as in last-layer
ensembles.  It applies where fine-tuning starts from ``init_model`` (generation 1, or every generation with
``start: init``); a generation that fine-tunes its previous model keeps that model's readout.
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
import torch
from pydantic import Field

from ..core.determinism import member_seeds
from ..core.schema import Strict

from ..data.batch import INFERENCE_MAX_ATOMS, iterate_batches
from ..nn.backbone import build_potential
from ..nn.potential import SHARED_BUFFERS, Potential, composition_counts
from ..uq import build_method


class FinetuneSettings(Strict):
    """``finetune``: how a model trains when it starts from trained weights (``init_model`` of a loop).  A
    trained network needs a smaller step and fewer epochs than one trained from random weights; unset values
    are a fifth of ``train.lr`` and half of ``train.epochs`` (the other ``train`` settings apply as they are).
    ``trainable``: which weights train (module docstring), ``blocks``: how many of the last interaction
    blocks train with ``last_blocks``."""

    lr: Optional[float] = Field(None, gt=0.0)
    epochs: Optional[int] = Field(None, ge=1)
    #: generation g > 1 starts from the same method's model of generation g - 1 ("previous"), or every
    #: generation from ``init_model`` ("init")
    start: Literal["previous", "init"] = "previous"
    trainable: Literal["all", "readout", "last_blocks"] = "all"
    blocks: int = Field(1, ge=1)
    #: ``keep`` the trained readout, or ``reinit`` it from each member's own seed (module docstring)
    readout: Literal["keep", "reinit"] = "keep"


def freeze(model, settings: FinetuneSettings | None) -> dict:
    """Freezes the weights of ``model``'s network that ``settings.trainable`` leaves out (module docstring)
    and returns the record: the mode, the trainable blocks, and the trainable and frozen weight counts."""
    pot = _potential(model)
    blocks = pot.parameter_blocks()
    mode = settings.trainable if settings is not None else "all"
    interactions = [name for name, names in blocks if name.startswith("interaction") and names]
    if mode != "all" and not dict(blocks)["readout"] or mode == "last_blocks" and not interactions:
        raise ValueError(f"finetune.trainable {mode}: the {pot.title} backbone puts no weight in its "
                         f"{'readout' if not dict(blocks)['readout'] else 'interaction'} block (its block_of); "
                         "only trainable: all fine-tunes it")
    if mode == "all":
        keep = [name for name, _ in blocks]
    elif mode == "readout":
        keep = ["readout"]
    else:
        if settings.blocks > len(interactions):
            raise ValueError(f"finetune.blocks: {settings.blocks} > the network's {len(interactions)} interaction blocks")
        keep = interactions[len(interactions) - settings.blocks:] + ["readout"]
    frozen_names = {n for name, names in blocks if name not in keep for n in names}
    params = dict(pot.named_parameters())
    for n in frozen_names:
        params[n].requires_grad_(False)
    count = lambda names: int(sum(params[n].numel() for n in names))  # noqa: E731
    frozen = count(frozen_names)
    return {"trainable": mode, "blocks": keep, "weights_trained": count(set(params) - frozen_names),
            "weights_frozen": frozen,
            "method_weights": int(sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in params.values()))}


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


def reinit_readout(model) -> list[str]:
    """Replaces the readout of every member of ``model``'s network by the backbone's own initialisation from
    that member's seed (``hparams["seeds"]``); returns the names of the replaced weights."""
    pot = _potential(model)
    fresh = pot.fresh_readout(pot.hparams["seeds"])
    params = dict(pot.named_parameters())
    with torch.no_grad():
        for name, value in fresh.items():
            params[name].copy_(value.to(dtype=params[name].dtype, device=params[name].device))
    return sorted(fresh)


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
        for idx, b in iterate_batches(train, batch_size, pot.cutoff, dtype=pot.dtype, device=pot.device,
                                      max_atoms=INFERENCE_MAX_ATOMS):
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
    for k, src in enumerate(sources):
        if _potential(src).assembled:
            where = names[k] if names else f"initial model {k}"
            raise ValueError(f"{where}: a {_potential(src).title} of different networks is not fine-tuned as one "
                             "network; give its members' own files")
    hp = dict(_potential(sources[0]).hparams)
    hp.update(members=members, seeds=member_seeds(seed, members))
    model = build_potential(hp) if plain else build_method(uq_cfg, hp)
    model = model.to(dtype=_potential(sources[0]).dtype)
    warm_start(model, sources, names)
    return model
