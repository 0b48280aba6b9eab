"""Uncertainty for any trained potential: wrap a model file with a post-hoc method, assemble an ensemble
from model files, or re-calibrate a UQ model (``uqpot wrap``).

    uqpot wrap MODEL --method gmm|llpr [--data TRAIN] [--val VAL] [--out FILE] [--option KEY=VALUE ...]
    uqpot wrap MODEL1 MODEL2 ... --method ensemble [--val VAL] [--out FILE]
    uqpot wrap MODEL --method calibrate [--val VAL] [--out FILE]

* A post-hoc method (``posthoc = True``: GMM, LLPR) wraps a plain potential as it was trained: its
  post-hoc part is fitted on the training structures (GMM: the features of every training atom, Eq. 10-11;
  LLPR: the Gram matrix from the training set, α and ς from the validation set).
* ``ensemble`` stacks M separately trained single potentials (same architecture, same training set) into
  one batched ensemble (:meth:`uqpot.uq.ensemble.Ensemble.from_members`; Eq. 2-5).  Members of different
  backbones, hyper-parameters or reference energies (PaiNN, MACE, SevenNet, ...) form a committee instead
  (:meth:`~uqpot.uq.ensemble.Ensemble.from_committee`, :mod:`uqpot.nn.committee`), once each member's mean
  energy error per atom on the validation structures shows it models the labels' level of theory
  (:func:`_check_committee`); the elements are those every member knows.
* ``calibrate`` re-fits only the calibration of any UQ model.

Every result is calibrated on the validation structures: σ²(x) = a·U(x) + b with its floor (Eq. 13) and the
split-conformal quantiles of |r|/σ (:func:`uqpot.evaluation.evaluate.fit_calibration`), stored in the model file that
``uqpot evaluate``, the ASE calculator, the MD engine and the attack take.

Structures: when MODEL was written by ``uqpot train`` (``config.yaml`` and ``split.json`` beside it), the
training and validation structures are read from the run's data with the run's reading options and split,
and batches have the run's validation batch size — then ``uqpot wrap`` gives what training with
``uq.method`` in the config gives.  ``--data`` / ``--val`` replace them (or give them where there is no run
directory).  Every input is validated before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from pydantic import ValidationError

from ..nn import modelfile
from ..nn.potential import SHARED_BUFFERS
from ..core.config_io import _format_validation_error, parse
from ..data.io import ReadOptions, read_structures
from ..data.splits import load_split
from ..core.devices import resolve_device
from ..core.errors import ConfigError, DataError, ModelFileError
from ..evaluation.evaluate import MIN_UQ_STRUCTURES, fit_calibration
from ..evaluation.models import load
from ..evaluation.predict import check_elements, predict
from ..core import fields as F
from ..uq import METHODS
from ..uq.ensemble import Ensemble
from ..uq.options import parse_uq, upgrade_uq_section
from .config import RunConfig

#: what ``--method`` takes besides the post-hoc methods
SPECIAL = ("ensemble", "calibrate")


def wrap_methods() -> list[str]:
    return sorted(m for m, cls in METHODS.items() if cls.posthoc) + list(SPECIAL)


@dataclass
class RunSets:
    """Training and validation structures, where they came from, and the batch size to use."""

    train: object
    val: object
    batch_size: int
    source: dict


def run_directory_sets(model_path) -> RunSets | None:
    """The training and validation sets of the ``uqpot train`` run that wrote ``model_path`` (None when
    there is no ``config.yaml`` and ``split.json`` beside it)."""
    run = Path(model_path).parent
    cfg_path, split_path = run / "config.yaml", run / "split.json"
    if not (cfg_path.is_file() and split_path.is_file()):
        return None
    try:
        raw = yaml.safe_load(cfg_path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(cfg_path, f"invalid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(cfg_path, "a run config must be a mapping")
    raw["uq"] = upgrade_uq_section(raw.get("uq", {}))
    cfg = parse(RunConfig, raw, cfg_path)
    try:
        split = load_split(split_path)
    except (OSError, ValueError) as exc:
        raise DataError(split_path, f"cannot read the split: {exc}") from None
    data = read_structures(cfg.data.path, cfg.data.read_options())
    for name in ("train", "val"):
        if name not in split:
            raise DataError(split_path, f"no '{name}' split")
        if len(split[name]) and int(split[name].max()) >= len(data):
            raise DataError(split_path, f"split '{name}' refers to structure {int(split[name].max())} but "
                                        f"{cfg.data.path} has {len(data)}")
    return RunSets(data.subset(split["train"]), data.subset(split["val"]),
                   cfg.train.val_batch_size or cfg.train.batch_size,
                   {"run": str(run), "data": str(cfg.data.path)})


def fit_and_calibrate(model, train, val, batch_size: int = 64) -> dict:
    """``fit_posthoc(train, val)`` and the validation calibration; the ``extra`` entries of the model file."""
    posthoc = model.fit_posthoc(train, val, batch_size) if train is not None else {}
    return {"posthoc": posthoc, "calibration": fit_calibration(model, val, batch_size)}


def _load(path, device=None, check_extra: bool = True):
    return load(path, device=device, check_extra=check_extra)


def _parse_options(method: str, options: dict | None):
    try:
        return parse_uq({"method": method, **(options or {})})
    except ValidationError as exc:
        raise ConfigError(None, "--option: " + _format_validation_error(exc, "uq")[0]) from None


def _sets(models, need_train: bool, data, val, read_options, batch_size) -> RunSets:
    """The structures the method needs: ``--data`` / ``--val`` if given, else the run directory's."""
    run = run_directory_sets(models[0]) if (need_train and data is None) or val is None else None
    opts = read_options or ReadOptions()
    where = "no run directory beside it (config.yaml and split.json)"
    if need_train and data is None and run is None:
        raise ConfigError(models[0], f"--data is needed (the training structures): {where}")
    if val is None and run is None:
        raise ConfigError(models[0], f"--val is needed (the validation structures to calibrate on): {where}")
    train_set = (read_structures(data, opts) if data is not None else run.train) if need_train else None
    val_set = read_structures(val, opts) if val is not None else run.val
    if not len(val_set):
        raise DataError(val if val is not None else Path(models[0]).parent / "split.json",
                        "no validation structures to calibrate on")
    if need_train and not len(train_set):
        raise DataError(data if data is not None else Path(models[0]).parent / "split.json", "no training structures")
    source = {"train": str(data) if data is not None else (run.source if need_train else None),
              "val": str(val) if val is not None else run.source}
    bs = batch_size or (run.batch_size if run is not None else 64)
    return RunSets(train_set, val_set, bs, source)


def _distinct_files(models) -> None:
    """The files of an ensemble, each once (one file given twice is one network twice: zero spread)."""
    seen = {}
    for m in models:
        key = m.resolve()
        if key in seen:
            raise ConfigError(m, f"given twice for --method ensemble (also as {seen[key]}); an ensemble of one network "
                                 "has zero spread: give separately trained models")
        seen[key] = m


def _same_architecture(loaded) -> bool:
    """Whether the members share one architecture and one set of reference energies (then they stack into one
    batched ensemble; else they form a committee, :mod:`uqpot.nn.committee`)."""
    skip = ("members", "seeds")
    hp0 = {k: v for k, v in loaded[0].hparams.items() if k not in skip}
    for m in loaded[1:]:
        if {k: v for k, v in m.hparams.items() if k not in skip} != hp0:
            return False
    s0 = loaded[0].state_dict()
    return all(torch.equal(s0[k].cpu(), m.state_dict()[k].cpu()) for m in loaded[1:] for k in SHARED_BUFFERS if k in s0)


def _ensemble_members(models, loaded) -> None:
    """Members with different weights (copies of one network would give an ensemble of zero spread)."""
    states = [m.state_dict() for m in loaded]
    for j in range(1, len(loaded)):
        for i in range(j):
            if states[i].keys() == states[j].keys() and all(
                    states[i][k].shape == states[j][k].shape and torch.equal(states[i][k], states[j][k])
                    for k in states[i]):
                raise ModelFileError(models[j], f"has the same weights as {models[i]}: copies of one network give "
                                                "an ensemble of zero spread; give separately trained models (other "
                                                "seeds)")


#: the largest mean energy error per atom (kcal/mol) of a committee member on the validation structures that
#: can still be a model of the data's level of theory (beyond it, and beyond 3 standard deviations of the
#: member's own per-atom errors, its reference energies belong to another: see :func:`_check_committee`)
OFFSET_TOLERANCE = 1.0


def energy_offsets(model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Each member's energy error per atom, (E_m − E_label) / n_atoms over the labelled structures of
    ``dataset`` (kcal/mol per atom): its mean (the offset) and its standard deviation, shapes (M,), for an
    ensemble ``model``.  The offset is near zero for a member trained on the data's level of theory, far from
    it for a network whose reference energies belong to another (a foundation model's DFT energies against
    PySCF labels)."""
    if not dataset.has_energy or not len(dataset):
        return np.zeros(model.members), np.zeros(model.members)
    pred = predict(model, dataset, keys=(F.ENERGY_MEMBERS,))[F.ENERGY_MEMBERS]  # (B, M)
    n_atoms = np.array([s.n_atoms for s in dataset], dtype=float)
    err = (pred - dataset.energies()[:, None]) / n_atoms[:, None]
    return err.mean(0), err.std(0)


def _check_committee(models, model, val, where) -> list[float]:
    """The members of a committee predict the energies of one level of theory: each member's mean energy
    error per atom on the validation structures (:func:`energy_offsets`) within
    :data:`OFFSET_TOLERANCE` kcal/mol or 3 standard deviations of its errors; else the member is named (its
    energies are offset: another level of theory, or a foundation model not fine-tuned to the data).
    Returns the offsets."""
    offset, spread = energy_offsets(model, val)
    for path, o, sd in zip(models, offset, spread):
        if abs(o) > max(OFFSET_TOLERANCE, 3.0 * sd):
            raise ModelFileError(path, f"cannot join the committee: its energies are offset from the labels of {where} "
                                       f"by {o:+.4g} kcal/mol per atom on average (spread {sd:.3g}): its reference "
                                       "energies belong to another level of theory; fine-tune it to the data first "
                                       "(uqpot loop with init_model, or train from it)")
    return [float(o) for o in offset]


def _check_sizes(models, sets: RunSets, data, val) -> None:
    """``evaluate``'s minimum-data rules: a calibration (and the UQ metrics it is checked by) needs at least
    :data:`uqpot.evaluation.evaluate.MIN_UQ_STRUCTURES` validation structures, a post-hoc fit at least one training
    structure."""
    if len(sets.val) < MIN_UQ_STRUCTURES:
        where = val if val is not None else Path(models[0]).parent / "split.json"
        raise DataError(where, f"{len(sets.val)} validation structure(s): a calibration σ² = a·U + b needs at least "
                               f"{MIN_UQ_STRUCTURES} (with fewer, a and b are not determined)")


def default_out(model_path, method: str) -> Path:
    p = Path(model_path)
    return p.with_name(f"{p.stem}_{method}.pt")


def wrap(models, method: str, data=None, val=None, out=None, options: dict | None = None, read_options=None,
         batch_size: int | None = None, device=None) -> tuple[Path, dict]:
    """``uqpot wrap``: validates every input, builds and fits the model, writes it to ``out`` (default
    ``<model>_<method>.pt`` beside the first model); returns (the path, a summary)."""
    models = [Path(m) for m in models]
    if method not in wrap_methods():
        hint = (f"{method} is trained with its network (uqpot train with uq.method: {method})" if method in METHODS
                else f"unknown method {method!r}")
        raise ConfigError(None, f"--method {method}: {hint}; wrap takes {', '.join(wrap_methods())}")
    if not models:
        raise ConfigError(None, "no model file given")
    if method == "ensemble" and len(models) < 2:
        raise ConfigError(models[0], "--method ensemble needs at least 2 model files")
    if method != "ensemble" and len(models) != 1:
        raise ConfigError(models[1], f"--method {method} takes one model file ({len(models)} given)")
    if method in SPECIAL and options:
        raise ConfigError(None, f"--option: --method {method} takes no options")
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
        raise ConfigError(None, f"--batch-size: must be an integer >= 1, got {batch_size}")
    out = Path(out) if out is not None else default_out(models[0], method)
    if any(out.resolve() == m.resolve() for m in models):
        raise ConfigError(out, "--out would overwrite an input model; choose another file")
    if out.is_dir():
        raise ConfigError(out, "--out is a directory; give the name of the model file to write")
    if device is not None:
        device = resolve_device(device, "--device")
    if method == "ensemble":
        _distinct_files(models)
    recalibrate = method == "calibrate"  # the stored calibration is replaced: it may be broken
    loaded = [_load(m, device=device, check_extra=not recalibrate) for m in models]
    payload_extra = modelfile.read(models[0], check_extra=not recalibrate).get("extra", {})
    if not isinstance(payload_extra, dict):
        payload_extra = {}
    kinds = [getattr(m, "kind", "") for m in loaded]
    committee = False
    if method == "calibrate":
        if not kinds[0].startswith("uq."):
            raise ModelFileError(models[0], f"a {kinds[0]} model has no uncertainty to calibrate; wrap it with a "
                                            f"UQ method first ({', '.join(wrap_methods()[:-2])})")
        model = loaded[0]
    else:
        for path, m, kind in zip(models, loaded, kinds):
            if kind != "potential" or m.members != 1:
                what = kind if kind != "potential" else f"potential of {m.members} members"
                raise ModelFileError(path, f"--method {method} takes a single trained potential, not a {what}")
        if method == "ensemble":
            _ensemble_members(models, loaded)
            committee = not _same_architecture(loaded)
            try:
                model = Ensemble.from_committee(loaded) if committee else Ensemble.from_members(loaded)
            except ValueError as exc:
                raise ModelFileError(models[0], f"cannot assemble an ensemble of {len(models)} models: {exc}") from None
        else:
            model = METHODS[method].wrap(loaded[0], _parse_options(method, options))
    sets = _sets(models, method not in SPECIAL, data, val, read_options, batch_size)
    _check_sizes(models, sets, data, val)
    for ds in (sets.train, sets.val):
        if ds is not None:
            check_elements(model, ds)
    offsets = None
    if method == "ensemble" and committee:
        offsets = _check_committee(models, model, sets.val, val if val is not None else "the validation split")
    extra = {k: v for k, v in payload_extra.items() if k not in ("posthoc", "calibration", "wrapped")}
    fitted = fit_and_calibrate(model, sets.train, sets.val, sets.batch_size)
    if method == "calibrate":
        fitted["posthoc"] = payload_extra.get("posthoc", {})
    wrapped = {"method": method, "from": [str(m) for m in models], **sets.source, "batch_size": sets.batch_size}
    if offsets is not None:
        wrapped["committee"] = {"members": [n.title for n in model.potential.nets],
                                "energy_offset_per_atom": offsets, "dtype": str(model.dtype).replace("torch.", "")}
    extra.update(fitted, wrapped=wrapped)
    modelfile.save(model, out, extra=extra)
    cal = fitted["calibration"]
    name = model.method if method != "calibrate" else f"{model.method} (re-calibrated)"
    if offsets is not None:
        name += f" (a committee of {', '.join(n.title for n in model.potential.nets)})"
    summary = {"method": name,
               "posthoc": fitted["posthoc"], "calibration": cal,
               "n_train": len(sets.train) if sets.train is not None else 0, "n_val": len(sets.val)}
    return out, summary
