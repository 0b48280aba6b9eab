"""The training loop: Adam, halve the learning rate on a validation plateau, early stopping, best-model and
last-epoch checkpoints, resume after any interruption, guard against non-finite losses.

Files in the output directory:
- ``model.pt``       the best model so far (lowest validation loss), a uqpot model file;
- ``checkpoint.pt``  the state after the last finished epoch (model, optimiser, scheduler, RNG, history);
- ``history.csv``    one line per epoch (lr, train loss, validation loss and MAEs, wall time).
Both ``.pt`` files are written to a temporary name and renamed, so a kill never leaves a broken file, and
a model with non-finite weights is never written.
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

from .. import fields as F
from .. import modelfile
from ..config import TrainConfig
from ..data.batch import collate_dataset, iterate_batches
from ..data.structures import StructureDataset
from ..errors import TrainingError
from .losses import EnergyForceLoss

HISTORY_COLUMNS = ("epoch", "lr", "train_loss", "val_loss", "val_energy_mae", "val_forces_mae", "seconds")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class TrainResult:
    best_epoch: int
    best_val_loss: float
    val_energy_mae: float
    val_forces_mae: float
    epochs_run: int
    wall_seconds: float
    stopped: str  # "epochs" | "early_stopping" | "min_lr" | "time_limit"
    nonfinite_steps: int = 0
    rollbacks: int = 0
    history: list = field(default_factory=list)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("history")
        return d


def _params_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


class Trainer:
    def __init__(self, model, train: StructureDataset, val: StructureDataset, cfg: TrainConfig, out_dir,
                 seed: int = 0, loss_fn=None, extra: dict | None = None, console=None):
        if len(train) == 0:
            raise TrainingError("the training set is empty")
        if len(val) == 0:
            raise TrainingError("the validation set is empty: the schedule, early stopping and the best-model "
                                "checkpoint need one")
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        self.model = model.to(device=self.device, dtype=self.dtype)
        self.train_set, self.val_set = train, val
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.seed = seed
        self.loss_fn = loss_fn or EnergyForceLoss(cfg.energy_weight, cfg.forces_weight)
        self.extra = extra or {}
        self.console = console
        self.cutoff = model.cutoff
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience, min_lr=cfg.min_lr)
        self.rng = np.random.default_rng(seed)
        self.epoch = 0
        self.best = {"epoch": -1, "val_loss": math.inf, "val_energy_mae": math.nan, "val_forces_mae": math.nan}
        self.history: list[dict] = []
        self.nonfinite_steps = 0
        self.rollbacks = 0
        # epochs since the validation loss last improved by more than the scheduler's threshold (rel. 1e-4)
        self.stall = 0
        self.stall_ref = math.inf
        self.elapsed = 0.0
        self.finished: str | None = None
        self._val_batches = None

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    @property
    def model_path(self) -> Path:
        return self.out / "model.pt"

    def _state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "best": dict(self.best),
            "history": list(self.history),
            "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "nonfinite_steps": self.nonfinite_steps,
            "rollbacks": self.rollbacks,
            "stall": self.stall,
            "stall_ref": self.stall_ref,
            "elapsed": self.elapsed,
            "finished": self.finished,
        }

    def save_checkpoint(self) -> None:
        if not _params_finite(self.model):
            raise TrainingError(f"refusing to checkpoint non-finite weights at epoch {self.epoch}")
        tmp = self.checkpoint_path.with_name(f"checkpoint.pt.tmp{os.getpid()}")
        torch.save(self._state(), tmp)
        os.replace(tmp, self.checkpoint_path)

    def load_checkpoint(self) -> bool:
        if not self.checkpoint_path.is_file():
            return False
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.best = dict(state["best"])
        self.history = list(state["history"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        self.nonfinite_steps = int(state["nonfinite_steps"])
        self.rollbacks = int(state["rollbacks"])
        self.stall = int(state["stall"])
        self.stall_ref = float(state["stall_ref"])
        self.elapsed = float(state["elapsed"])
        self.finished = state["finished"]
        return True

    def _save_best(self) -> None:
        if not _params_finite(self.model):
            raise TrainingError(f"non-finite weights at epoch {self.epoch}: not saved")
        extra = dict(self.extra)
        extra["training"] = {"epoch": self.epoch, "val_loss": self.best["val_loss"],
                             "val_energy_mae": self.best["val_energy_mae"],
                             "val_forces_mae": self.best["val_forces_mae"]}
        modelfile.save(self.model, self.model_path, extra=extra)

    # ------------------------------------------------------------------ loop
    def _batches(self, dataset, batch_size, shuffle):
        return iterate_batches(dataset, batch_size, self.cutoff, dtype=self.dtype, device=self.device,
                               shuffle=shuffle, generator=self.rng)

    def validate(self) -> dict:
        """Loss and MAEs on the validation set (forces by autograd, no graph kept)."""
        if self._val_batches is None:
            bs = self.cfg.val_batch_size or self.cfg.batch_size
            self._val_batches = [b for _, b in self._batches(self.val_set, bs, shuffle=False)]
        self.model.eval()
        tot = {"loss": 0.0, "energy_abs": 0.0, "forces_abs": 0.0}
        n_struct = n_comp = 0
        sums = []
        for b in self._val_batches:
            pred = self.model(b, create_graph=False)
            loss, _ = self.loss_fn(pred, b)
            e_abs = (pred[F.ENERGY] - b.energy).abs().sum()
            f_abs = (pred[F.FORCES] - b.forces).abs().sum()
            sums.append(torch.stack([loss.detach().double() * b.num_structures, e_abs.detach().double(),
                                     f_abs.detach().double()]))
            n_struct += b.num_structures
            n_comp += b.forces.numel()
        total = torch.stack(sums).sum(0).tolist()  # one host sync per validation
        tot = {"val_loss": total[0] / n_struct, "val_energy_mae": total[1] / n_struct,
               "val_forces_mae": total[2] / n_comp}
        return tot

    def _rollback(self, epoch: int, batch_no: int) -> None:
        """Back to the last checkpoint (or the initial state) with a lower learning rate."""
        self.rollbacks += 1
        lr = self.optimizer.param_groups[0]["lr"] * self.cfg.lr_factor
        if lr < self.cfg.min_lr or self.rollbacks > 10:
            raise TrainingError(f"non-finite loss at epoch {epoch}, batch {batch_no}: rolled back "
                                f"{self.rollbacks - 1} time(s) and cut the learning rate to {lr:.3g} without "
                                "recovering; no model with non-finite weights was saved")
        if self.checkpoint_path.is_file():
            state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        else:
            self.model.load_state_dict(self._initial_state["model"])
            self.optimizer.load_state_dict(self._initial_state["optimizer"])
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self._log(f"epoch {epoch} batch {batch_no}: non-finite loss; rolled back to the last checkpoint, "
                  f"learning rate cut to {lr:.3g}")

    def _log(self, msg: str) -> None:
        with open(self.out / "train.log", "a") as fh:
            fh.write(msg + "\n")
        if self.console is not None:
            self.console.print(msg)

    def train_epoch(self, epoch: int) -> float:
        self.model.train()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        n = 0
        bad = 0
        for batch_no, (_, b) in enumerate(self._batches(self.train_set, self.cfg.batch_size, shuffle=True)):
            pred = self.model(b)
            loss, _ = self.loss_fn(pred, b)
            if not bool(torch.isfinite(loss)):
                self.nonfinite_steps += 1
                bad += 1
                self.optimizer.zero_grad(set_to_none=True)
                if bad > self.cfg.max_nonfinite:
                    self._rollback(epoch, batch_no)
                    return math.nan
                continue
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
            total += loss.detach().double() * b.num_structures
            n += b.num_structures
        if not _params_finite(self.model):
            self._rollback(epoch, -1)
            return math.nan
        return float(total) / max(n, 1)

    def fit(self) -> TrainResult:
        cfg = self.cfg
        resumed = self.load_checkpoint()
        if resumed:
            self._log(f"resumed from {self.checkpoint_path} after epoch {self.epoch}")
            if self.finished == "epochs" and self.epoch < cfg.epochs:  # more epochs asked for
                self.finished = None
        self._initial_state = {"model": copy.deepcopy(self.model.state_dict()),
                               "optimizer": copy.deepcopy(self.optimizer.state_dict())}
        if self.finished is None:
            self._loop()
        return self._result()

    def _loop(self) -> None:
        cfg = self.cfg
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            TextColumn("{task.fields[stats]}"), disable=not cfg.progress,
                            console=self.console)
        write_header = not (self.out / "history.csv").is_file()
        with progress, open(self.out / "history.csv", "a") as hist:
            if write_header:
                hist.write(",".join(HISTORY_COLUMNS) + "\n")
            task = progress.add_task("train", total=cfg.epochs, completed=self.epoch, stats="")
            while self.epoch < cfg.epochs:
                t0 = time.perf_counter()
                epoch = self.epoch + 1
                train_loss = self.train_epoch(epoch)
                if math.isnan(train_loss):  # rolled back: repeat this epoch at the lower lr
                    continue
                val = self.validate()
                lr_before = self.optimizer.param_groups[0]["lr"]
                self.scheduler.step(val["val_loss"])
                lr = self.optimizer.param_groups[0]["lr"]
                self.epoch = epoch
                if val["val_loss"] < self.best["val_loss"]:
                    self.best = {"epoch": epoch, **val}
                    self._save_best()
                if val["val_loss"] < self.stall_ref * (1 - 1e-4):
                    self.stall_ref, self.stall = val["val_loss"], 0
                else:
                    self.stall += 1
                self.elapsed += time.perf_counter() - t0
                row = {"epoch": epoch, "lr": lr_before, "train_loss": train_loss, **val,
                       "seconds": round(self.elapsed, 3)}
                self.history.append(row)
                hist.write(",".join(f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c])
                                    for c in HISTORY_COLUMNS) + "\n")
                hist.flush()
                stop = None
                if epoch >= cfg.epochs:
                    stop = "epochs"
                elif cfg.early_stopping and self.stall >= cfg.early_stopping:
                    stop = "early_stopping"
                elif cfg.stop_at_min_lr and lr <= cfg.min_lr * (1 + 1e-9) and self.stall > cfg.lr_patience:
                    stop = "min_lr"
                elif cfg.max_hours and self.elapsed > cfg.max_hours * 3600:
                    stop = "time_limit"
                # a time limit pauses the run (resumable); the other reasons end it
                self.finished = stop if stop != "time_limit" else None
                self.save_checkpoint()
                progress.update(task, completed=epoch, stats=(
                    f"loss {train_loss:.3g} | val E {val['val_energy_mae']:.3f} F {val['val_forces_mae']:.3f} "
                    f"| lr {lr:.1e}"))
                if stop:
                    self._log(f"stopped after epoch {epoch}: {stop}")
                    break

    def _result(self) -> TrainResult:
        return TrainResult(
            best_epoch=int(self.best["epoch"]),
            best_val_loss=float(self.best["val_loss"]),
            val_energy_mae=float(self.best["val_energy_mae"]),
            val_forces_mae=float(self.best["val_forces_mae"]),
            epochs_run=self.epoch,
            wall_seconds=round(self.elapsed, 2),
            stopped=self.finished or "epochs",
            nonfinite_steps=self.nonfinite_steps,
            rollbacks=self.rollbacks,
            history=self.history,
        )
