"""The training loop: Adam, halve the learning rate on a validation plateau, early stopping, best-model and
last-epoch checkpoints, resume after any interruption, guard against non-finite losses.

The loop trains M stacked networks at once (a deep ensemble; M = 1 for a single model).  Learning rate,
plateau schedule, early stopping and best checkpoint are kept per member, so that M members trained
together end exactly as each would alone with the same seed and data order.

Files in the output directory:
- ``model.pt``       the best model so far (per member: its lowest validation loss), a uqpot model file;
- ``checkpoint.pt``  the state after the last finished epoch (model, optimiser, schedule, RNG, history);
- ``history.csv``    one line per epoch (mean over members), and ``history_members.csv`` when M > 1;
- ``train.log``      events (resume, rollback, stop).
Both ``.pt`` files are written to a temporary name and renamed, so a kill never leaves a broken file, and
a model with non-finite weights is never written; the history files never repeat an epoch
(:mod:`uqpot.train.history`).

A non-finite training loss (past ``max_nonfinite`` steps of an epoch), non-finite weights or a non-finite
validation loss roll the epoch back to the last checkpoint at a lower learning rate; when that does not
recover, training stops with a :class:`TrainingError` that says it diverged, and the run is not marked
finished (a corrected config can start afresh).

Kept whole (about 490 lines): one class, the training loop, whose epoch, rollback, per-member
plateau and checkpoint steps share the loop's state (the checkpoint writes what resume restores); the
parts with a life of their own are already apart (losses, optimiser, history, member order, memory).
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core import fields as F
from ..nn import modelfile
from ..data.batch import DENSE_MAX_ATOMS, dataset_layout, iterate_batches
from ..data.structures import StructureDataset
from ..core.devices import resolve_device as check_device
from ..core.errors import ConfigError, TrainingError
from ..core.progress import LogProgress
from ..core.provenance import torch_save, write_json
from .history import format_row, rewrite_history
from .losses import EnergyForceLoss
from .member_order import (masked_stacked_batches, member_batches, member_seeds, member_splits,
                           resolve_member_order)
from .autocompile import choose_compile
from .config import TrainConfig
from .optim import MemberAdam, MemberPlateau, clip_per_member



def resolve_device(name: str) -> torch.device:
    """The device ``train.device`` names, checked against this machine (ConfigError if unavailable)."""
    return check_device(name, "train.device")


@dataclass
class TrainResult:
    best_epoch: list  # per member
    best_val_loss: list
    val_energy_mae: list
    val_forces_mae: list
    epochs_run: int
    wall_seconds: float
    stopped: str  # why training ended: "epochs" | "early_stopping" | "min_lr" | "time_limit"
    nonfinite_steps: int = 0
    rollbacks: int = 0
    member_order: str = "shared"  # batch orders of an ensemble's members (uqpot.train.member_order)
    compiled: bool = False  # whether the step ran through torch.compile (train.compile, uqpot.train.autocompile)
    compile_reason: str = ""
    #: the pair layout of the training steps ("dense" or "sparse"; members' own orders stack on the dense one)
    layout: str = ""
    #: the labels the loss trained on (energy, forces[, stress]); equal for every method of a study
    loss_targets: list = field(default_factory=list)
    history: list = field(default_factory=list)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("history")
        return d


def _finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def check_layout(train: StructureDataset, cfg: TrainConfig) -> str:
    """The pair layout a training on ``train`` asks for (``ConfigError`` if the data cannot have it).

    "auto" is the dense layout where it pays, i.e. for molecules under the compiled step (eager, the edge
    list is as fast or faster).  The compiled step runs on the dense layout only: only an explicit
    ``train.compile: true`` is refused on data that needs the edge list; ``compile: auto`` (the default) is
    resolved later (:func:`uqpot.train.autocompile.choose_compile`) and never compiles such data."""
    compiled = cfg.compile is True
    layout = cfg.layout if cfg.layout != "auto" or compiled else "sparse"
    try:
        resolved = dataset_layout(train, layout)
    except ValueError as exc:
        raise ConfigError(None, f"train.layout: {exc}") from None
    if compiled and resolved != "dense":
        raise ConfigError(
            None, "train.compile runs on the dense layout only (molecules of at most "
            f"{DENSE_MAX_ATOMS} atoms, train.layout 'auto' or 'dense'); this training set needs the edge list "
            "(periodic cells, larger structures, or train.layout 'sparse'): set train.compile: false")
    return layout


class Trainer:
    def __init__(self, model, train: StructureDataset, val: StructureDataset, cfg: TrainConfig, out_dir,
                 seed: int = 0, loss_fn=None, extra: dict | None = None, console=None,
                 subsets: tuple[list[np.ndarray], list[np.ndarray]] | None = None):
        if len(train) == 0:
            raise TrainingError("the training set is empty")
        if len(val) == 0:
            raise TrainingError("the validation set is empty: the schedule, early stopping and the best-model "
                                "checkpoint need one")
        self.device = resolve_device(cfg.device)
        # train.compile: auto resolved from the run's size (uqpot.train.autocompile); the trainer sees a bool
        self.compiled, self.compile_reason = choose_compile(cfg.compile, model, train, cfg, self.device)
        cfg = cfg.model_copy(update={"compile": self.compiled})
        self.cfg = cfg
        self.dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        self.model = model.to(device=self.device, dtype=self.dtype)
        self.M = int(getattr(model, "members", 1))
        self.train_set, self.val_set = train, val
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.console = console
        if self.compile_reason != "set in the config":
            self._log(f"train.compile: auto: {self.compile_reason}", echo=False)
        self.seed = seed
        self.loss_fn = loss_fn or EnergyForceLoss(cfg.energy_weight, cfg.forces_weight, cfg.stress_weight or 0.0)
        self.extra = extra or {}
        self.cutoff = model.cutoff
        self.optimizer = MemberAdam(self.model.parameters(), self.M, cfg.lr)
        self.plateau = MemberPlateau(self.M, cfg.lr_factor, cfg.lr_patience, cfg.min_lr)
        self.rng = np.random.default_rng(seed)
        # parameters with the member axis (kept per member at the best epoch); a single network's internal
        # stacks (a partially shared ensemble's branches) are kept whole
        self.member_params = {n for n, p in self.model.named_parameters() if p.shape[0] == self.M}
        self.epoch = 0
        self.best_val = torch.full((self.M,), math.inf, dtype=torch.float64)
        self.best_epoch = torch.full((self.M,), -1, dtype=torch.int64)
        self.best_mae = torch.full((self.M, 2), math.nan, dtype=torch.float64)  # energy, forces
        self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.stopped = [None] * self.M  # per member: why it stopped, None while training
        self.stop_epoch = [None] * self.M  # per member: the epoch after which it stopped
        self.history: list[dict] = []
        self.nonfinite_steps = 0
        self.rollbacks = 0
        self.elapsed = 0.0
        self.finished: str | None = None
        self._best_unsaved = False
        self._val_batches = None
        self.layout = check_layout(train, cfg)
        net = getattr(model, "potential", model)
        # a backbone without the dense layout (MACE) shares one batch order among its members
        # a single network that stacks its own branches on the member axis (shallow and partial ensembles) takes
        # its batches without one
        own_axis = self.M > 1 or getattr(model, "stacks_replicates", True)
        self.member_order = resolve_member_order(train, cfg.member_order if own_axis else "shared", self.M,
                                                 cfg.layout if getattr(net, "supports_dense", True) else "sparse")
        # member m shuffles with its own seed, as a single network with that seed would
        self.member_rngs = ([np.random.default_rng(int(s)) for s in member_seeds(model)]
                            if self.member_order == "independent" else [])
        # an ensemble with per-member splits: every member its own train/val split of the pool (train + val)
        # or, given (``subsets``: replicates of a study stacked, :mod:`uqpot.fit.replicates`), each member's own
        # training and validation structures of the pool, of any sizes
        self.member_subsets = subsets if subsets is not None else member_splits(model, len(train), len(val))
        if self.member_subsets is not None:
            if self.member_order != "independent":
                raise ConfigError(None, "uq.splits: per_member stacks each member's own batches, which needs one "
                                        "molecule on the dense layout (train.member_order auto or independent); "
                                        "use splits: shared")
            # the pool the indices point into: ``train`` itself where the subsets were given, else train + val
            self.train_set = self.val_set = train if subsets is not None else train + val
            write_json(self.out / "member_splits.json", {
                "pool": "the run's training structures, then its validation structures",
                "train": [idx.tolist() for idx in self.member_subsets[0]],
                "val": [idx.tolist() for idx in self.member_subsets[1]]})
        self._step_loss = self._loss
        if cfg.compile:  # one compiled function for forward, forces and loss; its backward is compiled too
            # static shapes: each batch shape compiles once (a last, smaller batch once more); past dynamo's
            # recompile limit further shapes run eager, with the same results
            mode = None if cfg.compile_mode == "default" else cfg.compile_mode
            self._step_loss = torch.compile(self._loss, dynamic=False, mode=mode)
            if mode == "reduce-overhead":  # CUDA graphs: each step is a new replay of the captured graph
                compiled_loss = self._step_loss

                def step_loss(b):
                    torch.compiler.cudagraph_mark_step_begin()
                    return compiled_loss(b)

                self._step_loss = step_loss

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    @property
    def model_path(self) -> Path:
        return self.out / "model.pt"

    def _state(self) -> dict:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "plateau": self.plateau.state_dict(), "epoch": self.epoch, "best_val": self.best_val,
            "best_epoch": self.best_epoch, "best_mae": self.best_mae, "best_state": self.best_state,
            "stopped": ["" if s is None else s for s in self.stopped], "history": list(self.history),
            "stop_epoch": [-1 if e is None else e for e in self.stop_epoch],
            "rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            "member_rngs": [r.bit_generator.state for r in self.member_rngs],
            "nonfinite_steps": self.nonfinite_steps, "rollbacks": self.rollbacks, "elapsed": self.elapsed,
            "finished": self.finished or "",
        }

    def save_checkpoint(self) -> None:
        if not _finite(self.model.state_dict().values()):
            raise TrainingError(f"refusing to checkpoint non-finite weights at epoch {self.epoch}")
        torch_save(self._state(), self.checkpoint_path)  # a full disk: an OSError naming the file

    def load_checkpoint(self) -> bool:
        if not self.checkpoint_path.is_file():
            return False
        try:
            state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        except Exception as exc:
            raise TrainingError(f"{self.checkpoint_path}: cannot resume from this checkpoint "
                                f"({modelfile.describe_load_error(exc, self.checkpoint_path)}); rerun with --restart to train afresh") from None
        try:
            self._restore(state)
        except (KeyError, RuntimeError, TypeError) as exc:
            raise TrainingError(f"{self.checkpoint_path}: this checkpoint does not match this model or this "
                                f"version of uqpot ({type(exc).__name__}: {exc}); delete it to start afresh, or "
                                "evaluate the best model saved beside it") from None
        return True

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.plateau.load_state_dict(state["plateau"])
        self.epoch = int(state["epoch"])
        self.best_val, self.best_epoch, self.best_mae = state["best_val"], state["best_epoch"], state["best_mae"]
        self.best_state = {k: v.to(self.device) for k, v in state["best_state"].items()}
        self.stopped = [s or None for s in state["stopped"]]
        self.stop_epoch = [None if e < 0 else int(e) for e in state.get("stop_epoch", [-1] * self.M)]
        self.history = list(state["history"])
        self.rng.bit_generator.state = state["rng"]
        for r, st in zip(self.member_rngs, state.get("member_rngs", [])):
            r.bit_generator.state = st
        torch.set_rng_state(state["torch_rng"])
        self.nonfinite_steps = int(state["nonfinite_steps"])
        self.rollbacks = int(state["rollbacks"])
        self.elapsed = float(state["elapsed"])
        self.finished = state["finished"] or None

    def _save_best(self) -> None:
        if not _finite(self.best_state.values()):
            raise TrainingError(f"non-finite weights at epoch {self.epoch}: not saved")
        extra = dict(self.extra)
        extra["training"] = {"epoch": self.epoch, "best_epoch": self.best_epoch.tolist(),
                             "val_loss": self.best_val.tolist(), "val_energy_mae": self.best_mae[:, 0].tolist(),
                             "val_forces_mae": self.best_mae[:, 1].tolist()}
        modelfile.save_state(self.model.kind, self.model.hparams, self.best_state, self.model_path, extra,
                             dtype=self.dtype)

    # ------------------------------------------------------------------ loop
    def _train_batches(self):
        """This epoch's training batches: one shared order, or every member its own (stacked)."""
        if self.member_rngs:
            return member_batches(self.train_set, self.cfg.batch_size, self.cutoff, self.member_rngs,
                                  self.dtype, self.device,
                                  subsets=None if self.member_subsets is None else self.member_subsets[0])
        return ((i, b, None) for i, b in self._batches(self.train_set, self.cfg.batch_size, shuffle=True))

    def _batches(self, dataset, batch_size, shuffle):
        return iterate_batches(dataset, batch_size, self.cutoff, dtype=self.dtype, device=self.device,
                               shuffle=shuffle, generator=self.rng, layout=self.layout)

    @property
    def _stress(self) -> dict:
        """``compute_stress`` for the model calls when the loss has a stress term."""
        return {"compute_stress": True} if getattr(self.loss_fn, "needs_stress", False) else {}

    def _loss(self, b):
        return self.loss_fn(self.model.forward_members(b, **self._stress), b)

    def validate(self) -> dict[str, torch.Tensor]:
        """Per-member validation loss and MAEs (M,) (forces by autograd, no graph kept)."""
        if self._val_batches is None:
            bs = self.cfg.val_batch_size or self.cfg.batch_size
            if self.member_subsets is not None:  # every member on its own validation structures
                self._val_batches = [(b, mask) for _, b, mask in masked_stacked_batches(
                    self.val_set, self.member_subsets[1], bs, self.cutoff, self.dtype, self.device)]
            else:
                self._val_batches = [(b, None) for _, b in self._batches(self.val_set, bs, shuffle=False)]
        self.model.eval()
        sums = []
        counts = []  # per member: structures and force components seen
        for b, mask in self._val_batches:
            pred = self.model.forward_members(b, create_graph=False, **self._stress)
            loss, _ = self.loss_fn(pred, b)
            e_abs = (pred[F.ENERGY] - b.energy).abs().sum(-1)
            f_abs = (pred[F.FORCES] - b.forces).abs().sum((-1, -2))
            w = torch.ones(self.M, dtype=torch.float64) if mask is None else mask.to(torch.float64)
            w = w.to(loss.device)
            comps = b.forces.numel() // (b.forces.shape[0] if b.forces.dim() == 3 else 1)
            sums.append(torch.stack([loss.detach().double() * b.num_structures, e_abs.detach().double(),
                                     f_abs.detach().double()]) * w)
            counts.append(torch.stack([w * b.num_structures, w * comps]))
        total = torch.stack(sums).sum(0).cpu()  # (3, M): one host sync per validation
        n = torch.stack(counts).sum(0).cpu()  # (2, M)
        return {"val_loss": total[0] / n[0], "val_energy_mae": total[1] / n[0], "val_forces_mae": total[2] / n[1]}

    def _rollback(self, epoch: int, batch_no: int, what: str = "loss") -> None:
        """Back to the last checkpoint (or the initial state) with a lower learning rate."""
        self.rollbacks += 1
        lr = self.optimizer.lr * self.cfg.lr_factor
        active = lr > 0
        if bool((lr[active] < self.cfg.min_lr).any()) or self.rollbacks > 10:
            where = f", batch {batch_no}" if batch_no >= 0 else " (validation)" if "validation" in what else ""
            raise TrainingError(f"{self.out}: training diverged: non-finite {what} at epoch {epoch}{where}: "
                                f"rolled back {self.rollbacks - 1} time(s) and cut the learning rate from "
                                f"{self.cfg.lr:.3g} to {lr.max().item():.3g} without recovering; no model with "
                                f"non-finite weights was saved and the run is not marked finished: lower "
                                f"train.lr (now {self.cfg.lr:g}) and rerun (with --restart where a model from "
                                "earlier epochs exists)")
        if self.checkpoint_path.is_file():
            state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        else:
            self.model.load_state_dict(self._initial_state["model"])
            self.optimizer.load_state_dict(self._initial_state["optimizer"])
        self.optimizer.lr = lr
        where = f"batch {batch_no}" if batch_no >= 0 else "end"
        self._log(f"epoch {epoch} ({where}): non-finite {what}; rolled back to the last checkpoint, "
                  f"learning rate cut to {lr.max().item():.3g}", echo=self.rollbacks == 1)

    def _log(self, msg: str, echo: bool = True) -> None:
        with open(self.out / "train.log", "a") as fh:
            fh.write(msg + "\n")
        if self.console is not None and echo:
            self.console.print(msg, markup=False, highlight=False, soft_wrap=True)

    def train_epoch(self, epoch: int) -> float:
        self.model.train()
        total = torch.zeros(self.M, dtype=torch.float64, device=self.device)
        n = 0
        bad = 0
        for batch_no, (_, b, mask) in enumerate(self._train_batches()):
            loss, _ = self._step_loss(b)
            if mask is not None:  # replicates' tails: the members left out take no step (their loss is not used)
                loss = loss * mask.to(device=loss.device, dtype=loss.dtype)
            if not bool(torch.isfinite(loss).all()):
                self.nonfinite_steps += 1
                bad += 1
                self.optimizer.zero_grad()
                if bad > self.cfg.max_nonfinite:
                    self._rollback(epoch, batch_no)
                    return math.nan
                continue
            self.optimizer.zero_grad()
            loss.sum().backward()  # members are independent: each gets the gradient of its own loss
            if self.cfg.grad_clip:
                clip_per_member(self.optimizer.params, self.cfg.grad_clip, self.M)
            self.optimizer.step(mask)
            total += loss.detach().double() * b.num_structures
            n += b.num_structures
        if not _finite(self.model.parameters()):
            self._rollback(epoch, -1)
            return math.nan
        return float(total.mean()) / max(n, 1)

    def fit(self) -> TrainResult:
        if self.load_checkpoint():
            self._log(f"resumed from {self.checkpoint_path} after epoch {self.epoch}")
            if not self.model_path.is_file() and bool((self.best_epoch >= 0).any()):
                self._save_best()  # interrupted between the checkpoint and the best model's write
            if self.finished == "epochs" and self.epoch < self.cfg.epochs:  # more epochs asked for
                self.finished = None
        self._initial_state = {"model": copy.deepcopy(self.model.state_dict()),
                               "optimizer": copy.deepcopy(self.optimizer.state_dict())}
        if self.finished is None:
            self._loop()
        elif not self.model_path.is_file():
            raise TrainingError(f"{self.out}: this run finished without a model (its validation loss was never "
                                "finite); rerun with a corrected config and --restart")
        return self._result()

    def _improve(self, epoch: int, val: dict) -> None:
        """Per member: keep the weights of the lowest validation loss so far."""
        better = (val["val_loss"] < self.best_val) & torch.tensor([s is None for s in self.stopped])
        if not bool(better.any()):
            return
        self.best_val = torch.where(better, val["val_loss"], self.best_val)
        self.best_epoch = torch.where(better, torch.full_like(self.best_epoch, epoch), self.best_epoch)
        mae = torch.stack([val["val_energy_mae"], val["val_forces_mae"]], dim=1)
        self.best_mae = torch.where(better.unsqueeze(1), mae, self.best_mae)
        idx = torch.nonzero(better).flatten().to(self.device)
        for k, v in self.model.state_dict().items():
            if k in self.member_params:
                self.best_state[k].index_copy_(0, idx, v.detach().index_select(0, idx))
            else:
                self.best_state[k].copy_(v.detach())
        self._best_unsaved = True  # written after the epoch's checkpoint (see _loop)

    def _loop(self) -> None:
        cfg = self.cfg
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            TextColumn("{task.fields[stats]}"), disable=not cfg.progress, console=self.console)
        hist_path, mem_path = self.out / "history.csv", self.out / "history_members.csv"
        self._rewrite_history(hist_path, mem_path)
        # where the output is a file (a cluster job, nohup), a plain line at a bounded interval instead of the bar
        log_progress = LogProgress(f"training {self.out}", cfg.epochs, "epochs", done=self.epoch,
                                   enabled=cfg.progress, stream=getattr(self.console, "file", None))
        with progress, open(hist_path, "a") as hist, open(mem_path, "a") if self.M > 1 else open(os.devnull, "w") as mh:
            task = progress.add_task("train", total=cfg.epochs, completed=self.epoch, stats="")
            while self.epoch < cfg.epochs:
                t0 = time.perf_counter()
                epoch = self.epoch + 1
                train_loss = self.train_epoch(epoch)
                if math.isnan(train_loss):  # rolled back: repeat this epoch at the lower lr
                    continue
                val = self.validate()
                if not bool(torch.isfinite(val["val_loss"]).all()):  # diverged: back, at a lower lr
                    self._rollback(epoch, -1, "validation loss")
                    continue
                lr_before = self.optimizer.lr.clone()
                active = torch.tensor([s is None for s in self.stopped])
                new_lr = self.plateau.step(val["val_loss"], self.optimizer.lr)
                self.optimizer.lr = torch.where(active, new_lr, self.optimizer.lr)
                self.epoch = epoch
                self._improve(epoch, val)
                self.elapsed += time.perf_counter() - t0
                row = {"epoch": epoch, "lr": float(lr_before[active].max()) if active.any() else 0.0,
                       "train_loss": train_loss, **{k: float(v.mean()) for k, v in val.items()},
                       "seconds": round(self.elapsed, 3)}
                self.history.append(row)
                hist.write(format_row(row) + "\n")
                hist.flush()
                for m in range(self.M if self.M > 1 else 0):
                    mh.write(f"{epoch},{m},{lr_before[m]:.6g},{val['val_loss'][m]:.6g},"
                             f"{val['val_energy_mae'][m]:.6g},{val['val_forces_mae'][m]:.6g}\n")
                mh.flush()
                self._member_stops(epoch)
                stop = None
                if all(s is not None for s in self.stopped):
                    reasons = {s for s in self.stopped}
                    stop = "early_stopping" if "early_stopping" in reasons else sorted(reasons)[0]
                elif epoch >= cfg.epochs:
                    stop = "epochs"
                elif cfg.max_hours and self.elapsed > cfg.max_hours * 3600:
                    stop = "time_limit"
                # a time limit pauses the run (resumable); the other reasons end it
                self.finished = stop if stop != "time_limit" else None
                # the checkpoint first, then the best model: a failed write (a full disk) never leaves a model.pt
                # that no checkpoint stands behind; the checkpoint holds the best weights, so a model.pt lost
                # between the two writes is written again on resume
                self.save_checkpoint()
                if self._best_unsaved:
                    self._save_best()
                    self._best_unsaved = False
                progress.update(task, completed=epoch, stats=(
                    f"loss {train_loss:.3g} | val E {row['val_energy_mae']:.3f} F {row['val_forces_mae']:.3f} "
                    f"| lr {self.optimizer.lr.max().item():.1e}"))
                log_progress.update(epoch, note=f"val E MAE {row['val_energy_mae']:.3f}, F MAE "
                                                f"{row['val_forces_mae']:.3f}")
                if stop:
                    self._log(f"stopped after epoch {epoch}: {stop}")
                    break

    def _rewrite_history(self, hist_path: Path, mem_path: Path) -> None:
        rewrite_history(hist_path, mem_path if self.M > 1 else None, self.history, self.epoch)

    def _member_stops(self, epoch: int) -> None:
        cfg = self.cfg
        for m in range(self.M):
            if self.stopped[m] is not None:
                continue
            stall = int(self.plateau.stall[m])
            reason = None
            if cfg.early_stopping and stall >= cfg.early_stopping:
                reason = "early_stopping"
            elif cfg.stop_at_min_lr and float(self.optimizer.lr[m]) <= cfg.min_lr * (1 + 1e-9) and stall > cfg.lr_patience:
                reason = "min_lr"
            if reason:
                self.stopped[m] = reason
                self.stop_epoch[m] = epoch
                self.optimizer.lr[m] = 0.0  # frozen from here on: its best weights are kept
                if self.M > 1:
                    self._log(f"member {m} stopped after epoch {epoch}: {reason}")

    def _result(self) -> TrainResult:
        return TrainResult(
            best_epoch=self.best_epoch.tolist(), best_val_loss=self.best_val.tolist(),
            val_energy_mae=self.best_mae[:, 0].tolist(), val_forces_mae=self.best_mae[:, 1].tolist(),
            epochs_run=self.epoch, wall_seconds=round(self.elapsed, 2), stopped=self.finished or "epochs",
            member_order=self.member_order, compiled=self.compiled, compile_reason=self.compile_reason,
            layout="dense" if self.member_rngs else dataset_layout(self.train_set, self.layout),
            nonfinite_steps=self.nonfinite_steps, rollbacks=self.rollbacks,
            loss_targets=list(getattr(self.loss_fn, "targets", ("energy", "forces"))), history=self.history)
