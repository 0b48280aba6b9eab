"""Gradients of several outputs with respect to the positions from one forward graph.

Methods whose members share one backbone (LLPR's last-layer directions, a shallow ensemble's heads) need
K force-like vectors ∂y_k/∂r, k = 1..K, of K outputs y_k that all hang off the same PaiNN graph.  Reverse
mode gives them as K vector-Jacobian products (VJPs) with one-hot cotangents; structures in a batch are
independent, so one VJP per output k serves every structure of the batch at once:

    G[k] = ∂(Σ_b y[k, b]) / ∂r   →  for an atom of structure b, ∂y[k, b]/∂r.

The K VJPs are run as batched VJPs (``torch.autograd.grad(..., is_grads_batched=True)``, vmapped over the
cotangents) in chunks of ``chunk`` outputs, or as a plain loop of single VJPs when ``chunk == 1``.  The
forward graph is retained, so the caller may differentiate further (``create_graph=True``: the result is
differentiable w.r.t. the positions and the parameters).
"""

from __future__ import annotations

import torch

#: outputs per batched VJP (bounds the memory of the vmapped backward; 1 = a loop of single VJPs)
DEFAULT_CHUNK = 1


def position_grads(outputs: torch.Tensor, positions: torch.Tensor, create_graph: bool = False,
                   chunk: int | None = None) -> torch.Tensor:
    """∂(Σ outputs[k]) / ∂positions for every k: outputs (K, ...) → (K, *positions.shape).

    Outputs that do not depend on the positions give zeros."""
    K = outputs.shape[0]
    if K == 0:
        return positions.new_zeros((0, *positions.shape))
    chunk = max(1, int(DEFAULT_CHUNK if chunk is None else chunk))
    if chunk == 1:
        grads = []
        for k in range(K):
            (g,) = torch.autograd.grad(outputs[k].sum(), positions, create_graph=create_graph, retain_graph=True,
                                       allow_unused=True)
            grads.append(torch.zeros_like(positions) if g is None else g)
        return torch.stack(grads)
    eye = torch.eye(K, dtype=outputs.dtype, device=outputs.device)
    eye = eye.view(K, K, *([1] * (outputs.dim() - 1))).expand(K, *outputs.shape)
    parts = []
    for start in range(0, K, chunk):
        (g,) = torch.autograd.grad(outputs, positions, grad_outputs=eye[start:start + chunk],
                                   is_grads_batched=True, create_graph=create_graph, retain_graph=True,
                                   allow_unused=True)
        parts.append(positions.new_zeros((min(chunk, K - start), *positions.shape)) if g is None else g)
    return torch.cat(parts)
