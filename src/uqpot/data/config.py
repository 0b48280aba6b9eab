"""The ``data`` and ``split`` sections of a config: where the structures are, how to read them, and how
they are split (strict where YAML and pydantic are lenient: see :mod:`uqpot.core.config_io`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ..core.schema import Seed, Strict
from ..core.units import energy_factor, length_factor
from .io import ReadOptions


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
        energy_factor(v)
        return v

    @field_validator("length_unit")
    @classmethod
    def _length_unit(cls, v):
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


