"""What makes a study's numbers a function of (config, seed, data) alone, whatever the executor.

Sources of divergence found and how each is removed:

* **The number of PyTorch threads.**  CPU kernels split reductions (sums, matrix products) into one chunk
  per thread once a tensor passes PyTorch's grain size (32768 elements), so the rounding of a float32 step
  depends on the thread count; over a hundred epochs the difference grows into a different model (measured:
  PaiNN with 32 features on batches of 16 ethanol, 1 and 2 threads give different weights after three
  epochs, the same count identical weights; NH3 batches of 16 stay below the grain size and are unaffected).  In-process, PyTorch uses every core; on a Dask
  worker, one thread (``distributed`` sets ``OMP_NUM_THREADS=1``).  Every job of a study therefore runs
  under :func:`fixed_threads` with the study's ``threads`` setting (default 1), recorded in ``run.json``.
  A different ``threads`` is a different (equally valid) run, not a different result of the same run.
* **The training path.**  The compiled step (``train.compile``) and the eager one compute the same losses,
  gradients and Adam updates (float64: equal to 1e-10 over several epochs; float32: the first epoch to
  ~1e-7), but fused kernels round differently, and that difference grows like the thread count's (float32
  NH3 ensembles part by 1e-3 in the loss after about ten epochs).  ``compile: auto`` decides from the run's
  size alone (:mod:`uqpot.train.autocompile`), so one command always takes one path; the summary records
  it (``compiled``, ``compile_reason``, ``layout``).  The paths are two equally valid runs (README, "The two
  training paths").
* **The stack a network trains in.**  A study trains the seeds of a method in one stack
  (:mod:`uqpot.fit.replicates`), and an ensemble's members are one stack.  Each member's arithmetic is its
  own, but vectorised CPU kernels process a tensor in blocks and its last, partial block by another route,
  so a transcendental function (softplus, log, exp) of one member can round otherwise at another stack size
  when a member's part of the tensor is not a multiple of the block (measured: an MVE head's softplus on 56
  atoms, alone against in a stack of two, three elements in the last bit), and a one-member matrix product
  with one output column takes another BLAS route.  Adam turns such a difference into a different network
  within tens of epochs (an MVE seed's test force MAE then moved by up to 31%).  Removed where found:
  :class:`uqpot.nn.stacked.StackedLinear` runs a one-member one-output layer as a batch of two, and the MVE
  and evidential heads and losses apply their transcendental functions member by member
  (:func:`uqpot.nn.stacked.per_member`); stacked and separate seeds of the ammonia preset are then bit for
  bit equal over 30 float32 epochs (``benchmarks/replicates_training.py``).  Not proven for every size: a
  backbone's own element-wise functions act on per-member blocks that are multiples of the feature width,
  but a radial basis on molecules whose pair count is odd may still part.  So the stacks are a function of
  the command (the seed list and the methods; a resumed study stacks the seeds it stacked before), and
  ``replicates: separate`` trains each seed alone: at worst the two are two equally valid runs.
* **Completion order.**  Labels, grids and loop steps are collected by index (never in the order workers
  finish), and every random draw comes from a generator seeded from the config's seed and the step
  (generation, replica, split) it belongs to.
* **Time budgets.**  A study's steps stop on counts (epochs, MD steps, iterations), never on wall time;
  ``train.max_hours`` pauses a run (resumable) and is not used by the presets.

What is not removed: GPUs run some kernels (scatter-add, index-add) with atomics, in nondeterministic
order; ``torch.use_deterministic_algorithms`` would make them slower or raise.  Results on a GPU are then
reproducible only to float tolerance, and the report's provenance says which device ran the study.
"""

from __future__ import annotations

import contextlib

DEFAULT_THREADS = 1


@contextlib.contextmanager
def fixed_threads(n: int | None = DEFAULT_THREADS):
    """Runs the block with ``torch.set_num_threads(n)`` (``None``: leaves it as it is), then restores."""
    import torch

    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: the distance between the seeds of a model's members (:func:`member_seeds`): larger than any seed list a
#: study uses (replicates 0 .. N), so that the members of one replicate never take another replicate's seeds
MEMBER_SEED_STRIDE = 100_003


def member_seeds(seed: int, members: int) -> list[int]:
    """The seeds of a model's ``members`` stacked networks (initialisation and batch order) for the run seed
    ``seed``: member 0 takes ``seed`` (a single network and an ensemble's first member of one seed start
    alike), member k ``seed + k * MEMBER_SEED_STRIDE`` (mod 2**32).  Not ``seed + k``: replicates 0, 1, 2 of
    a 5-member ensemble would then share four of their five members' seeds (their initialisations and batch
    orders), so their spread would understate the seed-to-seed variance that the study's intervals take."""
    return [(int(seed) + k * MEMBER_SEED_STRIDE) % 2**32 for k in range(int(members))]
