"""The run config of ``uqpot train CONFIG.yaml`` (:class:`RunConfig`): the data, split, model, uq and train
sections, each declared where it is used (:mod:`uqpot.data.config`, the backbones' options in
:mod:`uqpot.nn`, :mod:`uqpot.uq.options`, :mod:`uqpot.train.config`), and the one place where the ``uq``
section's method name becomes its class (:func:`method_of`).  Reading and error messages:
:mod:`uqpot.core.config_io`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from ..data.config import DataConfig, SplitConfig
from ..nn.backbone import ModelSection, default_options
from ..core.schema import Seed, Strict
from ..train.config import TrainConfig
from ..uq import method_class
from ..uq.options import NoneOptions, UQOptions, UQSection, uq_options


def method_of(uq_cfg: UQOptions):
    """The UQ method class of a ``uq`` section (``none``: the plain potential's class): the one place where
    the method's name becomes its class; everything the run pipeline asks of the method is asked of it."""
    return method_class(uq_cfg.method)


def member_count(uq_cfg: UQOptions) -> int:
    """How many stacked networks the method ``uq_cfg`` trains."""
    return method_of(uq_cfg).members_for(uq_cfg)


def trains_plain_potential(uq_cfg: UQOptions) -> bool:
    """Whether the network is trained as a plain potential (``none`` and the post-hoc methods, which then
    wrap it): such runs with the same model, training settings, data and seed train the same network."""
    return method_of(uq_cfg).trains_plain_potential()


def trains_stress(uq_cfg: UQOptions) -> bool:
    """Whether the method can train on a stress label (its training network gives a stress)."""
    return method_of(uq_cfg).trains_stress()


def uq_config(method: str = "none", **options):
    """The typed options of the ``uq`` section for ``method`` (each method declares its own model beside
    its code; see :mod:`uqpot.uq.options`).  pydantic's ValidationError when an option is wrong."""
    return uq_options(method, **options)


class RunConfig(Strict):
    """``uqpot train CONFIG.yaml``."""

    seed: Seed = 0
    out: Path = Path("runs/run")
    data: DataConfig
    split: SplitConfig = SplitConfig()
    model: ModelSection = Field(default_factory=default_options)
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
