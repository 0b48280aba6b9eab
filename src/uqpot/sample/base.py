"""The contract every sampler implements, and its registry.

A sampler finds the structures the oracle labels next: given the generation's trained UQ model and its data
(a :class:`SamplingContext`: explicit values, no loop object), :meth:`Sampler.propose` returns unlabelled
candidates (each with ``info`` saying where it came from) and a record of the step (a JSON-able dict).  The
active-learning loop writes them where it writes every sampler's (``GEN/METHOD/attack/candidates.extxyz``,
``history.npz``, ``attack.json``), labels, stores and resumes them in the same way, whichever sampler made them.

Adding a sampler is one file: a :class:`Sampler` subclass with its settings (a
:class:`~uqpot.core.schema.Strict` model set as ``settings``) and, where the loop config has a section for them,
that section's name (``section``: ``attack`` for the adversarial sampler, ``sampling`` for the MD ones; a
sampler without one runs with its settings' defaults), decorated with ``@register_sampler("name")``; a
built-in sampler's module is imported in :mod:`uqpot.sample`.  The loop config (``sampler: name`` or one per
method), the loop and the samplers study then know it.

A sampler must be deterministic given the context (its randomness drawn from ``ctx.seed``), must not label
anything (the loop does) and must not write files (the loop writes what it returns).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Optional

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

from ..nn import modelfile
from ..data.structures import Structure, StructureDataset
from ..core.schema import Strict
from .trust import Calibration

#: sampler name -> class, in the order of registration
SAMPLERS: dict[str, type["Sampler"]] = {}


@dataclass
class SamplingContext:
    """Everything a sampler may use, for one UQ method in one generation of the loop."""

    model: Any  # the generation's trained UQ model (uqpot.evaluation.models.load)
    model_file: Path  # its file (the stored calibration: :meth:`calibration`)
    method: str  # the UQ method's registered name
    pool: StructureDataset  # labelled structures the samples start from; their energies are the reference
    settings: Strict  # the sampler's settings (its ``settings`` class: the loop config's section, or defaults)
    seed: int  # the generation's seed (the loop's seed + the generation)
    energy_cutoff: Optional[float]  # kcal/mol above the pool's minimum, or None (no cut-off)
    budget: int  # the oracle budget of a generation: candidates at most (the loop's ``attack.n_seeds``)
    kT: float  # kcal/mol/atom, the Boltzmann reference's temperature (Eq. 16; the loop's ``attack.kT``)
    batch_size: int = 64  # for predictions over the pool
    md_preset: dict = field(default_factory=dict)  # the system's MD values: temperatures_K, timestep_fs, skin
    criteria: Any = None  # the system's stability criteria of MD (uqpot.md.stability), or None

    def calibration(self):
        """The model's stored calibration of U to σ_F (:class:`~uqpot.sample.trust.Calibration`)."""
        return Calibration.from_extra(modelfile.read(self.model_file).get("extra", {}), where=str(self.model_file))


@dataclass
class Proposal:
    """What a sampler returns: the candidates (unlabelled), the step's record, per-step arrays for
    ``history.npz`` and one line for the loop's log."""

    candidates: list[Structure]
    record: dict
    history: dict = field(default_factory=dict)
    message: str = ""


class Sampler:
    """One way of finding new structures; subclasses implement :meth:`propose`."""

    name: ClassVar[str] = "base"
    #: the sampler's settings (a Strict model; every field with a default)
    settings: ClassVar[type[Strict]] = Strict
    #: the loop config's section that holds the settings (None: the settings' defaults)
    section: ClassVar[Optional[str]] = None

    def propose(self, ctx: SamplingContext) -> Proposal:
        raise NotImplementedError


def register_sampler(name: str):
    """Class decorator: registers a sampler under ``name`` (its settings must be a Strict model)."""

    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, Sampler)):
            raise TypeError(f"sampler {name!r} must be a Sampler subclass")
        if not (isinstance(cls.settings, type) and issubclass(cls.settings, Strict)):
            raise TypeError(f"sampler {name!r} must declare its settings: settings = <a Strict model>")
        cls.name = name
        SAMPLERS[name] = cls
        return cls

    return deco


def sampler_names() -> tuple[str, ...]:
    return tuple(SAMPLERS)


def get_sampler(name: str) -> Sampler:
    """An instance of the registered sampler ``name``."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]()


def _choices(names) -> str:
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _check_name(name: str) -> str:
    if name not in SAMPLERS:
        raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": _choices(SAMPLERS)})
    return name


#: a registered sampler's name (validated when a config is read, so a sampler registered later is accepted)
SamplerName = Annotated[str, AfterValidator(_check_name)]
