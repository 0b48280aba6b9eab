"""Typed configuration.  Unknown keys are errors; every run writes its resolved config beside its outputs.

Relative paths in a config are taken relative to the current working directory (where ``uqpot`` runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .schema import Strict  # noqa: F401  (re-exported: every config section derives from it)
from .uq.options import NoneOptions, UQSection


class DataConfig(Strict):
    """Where the structures are and how to read them."""

    path: Path
    format: Optional[str] = None
    energy_key: Optional[str] = None
    forces_key: Optional[str] = None
    energy_unit: str = "kcal/mol"
    length_unit: str = "Å"
    min_distance: float = Field(0.5, ge=0.0, description="minimum allowed interatomic distance (Å)")
    index: str = ":"

    @field_validator("energy_unit")
    @classmethod
    def _energy_unit(cls, v):
        from .units import energy_factor

        energy_factor(v)
        return v

    @field_validator("length_unit")
    @classmethod
    def _length_unit(cls, v):
        from .units import length_factor

        length_factor(v)
        return v

    def read_options(self, require_energy=True, require_forces=True):
        from .data.io import ReadOptions

        return ReadOptions(format=self.format, energy_key=self.energy_key, forces_key=self.forces_key,
                           energy_unit=self.energy_unit, length_unit=self.length_unit,
                           min_distance=self.min_distance, index=self.index,
                           require_energy=require_energy, require_forces=require_forces)


Size = Union[int, float]


class SplitConfig(Strict):
    """Random split (counts or fractions, with a seed) or index files (one index per line)."""

    train: Optional[Size] = 0.8
    val: Optional[Size] = 0.1
    test: Optional[Size] = None
    seed: int = 0
    train_file: Optional[Path] = None
    val_file: Optional[Path] = None
    test_file: Optional[Path] = None

    @model_validator(mode="after")
    def _files(self):
        if (self.val_file or self.test_file) and not self.train_file:
            raise ValueError("index files need at least train_file")
        return self


class ModelConfig(Strict):
    """PaiNN with the SI's hyper-parameters by default."""

    features: int = Field(128, ge=1)
    interactions: int = Field(3, ge=1)
    rbf: int = Field(20, ge=2)
    cutoff: float = Field(5.0, gt=0.0)
    activation: Literal["ssp", "silu"] = "ssp"
    readout_hidden: int = Field(64, ge=1)
    trainable_rbf: bool = True


def uq_config(method: str = "none", **options):
    """The typed options of the ``uq`` section for ``method`` (each method declares its own model beside
    its code; see :mod:`uqpot.uq.options`).  pydantic's ValidationError when an option is wrong."""
    from .uq.options import uq_options

    return uq_options(method, **options)


class TrainConfig(Strict):
    epochs: int = Field(500, ge=1)
    batch_size: int = Field(64, ge=1)
    val_batch_size: Optional[int] = Field(None, ge=1)
    lr: float = Field(1e-4, gt=0.0)
    lr_factor: float = Field(0.5, gt=0.0, lt=1.0)
    lr_patience: int = Field(30, ge=1, description="epochs without validation improvement before the lr is cut")
    min_lr: float = Field(1e-7, ge=0.0)
    early_stopping: Optional[int] = Field(
        None, ge=1, description="stop after this many epochs without improvement (default: off)")
    stop_at_min_lr: bool = Field(True, description="stop once the lr has reached min_lr and stalls again")
    energy_weight: float = Field(0.1, ge=0.0)
    forces_weight: float = Field(1.0, ge=0.0)
    dtype: Literal["float32", "float64"] = "float32"
    device: str = "auto"
    grad_clip: Optional[float] = Field(None, gt=0.0)
    max_nonfinite: int = Field(5, ge=0, description="non-finite losses tolerated per epoch before rollback")
    max_hours: Optional[float] = Field(None, gt=0.0)
    progress: bool = True
    layout: Literal["auto", "sparse", "dense"] = Field(
        "auto", description="pair layout: 'dense' (all pairs of a molecule on a padded grid, no gathers or "
        "scatters), 'sparse' (edge list) or 'auto' (dense for molecules of at most 32 atoms when the step is "
        "compiled, else sparse); same results to float tolerance")
    compile: bool = Field(
        False, description="compile the training step with torch.compile (forces by torch.func.grad), on "
        "the dense layout (molecules of at most 32 atoms); the first steps pay the compilation, later ones "
        "run faster; same results to float tolerance")


class RunConfig(Strict):
    """``uqpot train CONFIG.yaml``."""

    seed: int = 0
    out: Path = Path("runs/run")
    data: DataConfig
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    #: ``uq: {method: none|ensemble|mve|evidential|gmm|llpr|shallow_ensemble|<registered>, ...}``: the options
    #: model of the method (its own keys only; see :mod:`uqpot.uq.options`)
    uq: UQSection = Field(default_factory=NoneOptions)
    train: TrainConfig = TrainConfig()


def _format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join([prefix] * bool(prefix) + [str(x) for x in err["loc"]]) or "(top level)"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key '{loc}'")
        elif err["type"] == "foreign_option":  # an option of another UQ method
            parts.append(f"{loc} {err['msg']}")
        elif err["type"] == "missing":
            parts.append(f"missing key '{loc}'")
        else:
            parts.append(f"'{loc}': {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)


def load_yaml(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, "config file not found" if not path.exists() else "not a file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(path, f"invalid YAML: {exc}") from None
    if data is None:
        raise ConfigError(path, "config file is empty")
    if not isinstance(data, dict):
        raise ConfigError(path, "a config must be a mapping of keys to values")
    return data


def parse(model: type[BaseModel], data: dict, path=None, prefix: str = ""):
    """``model`` from ``data``; errors name the keys (under ``prefix``, the section of a larger file) and
    the file ``path``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(path, _format_validation_error(exc, prefix)) from None


def apply_overrides(data: dict, overrides: dict | None) -> dict:
    """Sets ``{"train.epochs": 3, ...}`` (dotted keys) in the nested mapping ``data``, in place."""
    for dotted, value in (overrides or {}).items():
        node = data
        keys = dotted.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return data


def load_config(path, model: type[BaseModel] = RunConfig, overrides: dict | None = None):
    return parse(model, apply_overrides(load_yaml(path), overrides), path)


def dump_config(cfg: BaseModel, path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True))
    tmp.replace(path)
