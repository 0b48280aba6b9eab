"""Everything ``uqpot loop`` checks before it writes a byte, and what it records to resume safely: the loop's
counterpart of :mod:`uqpot.fit.prepare`.

A loop used to write its config and run record first and find a bad data file, store or model file only
afterwards, so that the corrected config was then refused as "a different config".  The order is now fixed:

1. :func:`prepare_loop` (writes nothing): the output directory, the device, both data files (every frame of
   each, all problems at once), their sizes (a validation share and a test set large enough for the
   calibration and the UQ metrics), the test set's elements against the training set's, the label store
   (a ``.db`` file that is a uqpot store or can become one), the oracle and its options (an option the
   calculator would ignore is refused before it can enter the store's key), the ``init_model`` files and
   their elements, and the SHA-256 of every input file;
2. :func:`check_loop_resume` (the run lock held): an earlier loop in ``out`` continues only with the same
   config (paths compared as files: :func:`uqpot.core.rundir.setting_differences`) and the same data (the hashes
   recorded in ``run.json``); ``--restart`` (:func:`clear_loop`) removes the loop's own outputs first;
3. :func:`loop_record`: ``run.json`` (seed, threads, versions, data files with their SHA-256, where the run
   was started), written with the resolved ``config.yaml``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..data.io import ReadOptions, read_structures
from ..data.store import check_store_path
from ..core.devices import resolve_device
from ..core.errors import ConfigError, DataError, DataErrors, ModelFileError, UqpotError
from ..core.provenance import versions
from ..core.rundir import check_out_dir, file_hashes, place, refuse_changed_files
from ..fit.finetune import freeze

#: what a loop writes directly into ``out`` (besides its generation folders ``gen<g>/``); the label store
#: is not among them: its labels cost oracle calls and are never removed
LOOP_FILES = ("config.yaml", "run.json", "alignment.json", "summary.json", "loop.log", "neb_oracle.json",
              "stopping.json", "stopping.csv", "final.json")
#: the smallest validation and test sets: the calibration and the UQ metrics rank structures
MIN_STRUCTURES = 2


@dataclass
class PreparedLoop:
    """A validated loop: its output folder, store, input files with their hashes, the elements it sees."""

    out: Path
    store: Path
    hashes: dict
    n_train: int
    n_test: int
    elements: list = field(default_factory=list)


def _elements(*sets) -> set[int]:
    return {int(z) for ds in sets for s in ds for z in s.numbers}


def _symbols(zs) -> str:
    from ase.data import chemical_symbols

    return ", ".join(chemical_symbols[z] for z in sorted(zs))


def input_files(cfg) -> dict:
    """Every input file of the loop by config key (its hashes are recorded in ``run.json``)."""
    files = {"data.train": Path(cfg.data.train), "data.test": Path(cfg.data.test)}
    inits = cfg.init_files()
    for k, p in enumerate(inits):
        files["init_model" if len(inits) == 1 else f"init_model[{k}]"] = p
    return files


def _check_data(cfg):
    opts = ReadOptions(energy_unit=cfg.data.energy_unit, length_unit=cfg.data.length_unit)
    problems: list[DataError] = []
    train = read_structures(cfg.data.train, opts, collect=problems)
    test = read_structures(cfg.data.test, opts, collect=problems)
    if problems:
        raise DataErrors(problems)
    n_val = max(1, int(round(cfg.data.val_fraction * len(train))))
    if n_val < MIN_STRUCTURES or len(train) - n_val < 1:
        raise DataError(cfg.data.train, f"data.train: {len(train)} structure(s); the loop holds out "
                                        f"data.val_fraction = {cfg.data.val_fraction:g} of them ({n_val}) to "
                                        f"validate and calibrate on, which needs at least {MIN_STRUCTURES}, and "
                                        "trains on the rest (at least 1): give more structures or a larger "
                                        "val_fraction")
    if len(test) < MIN_STRUCTURES:
        raise DataError(cfg.data.test, f"data.test: {len(test)} structure(s); the test metrics of every UQ method "
                                       f"(Spearman, ROC-AUC, calibration) need at least {MIN_STRUCTURES}")
    unknown = _elements(test) - _elements(train)
    if unknown:
        s = next(s for s in test if set(int(z) for z in s.numbers) & unknown)
        raise DataError(cfg.data.test, f"element(s) {_symbols(unknown)} not in the training structures of "
                                       f"{cfg.data.train} ({_symbols(_elements(train))}): no model of the loop "
                                       "could predict them", frame=s.frame, field="numbers")
    return train, test


def _check_init_models(cfg, elements: set[int]) -> None:
    """``init_model``: readable uqpot model files of one network each (or one per member) that know every
    element of the loop's data."""
    from ..evaluation.models import load
    from ..fit.run import member_count

    files = cfg.init_files()
    first = None
    for p in files:
        model = load(p)  # a missing, foreign or pickled file: one error naming it (nothing unpickled)
        net = getattr(model, "potential", model)
        if net.assembled:
            raise ModelFileError(p, f"init_model: a {net.title} of different networks is not fine-tuned as one "
                                    "network; give its members' own files (one per member)")
        hp = {k: v for k, v in net.hparams.items() if k not in ("members", "seeds")}
        if first is None:
            first = (p, hp)
        else:
            diff = [f"{k} ({first[1].get(k)!r} in {first[0]}, {hp.get(k)!r} here)"
                    for k in sorted(set(first[1]) | set(hp), key=str) if first[1].get(k) != hp.get(k)]
            if diff:
                raise ModelFileError(p, f"init_model: its network differs from the first file's in {'; '.join(diff)}; "
                                        "the members of one ensemble share one architecture")
        try:  # the blocks finetune.trainable keeps exist in this network (freezes this loaded copy only)
            freeze(model, cfg.finetune)
        except ValueError as exc:
            raise ModelFileError(p, str(exc)) from None
        known = set(model.elements()) if hasattr(model, "elements") else set()
        if known and elements - known:
            raise ModelFileError(p, f"init_model: the model knows {_symbols(known)}, not "
                                    f"{_symbols(elements - known)} of the loop's data (its reference energies and "
                                    "embeddings for them were never trained)")
    if len(files) > 1:
        for m in cfg.methods:
            k = member_count(cfg.uq_config(m))
            if k > 1 and k != len(files):
                raise ConfigError(None, f"init_model: {len(files)} files for the {k} members of {m}; give 1 or {k}")


def _check_settings(cfg) -> None:
    """Settings the loop would silently not use."""
    if cfg.init_model is None and cfg.finetune != type(cfg.finetune)():
        raise ConfigError(None, "finetune: set, but there is no init_model to fine-tune (the loop trains from "
                                "random weights); give init_model or remove the finetune section")


def check_oracle(cfg):
    """The oracle built from its settings (unknown options and options the calculator would ignore are
    ConfigErrors naming the ``oracle`` section)."""
    from ..oracle import get_oracle

    try:
        return get_oracle(cfg.oracle.name, **cfg.oracle.options)
    except ConfigError as exc:
        raise ConfigError(None, f"oracle.options: {str(exc).removeprefix('oracle ')}") from None


def prepare_loop(cfg, config_path=None) -> PreparedLoop:
    """Validates everything the loop ``cfg`` needs (see the module docstring); writes nothing."""
    out = check_out_dir(cfg.out, "out", {"config": config_path} if config_path else None, writes=LOOP_FILES)
    resolve_device(cfg.train.device)
    _check_settings(cfg)
    train, test = _check_data(cfg)
    store = Path(cfg.store) if cfg.store is not None else out / "labels.db"
    try:
        check_store_path(store)
    except UqpotError as exc:
        raise ConfigError(None, f"store: {exc}") from None
    check_oracle(cfg)
    elements = _elements(train, test)
    _check_init_models(cfg, elements)
    return PreparedLoop(out=out, store=store, hashes=file_hashes(input_files(cfg)), n_train=len(train),
                        n_test=len(test), elements=sorted(elements))


def clear_loop(out) -> list[str]:
    """Removes the loop's own outputs from ``out`` (:data:`LOOP_FILES`, the generation folders ``gen<g>/``
    and the final models' ``final/``), never the label store; returns what was removed."""
    out = Path(out)
    removed = []
    for name in LOOP_FILES:
        if (out / name).is_file():
            (out / name).unlink()
            removed.append(name)
    for d in sorted(out.glob("gen[0-9]*")):
        if d.is_dir() and d.name[3:].isdigit():
            shutil.rmtree(d)
            removed.append(d.name + "/")
    if (out / "final").is_dir():
        shutil.rmtree(out / "final")
        removed.append("final/")
    return removed


def recorded_run(out) -> dict:
    """``run.json`` of a loop in ``out`` ({} if none or unreadable)."""
    try:
        return json.loads((Path(out) / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def check_loop_data(out, prep: PreparedLoop) -> None:
    """Refuses to resume the loop in ``out`` on data (or init_model) files whose content changed since it
    started (their SHA-256 in ``run.json``), naming the file."""
    refuse_changed_files(recorded_run(out).get("data_files", {}), prep.hashes,
                         f"resuming the loop in {out} would go on from generations trained and energies aligned on "
                         "the old data: restore the file, choose another 'out', or rerun with --restart to start the "
                         "loop afresh there (the label store is kept)")


def loop_record(cfg, prep: PreparedLoop) -> dict:
    """The content of the loop's ``run.json``."""
    return {"seed": cfg.seed, "threads": cfg.threads, "versions": versions(), "data_files": prep.hashes,
            "store": str(prep.store), **place(prep.out)}
