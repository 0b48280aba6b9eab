"""``compile: auto`` (the default of ``train.compile`` and of an MD campaign's ``compile``): compile where the
measured break-even says it pays, from the work's size alone.

Compiling (``torch.compile`` of forward, forces and loss, on the dense layout) costs a fixed time before the
first step and then makes every step faster; it pays when the steps of the run save more than the
compilation costs:

    steps · t_eager · (1 − 1/s)  >  T_compile,
    steps   = epochs · ⌈n_train / batch_size⌉                  (an upper bound: early stopping ends sooner)
    t_eager = c · batch_size · n_max² · features · members       (the dense grid's pairs × the model's width)

with the constants of ``benchmarks/compile_breakeven.py`` on the project's 2-core CPU (paper PaiNN, ethanol,
batch 16, one member, one thread): T_compile the *cold*-cache compilation (102 s; 4.6 s with inductor's
on-disk cache warm), s = 1.96 the compiled step's speed-up (0.153 s eager, 0.078 s compiled), c from the
eager step: break-even after 1,360 steps cold (55 warm).
The cold figure is used whatever the cache holds: the choice must depend on the run, not on what an earlier
run left on the disk, or the same command could give eager results once and compiled results (equal only
to float tolerance) the next time.

Eager where compiling is not available or not measured: periodic cells and structures above the dense
layout's 32 atoms (edge lists), MACE, UQ methods whose training step differentiates twice through autograd
(MVE, evidential, shallow and partially shared ensembles), and CUDA devices (the constants above are the
CPU's; ``benchmarks/gpu_check.sh`` measures the GPU's break-even).  ``train.compile: true`` / ``false``
override the choice; the choice and its reason are written to ``train.log`` and the run's summary.

MD campaigns (:func:`choose_md_compile`), the same balance for the batched engine's model call:

    n_steps · t_eager · (1 − 1/s_MD)  >  T_compile,MD,    t_eager = c_MD · replicas · n_max² · features · members

with 400 NH3 replicas of the paper's PaiNN (one thread, ``compile_breakeven.py --which md``, measured beside
other work: load 2.8 on 2 cores): eager 0.346 s per step, compiled 0.186 s (s_MD = 1.86), compilation 93 s
cold (13.5 s warm): break-even 580 steps cold (72 warm).
The paper's ammonia campaigns (10,000 steps) compile; the quick preset's (1,000 steps of 30 replicas of a
64-feature ensemble) stay eager.  The MD choice is recorded in the campaign summary (``compiled``).
"""

from __future__ import annotations

import math

import numpy as np

from ..data.batch import DENSE_MAX_ATOMS, dataset_layout

#: the compiled step's fixed cost with a cold inductor cache, seconds (CPU, paper PaiNN)
COMPILE_COLD_S = 102.0
#: the compiled step's speed-up over the eager one (CPU, dense layout)
SPEEDUP = 1.96
#: eager step seconds per (structure · n_max² · feature · member) on the CPU: 0.153 s / (16 · 81 · 128)
EAGER_S_PER_UNIT = 0.153 / (16 * 81 * 128)
#: the MD model call (compile_breakeven.py --which md, 400 NH3, one thread)
MD_COMPILE_COLD_S = 93.0
MD_SPEEDUP = 1.86
MD_EAGER_S_PER_UNIT = 0.346 / (400 * 4 ** 2 * 128)


def _unavailable(setting, model, md: bool, device) -> tuple[bool, str] | None:
    """The answer where the run's size does not matter: an explicit setting, a model (its class's
    ``compiles`` / ``md_compiles``: a plain potential, the UQ methods tested compiled) or backbone (its
    ``compilable``) that cannot compile, a device without a measured break-even; None where the balance
    decides."""
    if setting is not True and setting is not False and setting != "auto":
        raise ValueError(f"compile must be true, false or auto, not {setting!r}")
    if setting != "auto":
        return bool(setting), "set in the config"
    kind = getattr(model, "kind", "")
    if not getattr(model, "md_compiles" if md else "compiles", False):
        return False, f"{kind or type(model).__name__} runs eager (its compiled path is not available)"
    net = getattr(model, "potential", model)
    if not getattr(net, "supports_dense", False) or not getattr(net, "compilable", False):
        return False, "this backbone reads edge lists only"
    if getattr(device, "type", str(device)) != "cpu":
        return False, f"no measured break-even on {device}"
    return None


def predicted_saving(steps: int, units: float, width: float, md: bool = False) -> tuple[bool, float]:
    """(compile?, predicted saving in s) of ``steps`` steps of ``units`` · ``width`` work each (units:
    structures · n_max² of a training batch, or replicas · n_max² of an MD call; width: features · members),
    against the cold compilation (module docstring).  What :func:`choose_compile` and
    :func:`choose_md_compile` decide by, for a run that exists only as a plan (``uqpot reproduce --dry-run``)."""
    per_unit, speedup, cost = ((MD_EAGER_S_PER_UNIT, MD_SPEEDUP, MD_COMPILE_COLD_S) if md
                               else (EAGER_S_PER_UNIT, SPEEDUP, COMPILE_COLD_S))
    saving = steps * per_unit * units * width * (1 - 1 / speedup)
    return saving > cost, saving


def _balance(model, steps: int, units: float, md: bool, what: str):
    """(compile?, why): the predicted saving of ``steps`` steps of ``units`` · width work each against the
    cold compilation (module docstring)."""
    net = getattr(model, "potential", model)
    width = int(net.hparams.get("features", 128)) * int(getattr(model, "members", 1))
    verdict, saving = predicted_saving(steps, units, width, md)
    cost = MD_COMPILE_COLD_S if md else COMPILE_COLD_S
    return verdict, (f"predicted saving {saving:.0f} s over {steps} steps{what} against {cost:.0f} s of "
                     f"compilation: {'compiled' if verdict else 'eager'}")


def choose_compile(setting, model, train, cfg, device) -> tuple[bool, str]:
    """(compile?, why) for ``train.compile`` = ``setting`` (True, False or "auto")."""
    fixed = _unavailable(setting, model, False, device)
    if fixed is not None:
        return fixed
    if cfg.layout == "sparse" or dataset_layout(train, "auto") != "dense":
        return False, "the training set needs the edge list (periodic cells or more than 32 atoms)"
    n_max = max(s.n_atoms for s in train.structures)
    steps = cfg.epochs * math.ceil(len(train) / cfg.batch_size)
    return _balance(model, steps, min(cfg.batch_size, len(train)) * n_max ** 2, False, "")


def choose_md_compile(setting, model, structures, n_steps: int, device) -> tuple[bool, str]:
    """(compile?, why) for a campaign's ``compile`` = ``setting`` on ``structures`` (ASE atoms or uqpot
    structures, the replicas of one batch) run for ``n_steps``."""
    fixed = _unavailable(setting, model, True, device)
    if fixed is not None:
        return fixed
    sizes = [len(s.numbers) for s in structures]
    if any(bool(np.any(s.pbc)) for s in structures) or max(sizes) > DENSE_MAX_ATOMS:
        return False, "the replicas need the edge list (periodic cells or more than 32 atoms)"
    return _balance(model, n_steps, len(sizes) * max(sizes) ** 2, True, f" of {len(sizes)} replicas")
