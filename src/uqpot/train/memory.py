"""Peak memory of one training step (forward, force graph, loss and backward): the memory figure of the
paper's Fig. 2b, measured on the device the model lives on.

CUDA: the caching allocator's peak above what was allocated before the step.  CPU: the profiler's record
of every allocation and free during the step, summed in time order (PyTorch keeps no CPU peak counter).
This module needs nothing but torch, so that benchmarks can measure other codes' steps with the same code.
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch


@contextlib.contextmanager
def _native_stderr_silenced():
    """Drops what native code writes to file descriptor 2 (the profiler of torch 2.13 logs a line on every
    start and stop, which would land in the middle of a progress display)."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def peak_mb(step, cuda: bool) -> float:
    """MB that ``step()`` allocates at its peak beyond what existed before it."""
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _native_stderr_silenced():  # only around the start and the stop: the step's own errors show
        prof.start()
    try:
        step()
    finally:
        with _native_stderr_silenced():
            prof.stop()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    level = peak = 0
    for e in events:
        level += e.self_cpu_memory_usage
        peak = max(peak, level)
    return peak / 2**20


def training_step_peak_mb(model, loss_fn, batch) -> float:
    """MB that one training step on ``batch`` needs beyond the model and the batch themselves.  The step
    leaves the parameters untouched (no optimiser step; gradients are cleared afterwards)."""
    was_training = model.training
    model.train()

    def step():
        stress = {"compute_stress": True} if getattr(loss_fn, "needs_stress", False) else {}
        loss, _ = loss_fn(model.forward_members(batch, **stress), batch)
        loss.sum().backward()

    try:
        return peak_mb(step, batch.positions.is_cuda)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
