"""Layers whose parameters carry a leading *member* axis of size M.

An ensemble of M networks is one module whose weights are stacked, evaluated in one batched call
(grouped matmul, ``torch.baddbmm``), not a Python loop over models; a single network is the case M = 1.
Member m is initialised from its own seed exactly as a single network with that seed would be, so training
M members together reproduces training each alone.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import activation


class StackedLinear(nn.Module):
    """y[m] = x[m] @ W[m] + b[m] for every member m; x has shape (M, ..., n_in).

    ``spectral_bound`` c: spectral normalisation (Miyato et al. 2018) capped at c, as in SNGP (Liu et al.
    2020): each member's weight is used as W·min(1, c/σ(W)), with σ(W) its largest singular value estimated
    by one power iteration per training forward (the vectors ``sn_u`` are buffers, saved with the model and
    not updated in eval mode, so inference is deterministic).  It bounds the layer's Lipschitz constant by c
    to the accuracy of the estimate, which converges from below as training runs.

    In eval mode the factor max(1, σ/c) is a constant of the frozen weights, so it is computed once and
    kept (:meth:`_eval_factor`) instead of in every forward: a few small einsums per layer that cost a
    molecule of a few atoms 35% of its inference time.  The cache is keyed on the weight tensor itself and
    on the version counters of ``weight`` and ``sn_u`` (an optimiser step, ``load_state_dict`` or any
    in-place write bumps them), and on dtype and device; it is bypassed while ``torch.compile`` traces
    and when another tensor is swapped in for the weight (``torch.func.functional_call``).  The kept
    factor is detached: in eval mode it is a constant for gradients with respect to the weights (the
    outputs and every gradient with respect to positions or strain are unchanged, bit for bit).  Only
    train mode differentiates through σ(W), and there it is recomputed in every forward.
    """

    def __init__(self, members: int, n_in: int, n_out: int, bias: bool = True, spectral_bound: float | None = None):
        super().__init__()
        self.members, self.n_in, self.n_out = members, n_in, n_out
        self.weight = nn.Parameter(torch.empty(members, n_in, n_out))
        self.bias = nn.Parameter(torch.empty(members, 1, n_out)) if bias else None
        self.spectral_bound = None if spectral_bound is None else float(spectral_bound)
        if self.spectral_bound is not None:
            if not self.spectral_bound > 0:
                raise ValueError("spectral_bound must be > 0")
            self.register_buffer("sn_u", torch.nn.functional.normalize(torch.ones(members, n_out), dim=-1))

    def sigma(self) -> torch.Tensor:
        """σ(W[m]) (M,) from the stored power-iteration vector (differentiable in W)."""
        u = self.sn_u.to(self.weight.dtype)
        v = torch.nn.functional.normalize(torch.einsum("mio,mo->mi", self.weight, u), dim=-1).detach()
        return torch.einsum("mi,mio,mo->m", v, self.weight, u)

    def effective_weight(self) -> torch.Tensor:
        if self.spectral_bound is None:
            return self.weight
        if self.training:
            with torch.no_grad():  # one power iteration: u ← W^T v / |W^T v|, v ← W u / |W u|
                w = self.weight.detach()
                v = torch.nn.functional.normalize(torch.einsum("mio,mo->mi", w, self.sn_u.to(w.dtype)), dim=-1)
                self.sn_u.copy_(torch.nn.functional.normalize(torch.einsum("mi,mio->mo", v, w), dim=-1))
            factor = torch.clamp(self.sigma() / self.spectral_bound, min=1.0)
        else:
            factor = self._eval_factor()
        return self.weight / factor.view(-1, 1, 1)

    def _eval_factor(self) -> torch.Tensor:
        """max(1, σ(W)/c) per member for eval mode, from the cache when the weights have not changed."""
        w = self.weight
        if torch.compiler.is_compiling() or not isinstance(w, nn.Parameter):
            return torch.clamp(self.sigma() / self.spectral_bound, min=1.0)
        key = (w._version, self.sn_u._version, w.dtype, w.device)
        cache = self.__dict__.get("_sn_cache")
        if cache is not None and cache[0] is w and cache[1] == key:
            return cache[2]
        with torch.no_grad():
            factor = torch.clamp(self.sigma() / self.spectral_bound, min=1.0)
        self.__dict__["_sn_cache"] = (w, key, factor)
        return factor

    def init_member(self, m: int, generator: torch.Generator) -> None:
        """PyTorch's default Linear initialisation: U(-1/sqrt(n_in), 1/sqrt(n_in)) for weight and bias."""
        bound = 1.0 / math.sqrt(self.n_in)
        with torch.no_grad():
            w = torch.rand(self.n_in, self.n_out, generator=generator, dtype=torch.float64) * 2 - 1
            self.weight[m].copy_(w * bound)
            if self.bias is not None:
                b = torch.rand(1, self.n_out, generator=generator, dtype=torch.float64) * 2 - 1
                self.bias[m].copy_(b * bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(self.members, -1, self.n_in)
        w = self.effective_weight()
        b = self.bias
        if self.members == 1 and self.n_out == 1:
            # one member, one output (a readout's last layer): PyTorch's CPU batched matmul takes another route
            # for a batch of one (it rounds otherwise, by ~1e-16, than the same member in a batch of two or
            # more), so the member is run as a batch of two views of itself and the first kept: a single
            # network then computes exactly what it computes as a member of any stack (an ensemble, the
            # replicates of a study: uqpot.fit.replicates), which Adam's sign sensitivity needs.
            x2, w = x2.expand(2, -1, -1), w.expand(2, -1, -1)
            b = None if b is None else b.expand(2, -1, -1)
        y = torch.baddbmm(b, x2, w) if b is not None else torch.bmm(x2, w)
        return y[:self.members].reshape(*shape[:-1], self.n_out)


class StackedMLP(nn.Module):
    """Dense → activation → dense, per member (PaiNN's φ, update MLP and the atomwise readout)."""

    def __init__(self, members: int, n_in: int, hidden: int, n_out: int, act: str,
                 spectral_bound: float | None = None):
        super().__init__()
        self.lin1 = StackedLinear(members, n_in, hidden, spectral_bound=spectral_bound)
        self.act = activation(act)
        self.lin2 = StackedLinear(members, hidden, n_out, spectral_bound=spectral_bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class StackedEmbedding(nn.Module):
    """Per-member embedding of atomic numbers, N(0, 1) initialised like ``nn.Embedding``."""

    def __init__(self, members: int, n_types: int, n_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, n_types, n_features))

    def init_member(self, m: int, generator: torch.Generator) -> None:
        with torch.no_grad():
            self.weight[m].copy_(torch.randn(self.weight.shape[1:], generator=generator, dtype=torch.float64))

    def forward(self, numbers: torch.Tensor) -> torch.Tensor:
        return self.weight.index_select(1, numbers)


def init_members(module: nn.Module, seeds: list[int]) -> None:
    """Initialise every member m of ``module`` from its own seed, visiting sub-modules in their fixed
    registration order, so that member m of an ensemble equals a single network built with seed m."""
    for m, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(int(seed))
        for sub in module.modules():
            if hasattr(sub, "init_member"):
                sub.init_member(m, g)


def per_member(fn, *tensors: torch.Tensor) -> torch.Tensor:
    """``fn`` of the tensors member by member (each with its leading member axis, or without one: shared by
    every member), stacked again: ``fn`` sees every member's slice (1, ...) as a network alone sees its own
    tensors, so that what it computes does not depend on how many members share the stack.  For element-wise
    transcendental functions (softplus, log, lgamma) of tensors whose per-member size is not a multiple of
    the CPU's vector block (per-atom scalars, forces): vectorised kernels round a tensor's last partial block
    otherwise, and in a stack that block falls inside another member (:mod:`uqpot.core.determinism`)."""
    M = next(t.shape[0] for t in tensors if t.dim() >= 1)
    if M == 1:
        return fn(*tensors)
    outs = [fn(*(t[m:m + 1] if t.dim() >= 1 and t.shape[0] == M else t for t in tensors)) for m in range(M)]
    return torch.cat(outs, 0)
