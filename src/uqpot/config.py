"""Typed configuration.  Unknown keys are errors; every run writes its resolved config beside its outputs.

Relative paths in a config are taken relative to the current working directory (where ``uqpot`` runs).

Strict where YAML and pydantic are lenient, because each leniency once let a wrong run through: a key given
twice is an error (YAML keeps the last silently), a boolean is not a number (``epochs: true`` would be 1
epoch), NaN and infinity are not numbers either (``lr: .inf`` passed ``lr > 0``), and options that cannot
be used together (index files and split sizes, one structure file and separate train/val/test files) are
refused instead of one silently winning.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import yaml
from pydantic import (BaseModel, Field, SerializeAsAny, ValidationError, ValidationInfo, WrapValidator, field_validator,
                      model_serializer, model_validator)

from .errors import ConfigError
from .schema import Seed, Strict  # noqa: F401  (Strict re-exported: every config section derives from it)
from .strict_yaml import read_yaml_mapping
from .uq.options import NoneOptions, UQSection


class DataConfig(Strict):
    """Where the structures are and how to read them: one file (``path``, split by the ``split`` section)
    or separate structure files per split (``train_path``, ``val_path``, ``test_path``: the convention of
    MACE and of most published data sets; without ``val_path`` a random ``split.val`` fraction of the
    training file is held out for validation)."""

    path: Optional[Path] = None
    train_path: Optional[Path] = None
    val_path: Optional[Path] = None
    test_path: Optional[Path] = None
    format: Optional[str] = None
    energy_key: Optional[str] = None
    forces_key: Optional[str] = None
    #: the stress of periodic frames (default: the calculator results' ``stress``, else an info ``virial``)
    stress_key: Optional[str] = None
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

    @model_validator(mode="after")
    def _one_source(self):
        per_split = [k for k in ("train_path", "val_path", "test_path") if getattr(self, k) is not None]
        if per_split and self.train_path is None:
            raise ValueError(f"data.{per_split[0]} needs data.train_path")
        if self.path is None and self.train_path is None:
            raise ValueError("give data.path (one structure file, split by the 'split' section) or "
                             "data.train_path (with optional val_path / test_path: one structure file per split)")
        if self.path is not None and per_split:
            raise ValueError(f"data.path and data.{per_split[0]} cannot be used together: give one structure "
                             "file with a split, or separate train/val/test structure files")
        return self

    def files(self) -> dict[str, Path]:
        """The structure files of this section by key (``path``, or ``train_path``/``val_path``/...)."""
        return {k: getattr(self, k) for k in ("path", "train_path", "val_path", "test_path")
                if getattr(self, k) is not None}

    def read_options(self, require_energy=True, require_forces=True):
        from .data.io import ReadOptions

        return ReadOptions(format=self.format, energy_key=self.energy_key, forces_key=self.forces_key,
                           stress_key=self.stress_key, energy_unit=self.energy_unit, length_unit=self.length_unit,
                           min_distance=self.min_distance, index=self.index,
                           require_energy=require_energy, require_forces=require_forces)


Size = Union[int, float]


#: the random split's sizes when none are given
DEFAULT_TRAIN, DEFAULT_VAL = 0.8, 0.1
#: share of the training structures held out for validation when index files give no val_file
DEFAULT_HOLDOUT = 0.2


class SplitConfig(Strict):
    """Random split (counts or fractions, with a seed) or index files (integer indices into ``data.path``,
    one per line).  Sizes and index files exclude each other (except ``val``, the share of ``train_file``
    held out for validation when there is no ``val_file``); unset sizes mean train 0.8, val 0.1, test the
    rest."""

    train: Optional[Size] = None
    val: Optional[Size] = None
    test: Optional[Size] = None
    seed: Seed = 0
    train_file: Optional[Path] = None
    val_file: Optional[Path] = None
    test_file: Optional[Path] = None

    @field_validator("train")
    @classmethod
    def _train_positive(cls, v):
        if v is not None and v <= 0:
            raise ValueError("the training split must hold at least one structure (a count >= 1 or a fraction > 0)")
        return v

    @field_validator("val", "test")
    @classmethod
    def _size(cls, v, info: ValidationInfo):
        if v is not None and v < 0:
            raise ValueError("must be >= 0")
        if info.field_name == "val" and v is not None and v == 0:
            raise ValueError("the validation split must hold at least one structure (the learning-rate schedule, "
                             "early stopping and the best-model checkpoint use it)")
        return v

    @model_validator(mode="after")
    def _files(self):
        if (self.val_file or self.test_file) and not self.train_file:
            raise ValueError("index files need at least train_file")
        if self.train_file:
            clash = [k for k in ("train", "test") if getattr(self, k) is not None]
            if self.val_file and self.val is not None:
                clash.append("val")
            if clash:
                raise ValueError(f"split.train_file and split.{clash[0]} cannot be used together: the index "
                                 "files are the split (split.val only sets the share of train_file held out "
                                 "for validation when there is no val_file)")
        return self

    def sizes(self) -> tuple:
        """(train, val, test) of a random split, defaults filled in."""
        return (DEFAULT_TRAIN if self.train is None else self.train,
                DEFAULT_VAL if self.val is None else self.val, self.test)

    def holdout(self):
        """Part of ``train_file`` (or ``data.train_path``) held out for validation without a val file: a
        fraction < 1 or a count."""
        return DEFAULT_HOLDOUT if self.val is None else self.val


class ModelConfig(Strict):
    """``model.kind: painn`` (the default): PaiNN with the SI's hyper-parameters by default."""

    #: not written into resolved configs (a PaiNN config reads as it did before MACE existed, so earlier runs
    #: keep their identity)
    kind: Literal["painn"] = Field("painn", exclude=True)
    features: int = Field(128, ge=1)
    interactions: int = Field(3, ge=1)
    rbf: int = Field(20, ge=2)
    cutoff: float = Field(5.0, gt=0.0)
    activation: Literal["ssp", "silu"] = "ssp"
    readout_hidden: int = Field(64, ge=1)
    trainable_rbf: bool = True
    spectral_norm: Optional[float] = Field(
        None, gt=0.0, description="bound on the spectral norm of every message/update linear map (SNGP-style "
                                  "distance-aware features; e.g. 0.95); unset: plain PaiNN")

    @model_serializer(mode="wrap")
    def _without_unset_options(self, handler):
        """Options added after runs were made are written only when set, so earlier runs keep their
        identity (their resolved configs read as before)."""
        out = handler(self)
        if isinstance(out, dict) and out.get("spectral_norm") is None:
            out.pop("spectral_norm", None)
        return out


class MACEModelConfig(Strict):
    """``model.kind: mace``: a MACE network (``pip install 'uqpot[mace]'``; :mod:`uqpot.nn.mace`).  Defaults:
    a small MACE (MACE's own defaults are 128 channels, max_L 1, correlation 3, 2 interactions, 5 Å)."""

    kind: Literal["mace"]
    channels: int = Field(32, ge=1, description="features per irrep order (MACE's num_channels)")
    max_L: int = Field(1, ge=0, le=3, description="highest order l of the hidden features")
    correlation: int = Field(3, ge=1, le=4, description="body order of the product basis minus one")
    interactions: int = Field(2, ge=1)
    cutoff: float = Field(5.0, gt=0.0)
    num_bessel: int = Field(8, ge=1)
    num_polynomial_cutoff: int = Field(5, ge=1)
    max_ell: int = Field(3, ge=0, le=4, description="order of the edges' spherical harmonics")
    radial_mlp: list[int] = Field([64, 64, 64], min_length=1)
    readout_hidden: int = Field(16, ge=1, description="width of MACE's non-linear readout")

    @field_validator("radial_mlp")
    @classmethod
    def _positive(cls, v):
        if any(x < 1 for x in v):
            raise ValueError("radial_mlp widths must be >= 1")
        return v


MODEL_KINDS = {"painn": ModelConfig, "mace": MACEModelConfig}


def _validate_model(value, handler):
    if isinstance(value, (ModelConfig, MACEModelConfig)):
        return value
    kind = value.get("kind", "painn") if isinstance(value, dict) else "painn"
    if kind not in MODEL_KINDS:
        _ModelKind.model_validate({"kind": kind})  # the error names model.kind and the kinds there are
    return MODEL_KINDS[kind].model_validate(value)


class _ModelKind(BaseModel):
    kind: Literal["painn", "mace"]


#: the ``model`` section: PaiNN or MACE, chosen by ``kind``
ModelSection = Annotated[SerializeAsAny[Union[ModelConfig, MACEModelConfig]], WrapValidator(_validate_model)]


def parse_model(data) -> Union[ModelConfig, MACEModelConfig]:
    """The typed ``model`` section (PaiNN unless ``kind: mace``)."""
    from pydantic import TypeAdapter

    return TypeAdapter(ModelSection).validate_python(data)


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
    #: weight of the stress term (MAE of V·σ/N, kcal/mol per atom; :mod:`uqpot.train.losses`); unset: 1 where
    #: every training structure carries a stress and the model gives one, else 0
    stress_weight: Optional[float] = Field(None, ge=0.0)
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
    member_order: Literal["auto", "shared", "independent"] = Field(
        "auto", description="ensembles: 'independent' gives every member its own batch order (its own seed), "
        "as separately trained networks see, in one stacked step (one molecule on the dense layout); 'shared' "
        "one order for all; 'auto' independent where the data allows (uqpot.train.member_order)")
    compile: Union[bool, Literal["auto"]] = Field(
        "auto", description="compile the training step with torch.compile (forces by torch.func.grad), on "
        "the dense layout (molecules of at most 32 atoms); the first steps pay the compilation, later ones "
        "run faster; same results to float tolerance.  'auto': where the measured break-even says the run's "
        "steps repay the compilation (uqpot.autocompile)")
    compile_mode: Literal["default", "reduce-overhead"] = Field(
        "default", description="torch.compile's mode for the compiled step: 'reduce-overhead' captures it as a "
        "CUDA graph on a GPU (one launch per step instead of hundreds; inputs copied into static buffers); on "
        "a CPU it compiles as 'default'")

    @field_validator("device")
    @classmethod
    def _device_name(cls, v):
        from .devices import check_device_name

        return check_device_name(v)

    @model_validator(mode="after")
    def _weights(self):
        if self.energy_weight == 0 and self.forces_weight == 0:
            raise ValueError("train.energy_weight and train.forces_weight are both 0: the loss would be 0 whatever "
                             "the model predicts; give at least one a positive weight (defaults 0.1 and 1.0)")
        return self


class RunConfig(Strict):
    """``uqpot train CONFIG.yaml``."""

    seed: Seed = 0
    out: Path = Path("runs/run")
    data: DataConfig
    split: SplitConfig = SplitConfig()
    model: ModelSection = Field(default_factory=ModelConfig)
    #: ``uq: {method: none|ensemble|mve|evidential|gmm|llpr|shallow_ensemble|partial_ensemble|descriptor_distance|<registered>, ...}``: the options
    #: model of the method (its own keys only; see :mod:`uqpot.uq.options`)
    uq: UQSection = Field(default_factory=NoneOptions)
    train: TrainConfig = TrainConfig()

    @field_validator("out", mode="before")
    @classmethod
    def _out_not_empty(cls, v):
        if v is None or (isinstance(v, str) and not v.strip()):
            raise ValueError("an output directory is needed (an empty 'out' would write the run into the working "
                             "directory)")
        return v

    @model_validator(mode="after")
    def _per_split_files(self):
        if self.data.train_path is not None:
            sp = self.split
            used = [k for k in ("train", "test", "train_file", "val_file", "test_file") if getattr(sp, k) is not None]
            if self.data.val_path is not None and sp.val is not None:
                used.append("val")
            if used:
                raise ValueError(f"data.train_path and split.{used[0]} cannot be used together: with one structure "
                                 "file per split, the split section only takes 'seed' and 'val' (the share of "
                                 "train_path held out for validation when there is no val_path)")
        return self


#: pydantic's names of the branches of a union in an error's location (``literal['a','b']``, ``float``,
#: ``dict[str,...]``, a class name): internal, never shown to a user
_BRANCH = re.compile(r"^(?:[A-Z]\w*|(?:literal|dict|list|tuple|set|function-\w+|str|int|float|bool|none|nullable|"
                     r"lax-or-strict|json-or-python|chain|is-instance)(?:\[.*\])?)$")


def _user_errors(errors: list[dict]) -> list[dict]:
    """pydantic's errors with the union branches taken out of their locations, and one error per key of a
    union: the one that went deepest into the value (``sampler.ensemble``: the bad method's sampler), else the
    branches' messages that are not only about the value's type (a name not among the choices, rather than
    "not a dictionary"), joined; where every branch fails on the type alone, the first speaks for all."""
    cleaned, unions = [], set()
    for err in errors:
        loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and _BRANCH.match(x)))
        if len(loc) != len(err["loc"]):
            unions.add(len(cleaned))
        cleaned.append({**err, "loc": loc})
    keep: list[dict] = []
    for k, err in enumerate(cleaned):
        if k in unions:
            others = [cleaned[j] for j in unions if j != k]
            if any(len(o["loc"]) > len(err["loc"]) and o["loc"][:len(err["loc"])] == err["loc"] for o in others):
                continue  # another branch got further into the value: its error is the one that matters
            if err["type"].endswith("_type") and any(o["loc"] == err["loc"] and not o["type"].endswith("_type")
                                                     for o in others):
                continue
            earlier = next((o for o in keep if o["loc"] == err["loc"] and o.get("union")), None)
            if earlier is not None:
                if not err["type"].endswith("_type"):
                    msg = err["msg"].removeprefix("Value error, ")
                    earlier["msg"] += "; or " + msg[:1].lower() + msg[1:]
                continue
            err = {**err, "union": True}
        keep.append(err)
    return keep


def _format_validation_error(exc: ValidationError, prefix: str = "", sources: dict | None = None) -> tuple[str, bool]:
    """(message, whether any problem is in the file rather than in a command-line option); ``sources``
    maps dotted keys set on the command line to their option (``{"train.epochs": "--epochs"}``)."""
    parts, in_file = [], False
    for err in _user_errors(exc.errors()):
        dotted = ".".join(str(x) for x in err["loc"])
        loc = ".".join([prefix] * bool(prefix) + [dotted]) or "(top level)"
        option = (sources or {}).get(dotted)
        in_file |= option is None
        name = f"{option} ({loc})" if option else f"'{loc}'"
        got = f" (got {err.get('input')!r})"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {name}")
        elif err["type"] == "foreign_option":  # an option of another UQ method
            parts.append(f"{name} {err['msg']}")
        elif err["type"] == "missing":
            parts.append(f"missing key {name}")
        elif err["type"] == "value_error":
            msg = err["msg"].removeprefix("Value error, ")
            if isinstance(err.get("input"), dict):  # a section-level check: its message names the keys
                parts.append(msg)
            else:  # the value once: the message may quote it already (a string, or "got ...")
                value = err.get("input")
                quoted = repr(value) in msg and (isinstance(value, str) or "got" in msg)
                parts.append(f"{name}: {msg}{'' if quoted else got}")
        else:
            parts.append(f"{name}: {err['msg']}{got}")
    return "; ".join(parts), in_file


def load_yaml(path) -> dict:
    """A config file as a mapping; duplicated keys, binary content and non-mappings are ConfigErrors."""
    return read_yaml_mapping(path)


def parse(model: type[BaseModel], data: dict, path=None, prefix: str = "", sources: dict | None = None):
    """``model`` from ``data``; errors name the keys (under ``prefix``, the section of a larger file) and
    the file ``path`` (or the command-line options in ``sources`` that set them)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, in_file = _format_validation_error(exc, prefix, sources)
        raise ConfigError(path if in_file else None, message) from None


def apply_overrides(data: dict, overrides: dict | None) -> dict:
    """Sets ``{"train.epochs": 3, ...}`` (dotted keys) in the nested mapping ``data``, in place."""
    for dotted, value in (overrides or {}).items():
        node = data
        keys = dotted.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(None, f"cannot set '{dotted}': '{k}' is not a section")
        node[keys[-1]] = value
    return data


def load_config(path, model: type[BaseModel] = RunConfig, overrides: dict | None = None,
                sources: dict | None = None):
    """``model`` from the YAML file ``path`` with dotted ``overrides``; ``sources`` names the command-line
    option of each override, so that an error in one is blamed on the option and not on the file."""
    return parse(model, apply_overrides(load_yaml(path), overrides), path, sources=sources)


def dump_config(cfg: BaseModel, path) -> None:
    from .provenance import write_text

    write_text(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True))
