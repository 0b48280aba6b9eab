"""Replicates as a batch axis: the seeds of a study, each its own network, trained in one stacked pass.

A study runs every method once per seed; for one method and generation the S seeds train S networks (S·M
for an ensemble of M) that differ in their initialisation, their batch order and their data (each seed's
own split of the initial data, and from generation 2 on its own adversarial samples).  They are independent
networks, which is what a stack already is (:mod:`uqpot.nn.stacked`, every parameter with a member axis):
member k of replicate s has the seed the separate run gives it (:func:`uqpot.core.determinism.member_seeds`), its own batch order drawn from
that seed (:mod:`uqpot.train.member_order`), its own training and validation structures (index subsets of
one pool), its own reference energies and force scale
(:meth:`uqpot.nn.potential.Potential.fit_member_references`), its own learning rate, plateau schedule,
early stopping and best epoch (:class:`uqpot.train.optim.MemberAdam`).  Training sets of different sizes
end their epochs at different steps: the members whose chunk is shorter, or exhausted, sit those steps out
(masked: no update of their weights or moments).  Each replicate is then cut out of the stack into its own
model file, finished (post-hoc parts, calibration, test metrics) and written where its separate run writes,
so that nothing downstream knows the difference: the results equal separate runs to float tolerance
(``tests/test_replicates.py``).

On a CPU only methods with one network per seed are stacked: an ensemble is a stack already, and a larger
one trains no faster per member there (``benchmarks/replicates_training.py``: 1.0x at 2-8 seeds; a study's
Dask worker once ran such a stack 2.3x slower still, which was Dask's malloc setting, since removed:
:data:`uqpot.core.executor.NANNY_ENV_UNSET`); on a GPU ensembles are stacked too.  Where the stack cannot reproduce separate runs,
:func:`why_not_stacked` says why and the caller trains them one by one: data that is not one molecule on the dense layout (members' own batches stack only
there), a backbone without the dense layout (MACE, SevenNet), fine-tuning from model files, methods that
stack their own branches (:attr:`uqpot.uq.base.UQMethod.stacks_replicates`), an ensemble with per-member
splits, training settings that the data resolves differently per seed (the stress weight, ``compile``).

A stack in which a loss turned non-finite or training rolled back (which the trainer does for every member at
once) is not used: its seeds train one by one (``fallback.json`` in the stack's folder says so).

The training record of each replicate gives its own best epochs and validation errors; ``wall_seconds`` is
its share of the stack's time (the stack's time over S), the whole under ``stacked_replicates``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path

import numpy as np

from ..core.determinism import member_seeds
from ..core.devices import resolve_device
from ..core.provenance import write_json
from ..data.batch import iterate_batches
from ..data.structures import StructureDataset
from ..evaluation.models import load
from ..nn import modelfile
from ..nn.potential import SHARED_BUFFERS
from ..train.autocompile import choose_compile
from ..train.member_order import one_molecule
from ..train.memory import training_step_peak_mb
from ..train.trainer import Trainer
from .config import member_count, method_of
from .prepare import train_settings
from .run import build_model, finish_model, fit_model


@dataclass
class Replicate:
    """One seed's run of a method: its data and the directory its separate run would write."""

    seed: int
    train: StructureDataset
    val: StructureDataset
    test: StructureDataset
    out: Path
    extra: dict = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return (Path(self.out) / "summary.json").is_file()


#: why the seeds of an ensemble are not stacked on a CPU (:func:`why_not_stacked`)
ENSEMBLE_ON_CPU = ("an ensemble is a stack already, and on a CPU a larger one trains no faster per member (measured "
                   "1.0x at 2-8 seeds)")


def why_not_stacked(model_cfg, uq_cfg, train_cfg, reps: list[Replicate], init=None,
                    stack_ensembles: bool | None = None) -> str | None:
    """None if the replicates ``reps`` can train as one stack equal to their separate runs, and where it pays;
    else why not.  ``stack_ensembles``: stack the seeds of a method with several networks per seed (an
    ensemble) too; default only on a GPU (:data:`ENSEMBLE_ON_CPU`)."""
    if len(reps) < 2:
        return "one replicate"
    if init:
        return "fine-tuning from model files"
    if stack_ensembles is None:
        stack_ensembles = resolve_device(train_cfg.device).type == "cuda"
    if member_count(uq_cfg) > 1 and not stack_ensembles:
        return ENSEMBLE_ON_CPU
    cls = method_of(uq_cfg)
    if not cls.stacks_replicates:
        return f"{uq_cfg.method} stacks its own branches on the member axis"
    if getattr(uq_cfg, "splits", "shared") != "shared":
        return "an ensemble with per-member splits"
    if train_cfg.layout == "sparse" or train_cfg.member_order == "shared":
        return "train.layout 'sparse' or train.member_order 'shared' (members' own batches stack on the dense layout)"
    pool = reduce(lambda a, b: a + b, [r.train + r.val for r in reps])
    why = one_molecule(pool)
    if why is not None:
        return f"the data is not one molecule: {why}"
    probe = build_model(model_cfg, uq_cfg, reps[0].seed, reps[0].train)
    if not getattr(getattr(probe, "potential", probe), "supports_dense", True):
        return "the backbone has no dense layout"
    settings = [_settings(model_cfg, uq_cfg, train_cfg, r) for r in reps]
    if any(s.model_dump() != settings[0].model_dump() for s in settings[1:]):
        return "the data resolves the training settings differently per seed"
    return None


def _settings(model_cfg, uq_cfg, train_cfg, rep: Replicate):
    """The training settings of ``rep``'s separate run, with ``compile`` resolved as that run resolves it."""
    cfg = train_settings(train_cfg, uq_cfg, rep.train)
    model = build_model(model_cfg, uq_cfg, rep.seed, rep.train)
    compiled, _ = choose_compile(cfg.compile, model, rep.train, cfg, resolve_device(cfg.device))
    return cfg.model_copy(update={"compile": compiled})


def fit_replicates(model_cfg, uq_cfg, train_cfg, reps: list[Replicate], stack_dir, console=None) -> list[dict]:
    """Trains the replicates ``reps`` of one method in one stack in ``stack_dir`` (resumed there if
    interrupted), cuts each out into its own ``out/model.pt`` and finishes it there as :func:`fit_model`
    would (``summary.json`` last); replicates already finished are left as they are.  Returns each
    replicate's summary.  The caller checks :func:`why_not_stacked` first."""
    stack_dir = Path(stack_dir)
    if all(r.done for r in reps):
        return [json.loads((Path(r.out) / "summary.json").read_text()) for r in reps]
    cfg = _settings(model_cfg, uq_cfg, train_cfg, reps[0])
    M, S = member_count(uq_cfg), len(reps)
    seeds = [s for r in reps for s in member_seeds(r.seed, M)]
    model = _stack(model_cfg, uq_cfg, seeds, reps)
    pool, subsets = _pool(reps, M)
    stack_dir.mkdir(parents=True, exist_ok=True)
    write_json(stack_dir / "replicates.json", {
        "seeds": [r.seed for r in reps], "members_per_replicate": M, "outs": [str(r.out) for r in reps],
        "pool": "every replicate's training structures, then its validation structures, replicate by replicate"})
    loss_fn = model.make_loss(cfg) if hasattr(model, "make_loss") else None
    trainer = Trainer(model, pool, pool, cfg, stack_dir, seed=reps[0].seed, console=console, loss_fn=loss_fn,
                      extra={"stacked_replicates": [r.seed for r in reps]}, subsets=subsets)
    result = trainer.fit()
    if result.nonfinite_steps or result.rollbacks or not trainer.model_path.is_file():
        # a non-finite loss skips the step of every member and a rollback cuts every member's learning rate: a
        # seed that diverged would change the others' training, which alone it would not; so each seed trains
        # alone instead (a diverging one then fails on its own, with its own message)
        write_json(stack_dir / "fallback.json", {"why": "non-finite steps or rollbacks in the stack",
                                                 "nonfinite_steps": result.nonfinite_steps,
                                                 "rollbacks": result.rollbacks})
        return [json.loads((Path(r.out) / "summary.json").read_text()) if r.done else
                fit_model(model_cfg, uq_cfg, train_cfg, r.seed, r.train, r.val, r.test, r.out, console=console,
                          extra=r.extra) for r in reps]
    wall = result.wall_seconds
    summaries = []
    for s, rep in enumerate(reps):
        if rep.done:
            summaries.append(json.loads((Path(rep.out) / "summary.json").read_text()))
            continue
        members = list(range(s * M, (s + 1) * M))
        training = _training_record(trainer, result, members, wall, S)
        path = _cut(trainer, model_cfg, uq_cfg, rep, members, cfg, training)
        training.update(_step_memory(path, trainer, rep.train, cfg))
        summaries.append(finish_model(cfg, rep.out, path, trainer.device, training, rep.train, rep.val, rep.test,
                                      uq_cfg))
    (stack_dir / "model.pt").unlink(missing_ok=True)  # the stack itself is not a model: its replicates are
    return summaries


def _stack(model_cfg, uq_cfg, seeds: list[int], reps: list[Replicate]):
    """The stacked model: S·M members seeded as the separate runs seed theirs, each replicate's references."""
    model = build_model(model_cfg, uq_cfg, reps[0].seed, reps[0].train, seeds=seeds)
    M = len(seeds) // len(reps)
    getattr(model, "potential", model).fit_member_references([r.train for r in reps for _ in range(M)])
    return model


def _pool(reps: list[Replicate], M: int):
    """(pool, (train subsets, val subsets)): every replicate's structures in one set and, per member, the
    indices of its replicate's training and validation structures in it."""
    pool = reduce(lambda a, b: a + b, [r.train + r.val for r in reps])
    trains, vals, start = [], [], 0
    for r in reps:
        t = np.arange(start, start + len(r.train))
        v = np.arange(start + len(r.train), start + len(r.train) + len(r.val))
        trains += [t] * M
        vals += [v] * M
        start += len(r.train) + len(r.val)
    return pool, (trains, vals)


def _training_record(trainer, result, members: list[int], wall: float, S: int) -> dict:
    """Replicate ``members``' part of the stack's training record, as its separate run would write it."""
    d = result.as_dict()
    for key in ("best_epoch", "best_val_loss", "val_energy_mae", "val_forces_mae"):
        d[key] = [d[key][m] for m in members]
    stops = [trainer.stop_epoch[m] for m in members]
    reasons = [trainer.stopped[m] for m in members]
    if all(e is not None for e in stops):
        d["epochs_run"] = int(max(stops))
        d["stopped"] = "early_stopping" if "early_stopping" in reasons else sorted(reasons)[0]
    d["wall_seconds"] = round(wall / S, 2)
    d["stacked_replicates"] = {"replicates": S, "wall_seconds": wall, "dir": str(trainer.out),
                               "epochs_run": result.epochs_run}
    return d


def _cut(trainer, model_cfg, uq_cfg, rep: Replicate, members: list[int], cfg, training: dict) -> Path:
    """Replicate ``rep``'s networks cut out of the stack's best weights into ``rep.out/model.pt``: the
    model its separate run builds (its members' seeds, references fitted on its training set), with the
    member slices of every stacked tensor."""
    single = build_model(model_cfg, uq_cfg, rep.seed, rep.train)
    getattr(single, "potential", single).fit_reference(rep.train)  # in the dtype the stack's were fitted in
    single = single.to(dtype=trainer.dtype)
    state = single.state_dict()
    lo, hi = members[0], members[-1] + 1
    for name, value in state.items():
        stacked = trainer.best_state[name]
        if name.rsplit(".", 1)[-1] in SHARED_BUFFERS:
            continue  # the replicate's own references, fitted above as its separate run fits them
        if stacked.shape == value.shape:
            value.copy_(stacked)
        elif stacked.shape[0] == trainer.M and stacked.shape[1:] == value.shape[1:]:
            value.copy_(stacked[lo:hi])
        else:
            raise ValueError(f"cannot cut replicate {rep.seed} out of the stack: {name} has shape "
                             f"{tuple(stacked.shape)} there and {tuple(value.shape)} in one replicate")
    out = Path(rep.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = {**rep.extra, "training": {"epoch": training["epochs_run"], "best_epoch": training["best_epoch"],
                                       "val_loss": training["best_val_loss"],
                                       "val_energy_mae": training["val_energy_mae"],
                                       "val_forces_mae": training["val_forces_mae"]},
             "stacked_replicates": {"seeds": trainer.extra["stacked_replicates"], "dir": str(trainer.out)}}
    return modelfile.save_state(single.kind, single.hparams, state, out / "model.pt", extra, dtype=trainer.dtype)


def _step_memory(path: Path, trainer, train: StructureDataset, cfg) -> dict:
    """Peak memory of one training step of the replicate's own network on its first batch (as its separate
    run measures it)."""
    net = load(path, device=trainer.device)
    _, batch = next(iter(iterate_batches(train, cfg.batch_size, net.cutoff, dtype=trainer.dtype,
                                         device=trainer.device, layout=trainer.layout)))
    return {"step_peak_mb": round(training_step_peak_mb(net, trainer.loss_fn, batch), 2),
            "step_peak_batch": int(batch.num_structures)}
