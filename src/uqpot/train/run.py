"""``uqpot train CONFIG.yaml``: read and validate data, split, train, evaluate the best model.

The output directory receives, before training starts: ``config.yaml`` (the resolved config), ``split.json``
(the indices of every split), ``run.json`` (seed, versions, hardware, data file); during training the
trainer's files; at the end ``summary.json`` (written last: its presence marks a finished run).
Rerunning the same command resumes an interrupted run; a different config in the same directory is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from ..config import RunConfig, dump_config
from ..data.io import read_structures
from ..data.splits import check_disjoint, load_split, random_split, read_index_file, save_split
from ..errors import ConfigError
from ..provenance import versions, write_json
from ..uq.options import upgrade_uq_section
from .trainer import Trainer, check_layout, resolve_device


def make_split(cfg: RunConfig, n: int) -> dict[str, np.ndarray]:
    sp = cfg.split
    if sp.train_file:
        split = {"train": read_index_file(sp.train_file, n)}
        split["val"] = read_index_file(sp.val_file, n) if sp.val_file else np.array([], dtype=np.int64)
        split["test"] = read_index_file(sp.test_file, n) if sp.test_file else np.array([], dtype=np.int64)
        if not sp.val_file:  # hold out a random part of the training indices for validation
            rng = np.random.default_rng(sp.seed)
            tr = rng.permutation(split["train"])
            n_val = int(round((sp.val if isinstance(sp.val, float) and sp.val < 1 else 0.2) * len(tr)))
            split["val"], split["train"] = np.sort(tr[:n_val]), np.sort(tr[n_val:])
    else:
        try:
            split = random_split(n, sp.train, sp.val, sp.test, sp.seed)
        except ConfigError as exc:
            raise ConfigError(None, f"{exc} ({cfg.data.path})") from None
    check_disjoint(split)
    return split


def _same_run(out: Path, cfg: RunConfig) -> None:
    old = out / "config.yaml"
    if not old.is_file():
        return
    try:  # through the current schema, so that sections added since with their defaults compare equal
        raw = yaml.safe_load(old.read_text())
        raw["uq"] = upgrade_uq_section(raw.get("uq", {}))  # written before methods declared their options
        previous = RunConfig.model_validate(raw).model_dump(mode="json")
    except Exception:
        previous = yaml.safe_load(old.read_text())
    current = cfg.model_dump(mode="json")
    # only the training length, the time budget and the progress display may change on resume
    for d in (previous, current):
        for key in ("epochs", "max_hours", "progress"):
            d.get("train", {}).pop(key, None)
    if previous != current:
        diff = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
        raise ConfigError(old, f"the output directory {out} holds a run with a different config (differs in: "
                               f"{', '.join(diff)}); choose another 'out' or delete it")


def potential_hparams(model_cfg, uq_cfg, seed: int) -> dict:
    """The network's hyper-parameters: the model section, and the number of stacked members the method
    trains (``members_for``), member k seeded with ``seed + k``."""
    from ..uq import method_class

    m = model_cfg
    members = 1 if uq_cfg.method == "none" else method_class(uq_cfg.method).members_for(uq_cfg)
    return dict(features=m.features, interactions=m.interactions, rbf=m.rbf, cutoff=m.cutoff,
                activation=m.activation, readout_hidden=m.readout_hidden, trainable_rbf=m.trainable_rbf,
                members=members, seeds=[seed + k for k in range(members)])


def trains_plain_potential(uq_cfg) -> bool:
    """Whether the network is trained as a plain potential (``none`` and the post-hoc methods, which then
    wrap it): such runs with the same model, training settings, data and seed train the same network."""
    from ..uq import method_class

    return uq_cfg.method == "none" or method_class(uq_cfg.method).posthoc


def build_model(model_cfg, uq_cfg, seed: int):
    """What the trainer trains: a plain potential (``uq.method: none`` and the post-hoc methods, wrapped
    after training) or the configured UQ method around one."""
    from ..nn.potential import Potential
    from ..uq import build_method

    hp = potential_hparams(model_cfg, uq_cfg, seed)
    return Potential(**hp) if trains_plain_potential(uq_cfg) else build_method(uq_cfg, hp)


def run_training(cfg: RunConfig, console=None) -> dict:
    data = read_structures(cfg.data.path, cfg.data.read_options())  # validates every frame first
    split = make_split(cfg, len(data))
    check_layout(data.subset(split["train"]), cfg.train)  # before anything is written
    out = Path(cfg.out)
    _same_run(out, cfg)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "split.json").is_file():
        old = load_split(out / "split.json")
        if any(not np.array_equal(old[k], split[k]) for k in split):
            raise ConfigError(out / "split.json", "the stored split differs from the one this config makes")
    dump_config(cfg, out / "config.yaml")
    save_split(split, out / "split.json")
    write_json(out / "run.json", {"seed": cfg.seed, "data": str(cfg.data.path), "n_structures": len(data),
                                  "split_sizes": {k: len(v) for k, v in split.items()}, "versions": versions()})
    train, val, test = (data.subset(split[k]) for k in ("train", "val", "test"))
    return fit_model(cfg.model, cfg.uq, cfg.train, cfg.seed, train, val, test, out, console,
                     extra={"seed": cfg.seed, "data": str(cfg.data.path)})


def fit_model(model_cfg, uq_cfg, train_cfg, seed: int, train, val, test, out, console=None,
              extra: dict | None = None) -> dict:
    """Builds the model, fits reference energies on ``train``, trains (resuming from ``out`` if
    interrupted), runs the method's further stages, wraps a post-hoc method around the trained potential,
    fits post-hoc parts and the calibration, and writes ``summary.json`` (last)."""
    model = build_model(model_cfg, uq_cfg, seed)
    model.fit_reference(train)
    loss_fn = model.make_loss(train_cfg) if hasattr(model, "make_loss") else None
    trainer = Trainer(model, train, val, train_cfg, out, seed=seed, console=console, loss_fn=loss_fn,
                      extra=extra)
    result = trainer.fit()
    return finish_run(train_cfg, out, trainer, result, train, val, test, uq_cfg)


def _step_memory(trainer, train, batch_size: int) -> dict:
    """Peak memory of one training step on the first training batch (Fig. 2b's memory figure)."""
    from .memory import training_step_peak_mb

    if not len(train):
        return {}
    _, batch = next(iter(trainer._batches(train, batch_size, shuffle=False)))
    return {"step_peak_mb": round(training_step_peak_mb(trainer.model, trainer.loss_fn, batch), 2),
            "step_peak_batch": int(batch.num_structures)}


def finish_posthoc(model, uq_cfg, train_cfg, train, val, batch_size: int) -> tuple:
    """After training: a post-hoc method wraps the trained potential; then the method's stages, its
    post-hoc fit and the validation calibration.  Returns (the model, the model file's new ``extra``)."""
    from ..uq import method_class
    from ..wrap import fit_and_calibrate
    from .stages import run_stage

    if uq_cfg is not None and uq_cfg.method != "none" and getattr(model, "kind", "") == "potential":
        model = method_class(uq_cfg.method).wrap(model, uq_cfg)
    posthoc = {}
    for stage in model.stages(train_cfg):
        posthoc.update(run_stage(model, stage, train, val, batch_size))
    fitted = fit_and_calibrate(model, train, val, batch_size)
    fitted["posthoc"] = {**posthoc, **fitted["posthoc"]}
    return model, fitted


def finish_run(train_cfg, out, trainer, result, train, val, test, uq_cfg=None) -> dict:
    """Post-hoc parts (a wrapped method, stages, the GMM, LLPR) and the validation calibration go into the
    model file; then val/test metrics."""
    from .. import modelfile
    from ..evaluate import is_uq
    from ..models import load

    out = Path(out)
    bs = train_cfg.val_batch_size or train_cfg.batch_size
    best = load(trainer.model_path, device=trainer.device)
    payload_extra = modelfile.read(trainer.model_path).get("extra", {})
    wants_uq = is_uq(best) or (uq_cfg is not None and uq_cfg.method != "none")
    if wants_uq and "calibration" not in payload_extra:
        best, fitted = finish_posthoc(best, uq_cfg, train_cfg, train, val, bs)
        modelfile.save(best, trainer.model_path, extra={**payload_extra, **fitted})
        payload_extra = modelfile.read(trainer.model_path)["extra"]
    training = {**result.as_dict(), **_step_memory(trainer, train, train_cfg.batch_size)}
    summary = {"training": training, "model": str(trainer.model_path)}
    return _assess(summary, best, payload_extra, val, test, out, bs)


def _assess(summary: dict, model, extra: dict, val, test, out: Path, batch_size: int) -> dict:
    """Val/test metrics, tables and predictions of ``model`` into ``out``; ``summary.json`` last."""
    from ..evaluate import assess, write_predictions, write_table

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
    import json
    import time

    from .. import modelfile
    from ..models import load

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
    if uq_cfg.method != "none":
        model, fitted = finish_posthoc(model, uq_cfg, train_cfg, train, val, bs)
        payload_extra.update(fitted)
    out.mkdir(parents=True, exist_ok=True)
    modelfile.save(model, out / "model.pt", extra=payload_extra)
    summary = {"training": trained["training"], "model": str(out / "model.pt"), "backbone": str(backbone)}
    summary = _assess(summary, model, payload_extra, val, test, out, bs)
    summary["posthoc_seconds"] = round(time.perf_counter() - t0, 2)
    write_json(out / "summary.json", summary)
    return summary
