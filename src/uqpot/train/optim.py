"""Adam and the plateau schedule with one learning rate per ensemble member.

Every trainable parameter of a uqpot model carries a leading member axis (M networks stacked; M = 1 for a
single model).  Adam is element-wise, so with a learning rate per member, M members trained together
follow exactly the trajectories they would follow alone.  The plateau schedule (halve the learning rate
after ``patience`` epochs without a relative improvement of 1e-4 in the validation loss, as
``torch.optim.lr_scheduler.ReduceLROnPlateau``) and early stopping are likewise tracked per member.
"""

from __future__ import annotations

import math

import torch


class MemberAdam:
    """Adam (Kingma & Ba; as ``torch.optim.Adam`` without weight decay or AMSGrad) with a learning rate
    per member: ``lr`` is a (M,) tensor; parameter p has shape (M, ...) (any shape for a single network,
    M = 1)."""

    def __init__(self, params, members: int, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = [p for p in params if p.requires_grad]
        for p in self.params:  # one network (M = 1) may stack parts of itself (branches) on its leading axis
            if p.shape[0] != members and members != 1:
                raise ValueError(f"parameter of shape {tuple(p.shape)} has no leading member axis of size {members}")
        self.members = members
        self.lr = torch.full((members,), float(lr), dtype=torch.float64)
        self.betas, self.eps = betas, eps
        self.step_count = 0
        # steps taken by each member: all members step together, except where a step masks some out (replicates
        # whose training sets differ in size: :func:`uqpot.train.member_order.masked_stacked_batches`)
        self.member_steps = [0] * members
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, mask: torch.Tensor | None = None) -> None:
        """One Adam step; ``mask`` (M,) bool: the members that step (default all).  A member left out keeps its
        weights, moments and step count exactly, as if this step had not happened to it."""
        if mask is not None and bool(mask.all()):
            mask = None
        self.step_count += 1
        members = range(self.members) if mask is None else torch.nonzero(mask.cpu()).flatten().tolist()
        for k in members:
            self.member_steps[k] += 1
        b1, b2 = self.betas
        if len(set(self.member_steps)) == 1:  # every member at the same step: scalar bias corrections
            bc1 = 1 - b1 ** self.member_steps[0]
            bc2_sqrt = math.sqrt(1 - b2 ** self.member_steps[0])
        else:  # per member (python floats, then one tensor): members that skipped steps are behind
            bc1 = torch.tensor([1 - b1 ** max(n, 1) for n in self.member_steps], dtype=torch.float64)
            bc2_sqrt = torch.tensor([math.sqrt(1 - b2 ** max(n, 1)) for n in self.member_steps], dtype=torch.float64)
        keep = None if mask is None else ~mask.cpu()
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            if p.grad is None:
                continue
            saved = None if keep is None else [(t, t[keep.to(t.device)].clone()) for t in (p, m, v)]
            g = p.grad
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            shape = (-1, *([1] * (p.dim() - 1)))
            if isinstance(bc2_sqrt, torch.Tensor):
                denom = (v.sqrt() / bc2_sqrt.to(device=p.device, dtype=p.dtype).view(shape)).add_(self.eps)
            else:
                denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
            step_size = (self.lr / bc1).to(device=p.device, dtype=p.dtype).view(shape)
            p.addcdiv_(m * step_size, denom, value=-1.0)
            for t, old in saved or ():
                t[keep.to(t.device)] = old

    def state_dict(self) -> dict:
        return {"lr": self.lr.clone(), "step": self.step_count, "member_steps": list(self.member_steps),
                "exp_avg": [t.clone() for t in self.exp_avg],
                "exp_avg_sq": [t.clone() for t in self.exp_avg_sq]}

    def load_state_dict(self, state: dict) -> None:
        self.lr = state["lr"].clone().to(torch.float64)
        self.step_count = int(state["step"])
        # checkpoints written before members could skip steps: every member took every step
        self.member_steps = [int(n) for n in state.get("member_steps", [self.step_count] * self.members)]
        for dst, src in zip(self.exp_avg + self.exp_avg_sq, state["exp_avg"] + state["exp_avg_sq"]):
            dst.copy_(src)


class MemberPlateau:
    """Per-member ReduceLROnPlateau (mode 'min', relative threshold 1e-4) plus early-stopping counters."""

    def __init__(self, members: int, factor: float, patience: int, min_lr: float, threshold: float = 1e-4,
                 eps: float = 1e-8):
        self.factor, self.patience, self.min_lr, self.threshold, self.eps = factor, patience, min_lr, threshold, eps
        self.best = torch.full((members,), math.inf, dtype=torch.float64)
        self.bad = torch.zeros(members, dtype=torch.int64)  # as ReduceLROnPlateau: reset after each cut
        self.stall = torch.zeros(members, dtype=torch.int64)  # epochs since the last significant improvement

    def step(self, val_loss: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """Updates the counters with this epoch's validation losses (M,) and returns the new lrs."""
        val_loss = val_loss.to(torch.float64)
        better = val_loss < self.best * (1 - self.threshold)
        self.best = torch.where(better, val_loss, self.best)
        self.bad = torch.where(better, torch.zeros_like(self.bad), self.bad + 1)
        self.stall = torch.where(better, torch.zeros_like(self.stall), self.stall + 1)
        cut = self.bad > self.patience
        new_lr = torch.clamp(lr * self.factor, min=self.min_lr)
        cut = cut & ((lr - new_lr) > self.eps)
        self.bad = torch.where(self.bad > self.patience, torch.zeros_like(self.bad), self.bad)
        return torch.where(cut, new_lr, lr)

    def state_dict(self) -> dict:
        return {"best": self.best.clone(), "bad": self.bad.clone(), "stall": self.stall.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad, self.stall = state["best"].clone(), state["bad"].clone(), state["stall"].clone()


def clip_per_member(params, max_norm: float, members: int) -> None:
    """Clips the gradient norm of every member separately (as if each were trained alone)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    sq = torch.stack([g.reshape(members, -1).pow(2).sum(1) for g in grads]).sum(0)
    scale = torch.clamp(max_norm / (sq.sqrt() + 1e-6), max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))
