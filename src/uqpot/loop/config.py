"""The loop config (``uqpot loop CONFIG.yaml``): its sections and their checks.  The samplers' sections are
their own settings classes (``attack``: :class:`uqpot.sample.adversarial.AttackSettings`, ``sampling``:
:class:`uqpot.sample.md.SamplingSettings`), and ``sampler`` names any registered sampler
(:mod:`uqpot.sample.base`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from ..core.config_io import load_config
from ..nn.backbone import ModelSection
from ..nn.painn import PaiNNOptions
from ..core.schema import Strict
from ..train.config import TrainConfig
from ..oracle import FACTORIES
from ..sample import AttackSettings, SamplerName, SamplingSettings
from ..sample.stopping import StoppingSettings
from ..core.schema import Distinct, Seed
from ..fit.finetune import FinetuneSettings
from ..systems import LoopSystemName
from ..uq.options import MethodOptions, UQMethodName, UQOptions, parse_uq
from .md import campaign_config

#: the default methods: the paper's four
DEFAULT_METHODS = ("ensemble", "mve", "evidential", "gmm")


class LoopData(Strict):
    train: Path  # initial labelled training structures (split into train/val)
    test: Path  # labelled test structures
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # the paper: 62 train / 16 validation of 78
    energy_unit: str = "kcal/mol"
    length_unit: str = "Å"
    align_energies: bool = True  # put the data on the oracle's energy scale (uqpot.loop.active_learning)
    align_structures: int = Field(3, ge=1)


class OracleSettings(Strict):
    name: str
    options: dict = {}

    @field_validator("name")
    @classmethod
    def _known(cls, v):
        if v.lower().split(":")[0] not in FACTORIES:
            raise ValueError(f"unknown oracle {v!r}; known: {', '.join(FACTORIES)} (or pyscf:<preset>)")
        return v


class LoopConfig(Strict):
    seed: Seed = 0
    out: Path = Path("runs/loop")
    system: LoopSystemName = "generic"  # a registered system (uqpot.systems), molecule or generic
    methods: Distinct[UQMethodName] = list(DEFAULT_METHODS)  # any registered UQ method
    generations: int = Field(3, ge=1)
    data: LoopData
    model: ModelSection = Field(default_factory=PaiNNOptions)
    uq: MethodOptions = {}  # per-method options of the `uq` section, e.g. {ensemble: {members: 5}}
    train: TrainConfig = TrainConfig()
    attack: AttackSettings = AttackSettings()
    # how each generation finds the structures the oracle labels: one sampler, or one per method
    sampler: Union[SamplerName, dict[str, SamplerName]] = "adversarial"
    sampling: SamplingSettings = SamplingSettings()
    oracle: OracleSettings
    md: Optional[dict] = None  # stability campaign settings (uqpot.md.campaign), or none
    neb: Union[bool, Literal["full"]] = False  # NH3 inversion barrier, model (NEB) vs oracle (see uqpot.loop.md)
    batch_size: int = Field(64, ge=1)
    # PyTorch threads of every step (training, MD, attack, NEB): fixed, so that results do not depend on the
    # executor (see uqpot.core.determinism); part of the run's identity
    threads: int = Field(1, ge=1)
    store: Optional[Path] = None  # the label store; default OUT/labels.db (replicates of a study share one)
    # a trained uqpot model file (or, for an ensemble, one file per member) that every method fine-tunes
    # instead of training from scratch (``uqpot convert`` makes one from a MACE file); the network is then
    # the file's, and ``model`` is not used
    init_model: Optional[Union[Path, list[Path]]] = None
    finetune: FinetuneSettings = FinetuneSettings()
    # the stopping rule (uqpot.sample.stopping): each method stops when its exploration's fraction of frames
    # above a calibrated force-error tolerance is below a target, or its label budget is spent; `generations`
    # is then the maximum number of generations.  Unset: exactly `generations` generations
    until: Optional[StoppingSettings] = None
    # the replicates of a study (its seeds, uqpot.loop.replicates) train each method of a generation in one
    # stacked pass where that equals their separate runs (uqpot.fit.replicates): auto; separate: one training
    # per seed.  A speed choice, not part of the results (equal to float tolerance)
    replicates: Literal["auto", "separate"] = "auto"

    def init_files(self) -> list[Path]:
        if self.init_model is None:
            return []
        return [Path(p) for p in (self.init_model if isinstance(self.init_model, list) else [self.init_model])]

    def train_for(self) -> TrainConfig:
        """The training settings of every generation (the ``finetune`` ones when fine-tuning)."""
        if self.init_model is None:
            return self.train
        ft = self.finetune
        return self.train.model_copy(update={"lr": ft.lr or self.train.lr / 5,
                                             "epochs": ft.epochs or max(1, self.train.epochs // 2)})

    def uq_config(self, method: str) -> UQOptions:
        return parse_uq({"method": method, **self.uq.get(method, {})})

    def sampler_for(self, method: str) -> str:
        if isinstance(self.sampler, str):
            return self.sampler
        return self.sampler.get(method, "adversarial")

    @model_validator(mode="after")
    def _sampler_methods(self):
        if self.md:  # the campaign settings, checked now rather than after the first training
            try:
                campaign_config(self.md, self.system, self.seed)
            except ValidationError as exc:
                e = exc.errors()[0]
                where = "".join(f".{x}" for x in e["loc"])
                raise ValueError(f"md{where}: {e['msg'].removeprefix('Value error, ')}") from None
        if isinstance(self.sampler, dict):
            extra = sorted(set(self.sampler) - set(self.methods))
            if extra:
                raise ValueError(f"sampler: {', '.join(extra)} not among the loop's methods")
        return self
    def cutoff_for(self, generation: int) -> float | None:
        return self.attack.cutoff_for(generation)


def load_loop_config(path, overrides: dict | None = None) -> LoopConfig:
    return load_config(path, LoopConfig, overrides)
