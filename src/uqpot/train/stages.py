"""Training stages after the main training: a short fine-tuning of the whole model on another loss.

A UQ method declares its stages (:meth:`uqpot.uq.base.UQMethod.stages`), e.g. the shallow ensemble's
force-NLL fine-tuning; :func:`run_stage` runs one after the trainer has chosen the best model and before
anything post-hoc is fitted or calibrated.  The stage's loss is built from the run's configured loss
weights (``train.energy_weight``, ``train.forces_weight``).

:func:`run_stage`: ``epochs`` epochs of Adam (``lr``, batches of ``batch_size`` drawn with a generator seeded
by ``seed``) on ``loss``, evaluated on the validation set (or the training set when there is none) before
the first and after every epoch; the weights of the epoch with the lowest validation loss are kept (epoch 0,
the model as it came, if none improves on it).  Non-finite losses are skipped (counted); non-finite weights
end the stage (the best finite epoch is kept).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..data.batch import iterate_batches
from .optim import MemberAdam


@dataclass
class Stage:
    name: str
    #: (outputs with the member axis, batch) -> (loss per member (M,), parts)
    loss: Callable
    epochs: int
    lr: float
    batch_size: int
    seed: int = 0
    #: extra arguments of ``model.forward_members`` (e.g. ``head_forces=True``)
    forward_kwargs: dict = field(default_factory=dict)


def run_stage(model, stage: Stage, train, val=None, val_batch_size: int = 64) -> dict:
    """Runs ``stage`` on ``model`` in place (see the module docstring); returns its JSON-able record."""
    t0 = time.perf_counter()
    check = val if val is not None and len(val) else train
    rng = np.random.default_rng(int(stage.seed))
    kw = dict(dtype=model.dtype, device=model.device)
    members = int(getattr(model, "members", 1))

    def val_loss() -> float:
        model.eval()
        tot = n = 0.0
        for _, b in iterate_batches(check, val_batch_size, model.cutoff, **kw):
            loss, _ = stage.loss(model.forward_members(b, create_graph=False, **stage.forward_kwargs), b)
            tot, n = tot + float(loss.detach().sum()) * b.num_structures, n + b.num_structures
        return tot / n

    def snapshot() -> dict:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    history = [val_loss()]
    best = (history[0], 0, snapshot())
    opt = MemberAdam(model.parameters(), members, stage.lr)
    skipped = 0
    for epoch in range(1, stage.epochs + 1):
        model.train()
        for _, b in iterate_batches(train, stage.batch_size, model.cutoff, shuffle=True, generator=rng, **kw):
            loss, _ = stage.loss(model.forward_members(b, **stage.forward_kwargs), b)
            opt.zero_grad()
            if not bool(torch.isfinite(loss).all()):
                skipped += 1
                continue
            loss.sum().backward()
            opt.step()
        history.append(val_loss())
        finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
        if finite and history[-1] < best[0]:
            best = (history[-1], epoch, snapshot())
        if not finite:
            break
    model.load_state_dict(best[2])
    model.eval()
    return {"stage": stage.name, "epochs": stage.epochs, "lr": stage.lr, "batch_size": stage.batch_size,
            "best_epoch": best[1], "val_loss": history, "fitted_on": "validation" if check is val else "train",
            "skipped_nonfinite": skipped, "seconds": round(time.perf_counter() - t0, 2)}
