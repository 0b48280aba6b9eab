"""``uqpot train CONFIG.yaml``: validate everything, lock the run directory, train, evaluate the best model.

Nothing is written before :func:`uqpot.fit.prepare.prepare_run` has checked the data, the split, the
device and the output directory.  The output directory then receives, before training starts:
``config.yaml`` (the resolved config), ``split.json`` (the indices of every split), ``run.json`` (seed,
versions, hardware, data files with their SHA-256); during training the trainer's files; at the end
``summary.json`` (written last: its presence marks a finished run).  ``run.lock`` exists while a process
trains there (:class:`uqpot.core.rundir.RunLock`).

Rerunning the same command resumes an interrupted run.  A different config (the device, the number of
epochs, the time budget and the progress display aside) or changed data files in the same directory are
refused, unless ``restart`` is asked for (``uqpot train --restart``), which removes the run's files and
trains afresh; a directory that holds no trained model yet (an earlier start that failed) is simply reused.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import yaml

from ..nn import modelfile
from ..core.config_io import dump_config
from ..data.splits import load_split, save_split
from ..core.determinism import member_seeds
from ..core.devices import resolve_device
from ..core.errors import ConfigError, TrainingError
from ..evaluation.evaluate import assess, is_uq, write_predictions, write_table
from ..evaluation.models import load
from ..nn.backbone import build_potential
from ..core.provenance import versions, write_json
from ..core.rundir import RunLock, clear_run, place, recorded_place, refuse_changed_files, setting_differences, sha256_file
from ..train.memory import training_step_peak_mb
from ..train.stages import run_stage
from ..train.trainer import Trainer
from ..uq.options import upgrade_uq_section
from .config import RunConfig, member_count, method_of, trains_plain_potential, trains_stress  # noqa: F401  (public here)
from .finetune import build_from, freeze, refit_shift, reinit_readout
from .prepare import PreparedRun, make_split, prepare_run, train_settings  # noqa: F401  (make_split: public here before)
from .wrap import fit_and_calibrate

#: train settings that may change between an interrupted run and its resumption
RESUMABLE = ("epochs", "max_hours", "progress", "device")


def _normalised(d: dict) -> dict:
    """A config mapping reduced to what defines the run (what :data:`RESUMABLE` lists taken out, split
    defaults filled in), so that configs written by earlier versions compare equal to the same run now."""
    d = json.loads(json.dumps(d, default=str))
    for key in RESUMABLE:
        d.get("train", {}).pop(key, None)
    sp, data = d.setdefault("split", {}), d.get("data", {})
    if sp.get("train_file") or data.get("train_path"):
        for k in ("train", "test") + (("val",) if sp.get("val_file") or data.get("val_path") else ()):
            sp.pop(k, None)
    else:
        sp["train"] = 0.8 if sp.get("train") is None else sp["train"]
        sp["val"] = 0.1 if sp.get("val") is None else sp["val"]
    return d


def _stored_config(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(path, f"cannot read the stored config of this run ({type(exc).__name__}); choose another "
                                "'out', or use --restart to train afresh there") from None
    try:  # through the current schema, so that sections added since with their defaults compare equal
        raw["uq"] = upgrade_uq_section(raw.get("uq", {}))  # written before methods declared their options
        return RunConfig.model_validate(_normalised(raw) | {"train": raw.get("train", {})}).model_dump(mode="json")
    except Exception:
        return raw


def flat_settings(d, prefix=""):
    """A nested config mapping as {"a.b.c": value}."""
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_settings(v, key + "."))
        else:
            out[key] = v
    return out


#: settings of a training config that name files: compared as files, not as strings
PATH_KEYS = ("data.path", "data.train_path", "data.val_path", "data.test_path", "split.train_file",
             "split.val_file", "split.test_file")


def config_differences(previous: dict, current: dict, place_then: dict | None = None,
                       place_now: dict | None = None) -> list[str]:
    """``key (old then, new now)`` for every setting that differs between two configs; ``out`` is not
    compared (the same folder spelled another way, or moved, is the same run) and file paths are compared as
    files, each resolved from where its run was started (:func:`uqpot.core.rundir.setting_differences`)."""
    a, b = flat_settings(_normalised(previous)), flat_settings(_normalised(current))
    return setting_differences(a, b, PATH_KEYS, place_then, place_now)


def check_resume(out: Path, cfg: RunConfig, prep: PreparedRun, restart: bool = False) -> str:
    """What to do with ``out`` (the run lock held): 'new', 'resume', or 'fresh' (earlier files removed).

    Refused (ConfigError): a different config, or data files whose content changed since the run
    started, unless ``restart``; files of a run without its config.yaml."""
    had = [n for n in ("model.pt", "checkpoint.pt", "history.csv", "summary.json") if (out / n).exists()]
    if restart:
        return "fresh" if clear_run(out) else "new"
    old = out / "config.yaml"
    if not old.is_file():
        if had:
            raise ConfigError(None, f"out: {out} holds the files of a run ({', '.join(had)}) but no config.yaml, so "
                                    "it cannot be resumed safely; choose another 'out', or use --restart to train "
                                    "afresh there")
        return "new"
    stored = _stored_config(old)
    run_json = _read_run_json(out)
    now = place(out)
    diff = config_differences(stored, cfg.model_dump(mode="json"),
                              recorded_place(run_json, stored.get("out") if isinstance(stored, dict) else None, now),
                              now)
    if diff and not (out / "model.pt").exists():  # nothing trained there yet: nothing to keep
        clear_run(out)
        return "fresh"
    if diff:
        raise ConfigError(old, f"the output directory {out} holds a run with a different config (differs in: "
                               f"{'; '.join(diff)}); choose another 'out', or use --restart to train afresh there")
    refuse_changed_files(run_json.get("data_files", {}), prep.hashes,
                         f"resuming the run in {out} would mix a model trained on the old data with metrics on the "
                         "new: restore the file, choose another 'out', or use --restart to train afresh there")
    if (out / "split.json").is_file():
        old_split = load_split(out / "split.json")
        if any(k not in old_split or not np.array_equal(old_split[k], prep.split[k]) for k in prep.split):
            raise ConfigError(out / "split.json", "the stored split differs from the one this config makes; choose "
                                                  "another 'out', or use --restart to train afresh there")
    return "resume" if had else "new"


def _read_run_json(out: Path) -> dict:
    try:
        return json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def potential_hparams(model_cfg, uq_cfg, seed: int, train=None) -> dict:
    """The network's hyper-parameters: the model section (its backbone's options,
    :meth:`~uqpot.nn.backbone.BackboneOptions.potential_hparams`), and the number of stacked members the
    method trains (``members_for``), seeded by :func:`uqpot.core.determinism.member_seeds`; a backbone sized from its data (MACE)
    reads the training set ``train``."""
    members = member_count(uq_cfg)
    return model_cfg.potential_hparams(members, member_seeds(seed, members), train)


def build_model(model_cfg, uq_cfg, seed: int, train=None, seeds: list[int] | None = None):
    """What the trainer trains: a plain potential (``uq.method: none`` and the post-hoc methods, wrapped
    after training) or the configured UQ method around one; ``seeds``: every stacked network's seed instead
    of the method's members seeded from ``seed`` (the replicates of a study in one stack)."""
    method = method_of(uq_cfg)
    hp = (potential_hparams(model_cfg, uq_cfg, seed, train) if seeds is None
          else model_cfg.potential_hparams(len(seeds), list(seeds), train))
    return build_potential(hp) if method.trains_plain_potential() else method.from_options(uq_cfg, hp)


#: training settings that choose how fast a step runs, not what it computes (to float tolerance)
SPEED_KEYS = ("compile",)


def kept_speed_choices(stored_train: dict, train) -> tuple[dict, str | None]:
    """The :data:`SPEED_KEYS` a resumed run keeps from its stored ``train`` section: those ``train`` (a
    TrainConfig) leaves at ``auto`` while the run was started with an explicit value (runs started before
    ``auto`` existed stored ``compile: false``), so that it finishes on the path it began on; with the
    line that says so (None when nothing is kept)."""
    kept = {k: stored_train[k] for k in SPEED_KEYS
            if getattr(train, k) == "auto" and isinstance(stored_train.get(k), bool)}
    if not kept:
        return {}, None
    return kept, (f"resumed with the stored {', '.join(f'train.{k}: {v}' for k, v in kept.items())} (this run "
                  "asks for auto): it goes on as it started")


def _started_speed(out: Path, cfg: RunConfig):
    """``(cfg, note)``: ``cfg`` with the speed choices the run in ``out`` keeps (:func:`kept_speed_choices`)."""
    try:
        stored = (yaml.safe_load((out / "config.yaml").read_text()) or {}).get("train") or {}
        kept, note = kept_speed_choices(stored, cfg.train)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
        return cfg, None  # no run there, or one check_resume refuses with its own message
    return (cfg.model_copy(update={"train": cfg.train.model_copy(update=kept)}) if kept else cfg), note


def run_training(cfg: RunConfig, console=None, config_path=None, restart: bool = False) -> dict:
    """Trains the run ``cfg`` (resuming it when interrupted); ``config_path`` is the user's config file
    (never overwritten), ``restart`` removes an earlier run's files in ``cfg.out`` first."""
    prep = prepare_run(cfg, config_path)  # validates everything; writes nothing
    out = prep.out
    with RunLock(out, "uqpot train") as lock:
        note = lock.stale_note()
        kept = None
        if not restart:
            cfg, kept = _started_speed(out, cfg)
        state = check_resume(out, cfg, prep, restart)
        for msg in [note] * bool(note) + prep.warnings + [kept] * bool(kept):
            _note(out, console, msg)
        if state == "fresh":
            _note(out, console, f"started afresh in {out} (the files of the earlier run were removed)")
        dump_config(cfg, out / "config.yaml")
        save_split(prep.split, out / "split.json")
        write_json(out / "run.json", {
            "seed": cfg.seed, "data": str(cfg.data.path or cfg.data.train_path), "data_files": prep.hashes,
            "n_structures": prep.n_structures, "split_sizes": {k: len(v) for k, v in prep.split.items()},
            "device": str(prep.device), "versions": versions(), **place(out)})
        return fit_model(cfg.model, cfg.uq, cfg.train, cfg.seed, prep.train, prep.val, prep.test, out, console,
                         extra={"seed": cfg.seed, "data": str(cfg.data.path or cfg.data.train_path)})


def _note(out: Path, console, msg: str) -> None:
    with open(out / "train.log", "a") as fh:
        fh.write(msg + "\n")
    if console is not None:
        console.print(f"note: {msg}", markup=False, highlight=False, soft_wrap=True)


def fit_model(model_cfg, uq_cfg, train_cfg, seed: int, train, val, test, out, console=None,
              extra: dict | None = None, init: list | None = None, finetune=None) -> dict:
    """Builds the model, fits reference energies on ``train``, trains (resuming from ``out`` if
    interrupted), runs the method's further stages, wraps a post-hoc method around the trained potential,
    fits post-hoc parts and the calibration, and writes ``summary.json`` (last).

    ``init``: model files to fine-tune instead (:mod:`uqpot.fit.finetune`): the network is sized as
    theirs (``model_cfg`` is not used), starts from their weights, and its reference energies are shifted
    to ``train``; the files' names and sha256 go into the model file.  ``finetune``
    (:class:`uqpot.fit.finetune.FinetuneSettings`): which of its weights train (:func:`uqpot.fit.finetune.freeze`)
    and whether its readout starts afresh (:func:`uqpot.fit.finetune.reinit_readout`)."""
    train_cfg = train_settings(train_cfg, uq_cfg, train)
    if init:
        init = [Path(p) for p in init]
        model = build_from([load(p) for p in init], uq_cfg, seed, member_count(uq_cfg), trains_plain_potential(uq_cfg),
                           [str(p) for p in init])
        readout = finetune.readout if finetune is not None else "keep"
        if readout == "reinit":
            reinit_readout(model)
        shift = refit_shift(model, train)
        extra = {**(extra or {}), "fine_tuned_from": [{"file": str(p), "sha256": sha256_file(p)} for p in init],
                 "reference_shift": [float(x) for x in shift],
                 "fine_tuning": {**freeze(model, finetune), "readout": readout}}
    else:
        model = build_model(model_cfg, uq_cfg, seed, train)
        model.fit_reference(train)
    loss_fn = model.make_loss(train_cfg) if hasattr(model, "make_loss") else None
    trainer = Trainer(model, train, val, train_cfg, out, seed=seed, console=console, loss_fn=loss_fn,
                      extra=extra)
    result = trainer.fit()
    return finish_run(train_cfg, out, trainer, result, train, val, test, uq_cfg)


def _step_memory(trainer, train, batch_size: int) -> dict:
    """Peak memory of one training step on the first training batch (Fig. 2b's memory figure)."""
    if not len(train):
        return {}
    _, batch = next(iter(trainer._batches(train, batch_size, shuffle=False)))
    return {"step_peak_mb": round(training_step_peak_mb(trainer.model, trainer.loss_fn, batch), 2),
            "step_peak_batch": int(batch.num_structures)}


def finish_posthoc(model, uq_cfg, train_cfg, train, val, batch_size: int) -> tuple:
    """After training: a post-hoc method wraps the trained potential; then the method's stages, its
    post-hoc fit and the validation calibration.  Returns (the model, the model file's new ``extra``)."""
    if uq_cfg is not None and not method_of(uq_cfg).plain and getattr(model, "kind", "") == "potential":
        model = method_of(uq_cfg).wrap(model, uq_cfg)
    posthoc = {}
    for stage in model.stages(train_cfg):
        posthoc.update(run_stage(model, stage, train, val, batch_size))
    fitted = fit_and_calibrate(model, train, val, batch_size)
    fitted["posthoc"] = {**posthoc, **fitted["posthoc"]}
    return model, fitted


def finish_run(train_cfg, out, trainer, result, train, val, test, uq_cfg=None) -> dict:
    """Post-hoc parts (a wrapped method, stages, the GMM, LLPR) and the validation calibration go into the
    model file; then val/test metrics."""
    if not trainer.model_path.is_file():  # the validation loss was never finite: nothing was worth saving
        raise TrainingError(f"{Path(out)}: training diverged: the validation loss was never finite in "
                            f"{result.epochs_run} epoch(s), so no model was saved; lower train.lr (now "
                            f"{train_cfg.lr:g}) and rerun (this directory holds no model, so the corrected config "
                            "starts afresh)")
    training = {**result.as_dict(), **_step_memory(trainer, train, train_cfg.batch_size)}
    return finish_model(train_cfg, out, trainer.model_path, trainer.device, training, train, val, test, uq_cfg)


def finish_model(train_cfg, out, model_path: Path, device, training: dict, train, val, test, uq_cfg=None) -> dict:
    """The trained model in ``model_path`` finished: the method's post-hoc parts and the validation
    calibration written into its file, then val/test metrics and ``summary.json`` (last) in ``out``;
    ``training`` is the training record of the summary."""
    out = Path(out)
    bs = train_cfg.val_batch_size or train_cfg.batch_size
    best = load(model_path, device=device)
    payload_extra = modelfile.read(model_path).get("extra", {})
    wants_uq = is_uq(best) or (uq_cfg is not None and not method_of(uq_cfg).plain)
    if wants_uq and "calibration" not in payload_extra:
        best, fitted = finish_posthoc(best, uq_cfg, train_cfg, train, val, bs)
        modelfile.save(best, model_path, extra={**payload_extra, **fitted})
        payload_extra = modelfile.read(model_path)["extra"]
    summary = {"training": training, "model": str(model_path)}
    return _assess(summary, best, payload_extra, val, test, out, bs)


def _assess(summary: dict, model, extra: dict, val, test, out: Path, batch_size: int) -> dict:
    """Val/test metrics, tables and predictions of ``model`` into ``out``; ``summary.json`` last."""
    if "posthoc" in extra:
        summary["posthoc"] = extra["posthoc"]
    for name, ds in (("val", val), ("test", test)):
        if len(ds):
            metrics, table = assess(model, ds, batch_size, extra.get("calibration"))
            summary[name] = metrics
            write_table(table, out / f"{name}_per_structure.csv")
            write_predictions(table, out / f"{name}_predictions.npz")
    write_json(out / "summary.json", summary)
    return summary


def fit_from_backbone(backbone, uq_cfg, train_cfg, train, val, test, out, extra: dict | None = None) -> dict:
    """``none`` or a post-hoc method on the potential that :func:`fit_model` trained in ``backbone`` with the
    same model, training settings, data and seed: the numbers of training the method through ``uq.method``
    (:func:`trains_plain_potential`), without training the network again.  Results in ``out`` as
    :func:`fit_model` writes them (``summary.json`` last; its ``training`` is the backbone's, ``backbone``
    names it, ``posthoc_seconds`` is this step's own time)."""
    out, backbone = Path(out), Path(backbone)
    if (out / "summary.json").is_file():
        return json.loads((out / "summary.json").read_text())
    if not trains_plain_potential(uq_cfg):
        raise ValueError(f"{uq_cfg.method} is trained with its network: it cannot share a plain backbone")
    t0 = time.perf_counter()
    trained = json.loads((backbone / "summary.json").read_text())
    model = load(backbone / "model.pt", device=resolve_device(train_cfg.device))
    payload_extra = {**modelfile.read(backbone / "model.pt").get("extra", {}), **(extra or {}),
                     "backbone": str(backbone)}
    bs = train_cfg.val_batch_size or train_cfg.batch_size
    if not method_of(uq_cfg).plain:
        model, fitted = finish_posthoc(model, uq_cfg, train_cfg, train, val, bs)
        payload_extra.update(fitted)
    out.mkdir(parents=True, exist_ok=True)
    modelfile.save(model, out / "model.pt", extra=payload_extra)
    summary = {"training": trained["training"], "model": str(out / "model.pt"), "backbone": str(backbone)}
    summary = _assess(summary, model, payload_extra, val, test, out, bs)
    summary["posthoc_seconds"] = round(time.perf_counter() - t0, 2)
    write_json(out / "summary.json", summary)
    return summary
