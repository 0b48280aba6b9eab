"""Everything ``uqpot train`` can check before it writes a byte: the one validation layer of a training run.

An error found after the output directory was written used to leave files that blocked the fix (the
corrected config was then refused as "a different config").  So the order is fixed: the output directory
(not a file, writable, not where an input lives), the device on this machine, every data file (every frame
of every file, all problems at once), the split (index files or sizes; train and validation not empty),
the pair layout, the cutoff against the data, and the content hashes of the data files.  Only then does
:func:`uqpot.fit.run.run_training` lock and write the run directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.io import read_structures
from ..data.splits import check_disjoint, random_split, read_index_file
from ..data.structures import StructureDataset
from ..core.devices import resolve_device
from ..core.errors import ConfigError, DataError, DataErrors
from ..evaluation.evaluate import MIN_UQ_STRUCTURES
from ..nn.backbone import backbone_class
from ..core.rundir import check_out_dir, file_hashes
from ..train.losses import resolve_stress_weight
from ..train.trainer import check_layout
from .config import RunConfig, method_of, trains_plain_potential, trains_stress  # noqa: F401  (public here before)


@dataclass
class PreparedRun:
    """A validated training run: its data sets, split indices, device and data-file hashes."""

    cfg: RunConfig
    out: Path
    train: StructureDataset
    val: StructureDataset
    test: StructureDataset
    split: dict  # name -> indices (into data.path; or into each split's own file)
    n_structures: int
    device: object
    hashes: dict
    warnings: list = field(default_factory=list)

    def input_files(self) -> dict:
        return {k: v["path"] for k, v in self.hashes.items()}


def _holdout(indices: np.ndarray, part, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val): a random share ``part`` (fraction < 1, or a count) of ``indices`` held out."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(indices)
    if isinstance(part, float) and part < 1:
        n_val = int(round(part * len(perm)))
    elif float(part) == int(part):
        n_val = int(part)
    else:
        raise ConfigError(None, f"split.val: expected a count or a fraction < 1, got {part}")
    if n_val >= len(perm):
        raise ConfigError(None, f"split.val: holding out {n_val} of {len(perm)} training structures for validation "
                                "leaves none to train on")
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def make_split(cfg: RunConfig, n: int) -> dict[str, np.ndarray]:
    """Indices of the train/val/test structures of ``data.path`` (``n`` frames): index files or sizes."""
    sp = cfg.split
    if sp.train_file:
        split = {"train": read_index_file(sp.train_file, n, "split.train_file")}
        split["val"] = (read_index_file(sp.val_file, n, "split.val_file") if sp.val_file
                        else np.array([], dtype=np.int64))
        split["test"] = (read_index_file(sp.test_file, n, "split.test_file") if sp.test_file
                         else np.array([], dtype=np.int64))
        if not sp.val_file:  # hold out a random part of the training indices for validation
            split["train"], split["val"] = _holdout(split["train"], sp.holdout(), sp.seed)
    else:
        try:
            split = random_split(n, *sp.sizes(), sp.seed)
        except ConfigError as exc:
            raise ConfigError(None, f"{exc} ({cfg.data.path})") from None
    check_disjoint(split)
    return split


def _read_all(files: dict, cfg: RunConfig) -> dict[str, StructureDataset]:
    """Every file read and validated; the problems of all files are reported together."""
    problems: list[DataError] = []
    sets = {}
    for key, path in files.items():
        sets[key] = read_structures(path, cfg.data.read_options(), collect=problems)
    if problems:
        raise DataErrors(problems)
    return sets


def _check_sizes(cfg: RunConfig, train, val, test) -> None:
    """Train and validation not empty; a UQ method's validation and test sets large enough for its
    calibration and metrics (checked now, not after the whole training)."""
    where = cfg.data.train_path or cfg.data.path
    if len(val) == 0:
        raise ConfigError(None, f"split: the validation set is empty ({where}: split.val rounds to 0 structures); the "
                                "learning-rate schedule, early stopping and the best-model checkpoint need one: "
                                "raise split.val, or give split.val_file / data.val_path")
    if not method_of(cfg.uq).plain:
        for name, ds in (("validation", val), ("test", test)):
            if 0 < len(ds) < MIN_UQ_STRUCTURES or (name == "validation" and len(ds) < MIN_UQ_STRUCTURES):
                raise ConfigError(None, f"split: the {name} set has {len(ds)} structure(s) ({where}), and the "
                                        f"calibration and UQ metrics of uq.method '{cfg.uq.method}' need at least "
                                        f"{MIN_UQ_STRUCTURES}")


def check_cutoff(train: StructureDataset, cutoff: float) -> str | None:
    """ConfigError when no pair of atoms of any training structure lies within ``cutoff`` (PaiNN then sees
    isolated atoms and learns nothing about bonds); a warning (returned) when most atoms have no neighbour."""
    lists = train.neighbors(cutoff)  # cached: the trainer reuses them
    multi = [k for k, s in enumerate(train) if s.n_atoms > 1]
    if not multi:
        return None
    pairs = sum(len(lists[k][0]) for k in multi)
    if pairs == 0:
        shortest = _shortest_distance(train[multi[:50]])
        raise ConfigError(None, f"model.cutoff: {cutoff:g} Å is shorter than every interatomic distance of the "
                                f"training structures (the shortest is {shortest:.3g} Å): the network would see no "
                                "neighbours; use a cutoff of a few Å (the default is 5.0)")
    lonely = sum(int(s.n_atoms - len(np.unique(lists[k][0]))) for k, s in zip(multi, train[multi]))
    atoms = sum(train[k].n_atoms for k in multi)
    if lonely > atoms / 2:
        return (f"model.cutoff: {cutoff:g} Å leaves {lonely} of {atoms} training atoms without a neighbour; PaiNN "
                "only learns from pairs within the cutoff (the default is 5.0 Å)")
    return None


def _shortest_distance(ds) -> float:
    best = np.inf
    for s in ds:
        if s.n_atoms > 1:
            d = np.linalg.norm(s.positions[:, None] - s.positions[None], axis=-1)
            best = min(best, float(d[np.triu_indices(len(d), 1)].min()))
    return best


def data_files(cfg: RunConfig) -> dict[str, Path]:
    """Every input file of the run by config key (structure files and index files)."""
    files = {f"data.{k}": v for k, v in cfg.data.files().items()}
    for k in ("train_file", "val_file", "test_file"):
        if getattr(cfg.split, k) is not None:
            files[f"split.{k}"] = getattr(cfg.split, k)
    return files


def check_model(model_cfg, train_cfg, train) -> None:
    """What the chosen backbone cannot do, said before anything is written (its class's capabilities): an
    optional dependency that is missing, the dense layout (``train.layout: dense``) and ``train.compile`` on
    a backbone that reads edge lists only or does not compile."""
    cls = backbone_class(model_cfg.kind)
    try:
        cls.check_available()
    except ImportError as exc:
        raise ConfigError(None, f"model.kind: {model_cfg.kind}: {exc}") from None
    if train_cfg.layout == "dense" and not cls.supports_dense:
        raise ConfigError(None, f"train.layout: 'dense' is not available for {cls.title} networks (they read edge "
                                "lists); use 'auto' or 'sparse'")
    if train_cfg.compile is True and not cls.compilable:
        raise ConfigError(None, f"train.compile: not available for {cls.title} networks; set it to false (or auto)")


def train_settings(train_cfg, uq_cfg, train):
    """The training settings of a run: ``train_cfg`` with its stress weight resolved for the method and the
    training set (:func:`uqpot.train.losses.resolve_stress_weight`; ConfigError when a stress weight is
    set that cannot be used)."""
    return resolve_stress_weight(train_cfg, train, trains_stress(uq_cfg))


def prepare_run(cfg: RunConfig, config_path=None) -> PreparedRun:
    """Validates everything a training run needs (see the module docstring); writes nothing."""
    out = Path(cfg.out)
    inputs = data_files(cfg)
    check_out_dir(out, "out", inputs)
    if config_path is not None:
        own = out / "config.yaml"
        if own.exists() and Path(config_path).exists() and own.samefile(config_path) and not (out / "run.json").is_file():
            raise ConfigError(None, f"out: {own} is the config file you gave, and a run writes its resolved config "
                                    "there; choose another 'out' (or rename the config)")
    device = resolve_device(cfg.train.device)
    warnings = []
    if cfg.data.path is not None:
        data = _read_all({"path": cfg.data.path}, cfg)["path"]
        split = make_split(cfg, len(data))
        train, val, test = (data.subset(split[k]) for k in ("train", "val", "test"))
        n = len(data)
    else:
        files = {k: getattr(cfg.data, k) for k in ("train_path", "val_path", "test_path")
                 if getattr(cfg.data, k) is not None}
        sets = _read_all(files, cfg)
        full = sets["train_path"]
        split = {"train": np.arange(len(full))}
        if "val_path" in sets:
            split["val"] = np.arange(len(sets["val_path"]))
            val = sets["val_path"]
        else:
            split["train"], split["val"] = _holdout(split["train"], cfg.split.holdout(), cfg.split.seed)
            val = full.subset(split["val"])
        train = full.subset(split["train"])
        test = sets.get("test_path", StructureDataset([]))
        split["test"] = np.arange(len(test))
        n = sum(len(s) for s in sets.values())
    if len(train) == 0:
        raise ConfigError(None, f"split: the training set is empty ({cfg.data.train_path or cfg.data.path}); give "
                                "split.train or more structures")
    check_layout(train, cfg.train)
    check_model(cfg.model, cfg.train, train)
    train_settings(cfg.train, cfg.uq, train)  # checked before anything is written; fit_model applies it
    _check_sizes(cfg, train, val, test)
    note = check_cutoff(train, cfg.model.cutoff)
    if note:
        warnings.append(note)
    hashes = file_hashes(inputs)
    return PreparedRun(cfg=cfg, out=out, train=train, val=val, test=test, split=split, n_structures=n,
                       device=device, hashes=hashes, warnings=warnings)
