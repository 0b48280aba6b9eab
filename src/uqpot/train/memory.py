"""Peak memory of one training step (forward, force graph, loss and backward): the memory figure of the
paper's Fig. 2b, measured on the device the model lives on.

CUDA: the caching allocator's peak above what was allocated before the step.  CPU: the profiler's record
of every allocation and free during the step, summed in time order (PyTorch keeps no CPU peak counter).
The step leaves the parameters untouched (no optimiser step; gradients are cleared afterwards).
"""

from __future__ import annotations

import torch


def training_step_peak_mb(model, loss_fn, batch) -> float:
    """MB that one training step on ``batch`` needs beyond the model and the batch themselves."""
    was_training = model.training
    model.train()
    try:
        if batch.positions.is_cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            loss, _ = loss_fn(model.forward_members(batch), batch)
            loss.sum().backward()
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - base) / 2**20
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            loss, _ = loss_fn(model.forward_members(batch), batch)
            loss.sum().backward()
        events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
        level = peak = 0
        for e in events:
            level += e.self_cpu_memory_usage
            peak = max(peak, level)
        return peak / 2**20
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
