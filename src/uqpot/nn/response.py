"""The response layer: derivatives of energies (or any per-structure output) with respect to the positions,
in one place for the potential and every UQ method.

    F = −∂E/∂r                                   (:func:`forces`; autograd, one backward pass)
    G[k] = ∂(Σ_b y[k, b])/∂r,  k = 1..K           (:func:`position_grads`; K outputs of one forward graph)
    F = −∂E/∂r as an explicit function of r       (:func:`functional_forces`; ``torch.func.grad``, the form
                                                   ``torch.compile`` traces and differentiates once more)

Structures in a batch are independent, so the gradient of the batch's summed energy gives every atom the
derivative of its own structure's energy.  :func:`tracking` is the context every caller uses: autograd on
when forces are needed or when the caller differentiates further (the positions already require grad),
off otherwise; :func:`leaf` makes the positions a tensor that autograd tracks.

Several outputs of one graph (LLPR's last-layer directions, a shallow ensemble's heads) need K force-like
vectors ∂y_k/∂r.  Reverse mode gives them as K vector-Jacobian products (VJPs) with one-hot cotangents; one
VJP per output k serves every structure of the batch at once.  They run as batched VJPs
(``torch.autograd.grad(..., is_grads_batched=True)``, vmapped over the cotangents) in chunks of ``chunk``
outputs, or as a plain loop of single VJPs when ``chunk == 1``.  The forward graph is retained, so the caller
may differentiate further (``create_graph=True``: the result is differentiable w.r.t. the positions and the
parameters).  Forward mode gives the same K outputs' Jacobian from 3·n_max Jacobian-vector products instead
(:func:`structure_jacobian`: one tangent per atom slot and component, shared by every structure of the batch),
the cheaper route when molecules are small and no graph is kept.
"""

from __future__ import annotations

import torch

#: outputs per batched VJP (bounds the memory of the vmapped backward; 1 = a loop of single VJPs)
DEFAULT_CHUNK = 1


def tracking(positions: torch.Tensor, compute_forces: bool):
    """Autograd on where derivatives w.r.t. ``positions`` are needed (forces, or a caller that
    differentiates: the positions require grad), off otherwise."""
    return torch.enable_grad() if compute_forces or positions.requires_grad else torch.no_grad()


def leaf(positions: torch.Tensor, needed: bool = True) -> torch.Tensor:
    """``positions``, made a tensor autograd tracks when ``needed`` (unchanged if it already is)."""
    if needed and not positions.requires_grad:
        return positions.detach().requires_grad_(True)
    return positions


def forces(energy: torch.Tensor, positions: torch.Tensor, create_graph: bool = False,
           retain_graph: bool | None = None) -> torch.Tensor:
    """F = −∂(Σ energy)/∂positions (the summed energy of independent structures; members stacked along a
    leading axis of ``positions`` keep their own forces).  ``create_graph`` keeps the graph of the forces
    (losses on forces, derivatives of force-based uncertainties); ``retain_graph`` defaults to it."""
    (grad,) = torch.autograd.grad(energy.sum(), positions, create_graph=create_graph,
                                  retain_graph=create_graph if retain_graph is None else retain_graph)
    return -grad


def functional_forces(energy_fn, positions: torch.Tensor):
    """(F, aux) with F = −∂E/∂r by ``torch.func.grad`` of ``energy_fn(positions) -> (Σ E, aux)``: the form that
    ``torch.compile`` can trace and differentiate once more for a loss on forces (it does not support the
    double backward of ``torch.autograd.grad(create_graph=True)``).  Same values as :func:`forces`."""
    grad, aux = torch.func.grad(energy_fn, has_aux=True)(positions)
    return -grad, aux


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


def stacked_forces(energies: torch.Tensor, positions: torch.Tensor, create_graph: bool = False,
                   chunk: int | None = None) -> torch.Tensor:
    """Forces of K energies (K, B) of one forward graph: −∂E_k/∂r for every k, (K, N, 3)."""
    return -position_grads(energies, positions, create_graph=create_graph, chunk=chunk)


def strain(batch, members: int, positions: torch.Tensor):
    """A zero symmetric strain ε (M, B, 3, 3) that autograd tracks, the strained member positions
    r' = r (I + ε) and the strained image offsets S·cell(I + ε) (M, E, 3): E(ε) for the stress
    σ = (1/V) ∂E/∂ε (:func:`stress`).  ``positions`` (M, N, 3)."""
    eps = positions.new_zeros(members, batch.num_structures, 3, 3).requires_grad_(True)
    sym = 0.5 * (eps + eps.transpose(-1, -2))
    pos = positions + torch.einsum("mni,mnij->mnj", positions, sym.index_select(1, batch.batch))
    cell = batch.cell.to(positions.dtype)
    cell = cell + torch.einsum("bik,mbkj->mbij", cell, sym)
    cell_of_edge = cell.index_select(1, batch.batch.index_select(0, batch.edge_index[0]))
    offsets = torch.einsum("ek,mekj->mej", batch.cell_shifts.to(positions.dtype), cell_of_edge)
    return eps, pos, offsets


def forces_and_stress(energy: torch.Tensor, positions: torch.Tensor, eps: torch.Tensor, cell: torch.Tensor,
                      create_graph: bool = False, retain_graph: bool | None = None):
    """F = −∂E/∂r and σ = (1/V) ∂E/∂ε in one backward pass (``energy`` (M, B), ``eps`` (M, B, 3, 3), ``cell``
    (B, 3, 3); V = |det cell|)."""
    g_pos, g_eps = torch.autograd.grad(energy.sum(), (positions, eps), create_graph=create_graph,
                                       retain_graph=create_graph if retain_graph is None else retain_graph)
    volume = torch.linalg.det(cell.to(g_eps.dtype)).abs()
    return -g_pos, g_eps / volume.view(1, -1, 1, 1)


#: tangents per vmapped forward-mode pass of :func:`structure_jacobian` (bounds its memory)
DEFAULT_TANGENT_CHUNK = 48


def structure_jacobian(fn, positions: torch.Tensor, structure: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """J[i, a, k] = ∂y[s(i), k]/∂r[i, a] for a per-structure output y = ``fn(positions)`` (B, K), atom i of
    structure s(i) = ``structure[i]``, by forward mode: (N, 3, K), no graph kept.

    Structures are independent, so one tangent can move one atom slot of *every* structure at once: tangent
    (j, a) displaces, in every structure, its j-th atom along a.  Its Jacobian-vector product gives, for each
    structure, the column of its own Jacobian at that atom and component.  3·n_max tangents (n_max atoms in
    the largest structure) give the whole J, against K vector-Jacobian products in reverse mode
    (:func:`position_grads`): the cheaper route when 3·n_max < K (LLPR's d last-layer directions on small
    molecules).  The tangents run vmapped (``torch.func.vmap`` of ``torch.func.jvp``; the primal forward is
    evaluated once per chunk of ``chunk`` tangents).  ``fn`` must be a function of the positions alone."""
    counts = torch.bincount(structure)
    first = torch.cumsum(counts, 0) - counts
    slot = torch.arange(positions.shape[0], device=positions.device) - first[structure]
    n_max = int(counts.max()) if len(counts) else 0
    primal = positions.detach()
    chunk = max(1, int(DEFAULT_TANGENT_CHUNK if chunk is None else chunk))
    tangents = 3 * n_max
    cols = []
    with torch.no_grad():
        for start in range(0, tangents, chunk):
            t = torch.arange(start, min(start + chunk, tangents), device=positions.device)
            hit = slot.unsqueeze(0) == (t // 3).unsqueeze(1)  # (T, N): atom i is the tangent's slot
            comp = torch.nn.functional.one_hot(t % 3, 3).to(positions.dtype)  # (T, 3)
            T = hit.unsqueeze(-1).to(positions.dtype) * comp.unsqueeze(1)  # (T, N, 3)
            cols.append(torch.func.vmap(lambda v: torch.func.jvp(fn, (primal,), (v,))[1])(T))  # (T, B, K)
    if not cols:
        return positions.new_zeros(positions.shape[0], 3, 0)
    Jt = torch.cat(cols).view(n_max, 3, *cols[0].shape[1:])  # (slot, a, B, K)
    return Jt[slot, :, structure]  # (N, 3, K)
