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
from .trainer import Trainer, check_layout


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
        previous = RunConfig.model_validate(yaml.safe_load(old.read_text())).model_dump(mode="json")
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
    m = model_cfg
    members = uq_cfg.members if uq_cfg.method == "ensemble" else 1
    return dict(features=m.features, interactions=m.interactions, rbf=m.rbf, cutoff=m.cutoff,
                activation=m.activation, readout_hidden=m.readout_hidden, trainable_rbf=m.trainable_rbf,
                members=members, seeds=[seed + k for k in range(members)])


def build_model(model_cfg, uq_cfg, seed: int):
    """A plain potential (``uq.method: none``) or the configured UQ method around one."""
    from ..nn.potential import Potential
    from ..uq import build_method

    hp = potential_hparams(model_cfg, uq_cfg, seed)
    return Potential(**hp) if uq_cfg.method == "none" else build_method(uq_cfg, hp)


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
    interrupted), fits post-hoc parts and the calibration, and writes ``summary.json`` (last)."""
    model = build_model(model_cfg, uq_cfg, seed)
    model.fit_reference(train)
    loss_fn = model.make_loss(train_cfg) if hasattr(model, "make_loss") else None
    trainer = Trainer(model, train, val, train_cfg, out, seed=seed, console=console, loss_fn=loss_fn,
                      extra=extra)
    result = trainer.fit()
    return finish_run(train_cfg, out, trainer, result, train, val, test)


def _step_memory(trainer, train, batch_size: int) -> dict:
    """Peak memory of one training step on the first training batch (Fig. 2b's memory figure)."""
    from .memory import training_step_peak_mb

    if not len(train):
        return {}
    _, batch = next(iter(trainer._batches(train, batch_size, shuffle=False)))
    return {"step_peak_mb": round(training_step_peak_mb(trainer.model, trainer.loss_fn, batch), 2),
            "step_peak_batch": int(batch.num_structures)}


def finish_run(train_cfg, out, trainer, result, train, val, test) -> dict:
    """Post-hoc fits (GMM) and the validation calibration go into the model file; then val/test metrics."""
    from .. import modelfile
    from ..models import load
    from ..evaluate import assess, fit_calibration, is_uq, write_predictions, write_table

    out = Path(out)
    bs = train_cfg.val_batch_size or train_cfg.batch_size
    best = load(trainer.model_path, device=trainer.device)
    payload_extra = modelfile.read(trainer.model_path).get("extra", {})
    if is_uq(best) and "calibration" not in payload_extra:
        # methods that fit constants on held-out data (LLPR's α, ς) get the validation set
        posthoc = (best.fit_posthoc(train, bs, val=val) if getattr(best, "posthoc_uses_validation", False)
                   else best.fit_posthoc(train, bs))
        calibration = fit_calibration(best, val, bs)
        modelfile.save(best, trainer.model_path, extra={**payload_extra, "posthoc": posthoc,
                                                        "calibration": calibration})
        payload_extra = modelfile.read(trainer.model_path)["extra"]
    summary = {"training": result.as_dict(), "model": str(trainer.model_path)}
    summary["training"].update(_step_memory(trainer, train, train_cfg.batch_size))
    if "posthoc" in payload_extra:
        summary["posthoc"] = payload_extra["posthoc"]
    for name, ds in (("val", val), ("test", test)):
        if len(ds):
            metrics, table = assess(best, ds, bs, payload_extra.get("calibration"))
            summary[name] = metrics
            write_table(table, out / f"{name}_per_structure.csv")
            write_predictions(table, out / f"{name}_predictions.npz")
    write_json(out / "summary.json", summary)
    return summary
