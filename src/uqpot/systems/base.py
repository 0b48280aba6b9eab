"""The System contract and its registry: what uqpot knows about one studied system.

A system (ammonia, silica, rMD17, or one of your own) is one class, registered with ``@register_system``.
The loop, the studies and the command line look everything system-specific up here (``get_system(name)``) and pass
the values down; the lower layers (:mod:`uqpot.md`, :mod:`uqpot.sample`) take them as arguments and know no
system by name.  What a system declares (every attribute has a neutral default):

* ``name``: the registry key (the ``system`` of a study or loop config, ``uqpot reproduce NAME``);
* ``config``: the options of its data build (a dataclass with the build's defaults, ``quick(**overrides)``
  and ``check()``), or None for a system whose data is read, not built (rMD17);
* ``build(out, *, config, oracle, store, executor, console)``: the study's data build, labelled by
  ``oracle`` (an :class:`~uqpot.oracle.base.Oracle`) through the label store, batches on ``executor``;
  writes ``OUT/train.extxyz``, ``OUT/test.extxyz`` and ``OUT/summary.json`` and returns the summary;
* ``study``: ``"loop"`` (build the data, then the active-learning loop) or ``"grid"`` (fixed splits,
  every method trained on each: rMD17);
* ``preset_files``: the preset file of each named preset (``quick``, ``paper``) under ``configs/``;
* ``md_preset``: the paper's stability-campaign settings (:class:`~uqpot.md.campaign.CampaignConfig`
  fields), or None (a campaign of the loop's own ``md`` settings); ``periodic``: NPT is allowed;
  ``md_start_condition``: the ``info["condition"]`` prefix of the frames the campaign starts from
  (``md_start_label`` names them);
* ``stability_criteria(ground_state_energy)``: when a trajectory counts as unstable;
  ``energy_floor``: whether the criteria need the optimised minimum's energy (ammonia's floor);
* ``attack_lr``: the SI's adversarial learning rate of the system (Å per step), or None;
* ``has_neb``: the loop's ``neb`` setting applies to it (the NH3 inversion barrier, model against oracle);
* ``build_uses_executor``: its data build runs its labels on the study's executor (else in process);
* ``plan_workload``: the name under which :mod:`uqpot.studies.plan_costs` keeps the measured step costs
  that ``--dry-run`` scales from (None: the system's own name; another system's to borrow its figures);
  ``plan_sizes(data_config)``: (initial labelled structures, test structures, atoms per structure) of a
  build with those options, counted without building.

A periodic system (``periodic``) needs the edge-list layout, which never compiles
(:mod:`uqpot.train.autocompile`): the plan counts its trainings and MD eager.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal, Optional, Sequence

from pydantic import AfterValidator

from ..core.errors import ConfigError
from ..md.campaign import CampaignConfig
from ..md.stability import StabilityCriteria

SYSTEMS: dict[str, type["System"]] = {}

#: loop labels that are not registered systems (no preset, no criteria: the loop's own settings)
GENERIC = ("molecule", "generic")


class System:
    """One studied system (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    config: ClassVar[Optional[type]] = None
    study: ClassVar[Literal["loop", "grid"]] = "loop"
    preset_files: ClassVar[dict[str, str]] = {}
    md_preset: ClassVar[Optional[dict]] = None
    periodic: ClassVar[bool] = False
    md_start_condition: ClassVar[Optional[str]] = None
    md_start_label: ClassVar[str] = ""
    energy_floor: ClassVar[bool] = False
    attack_lr: ClassVar[Optional[float]] = None
    has_neb: ClassVar[bool] = False
    build_uses_executor: ClassVar[bool] = False
    plan_workload: ClassVar[Optional[str]] = None

    @property
    def workload(self) -> str:
        """The name of the measured step costs the plan uses (``plan_workload``, else the system's name)."""
        return self.plan_workload or self.name

    # -- data ----------------------------------------------------------------------------------------------
    def data_config(self, quick: bool = False, **overrides):
        """The build's options: its defaults (or ``quick`` ones) with ``overrides``."""
        if self.config is None:
            raise ValueError(f"system {self.name!r} has no data build")
        return self.config.quick(**overrides) if quick else self.config(**overrides)

    def build(self, out, *, config, oracle, store=None, executor=None, console=None, progress: bool = True) -> dict:
        """Builds the system's data set into ``out`` with ``oracle``; returns the build's summary."""
        raise NotImplementedError(f"system {self.name!r} has no data build (its data sets are read)")

    def plan_sizes(self, data_config) -> tuple[int, int, int]:
        """(initial labelled structures, test structures, atoms per structure) of a build with the options
        ``data_config``, counted without building (``uqpot reproduce --dry-run``)."""
        raise NotImplementedError(f"system {self.name!r} does not count its build's sizes")

    # -- presets -------------------------------------------------------------------------------------------
    def preset_file(self, preset: str) -> str:
        """The file name (under ``configs/``) of the named preset; ValueError for an unknown preset."""
        if preset not in self.preset_files:
            raise ValueError(f"unknown preset {preset!r} of {self.name}; known: {', '.join(self.preset_files)}")
        return self.preset_files[preset]

    # -- MD ------------------------------------------------------------------------------------------------
    def stability_criteria(self, ground_state_energy: float | None = None, **overrides) -> StabilityCriteria:
        """When a trajectory of this system counts as unstable (default: finiteness only)."""
        return StabilityCriteria(**overrides)

    def campaign_config(self, length_scale: float = 1.0, **overrides) -> CampaignConfig:
        """The system's stability campaign: the paper's settings (``md_preset``) with the run length scaled
        by ``length_scale`` and ``overrides``, or a custom campaign of ``overrides`` alone; the criteria of
        the system travel with it (:meth:`CampaignConfig.with_criteria`)."""
        if overrides.get("ensemble") == "npt" and not self.periodic:
            raise ValueError(f"ensemble 'npt' needs a periodic system (a cell), not {self.name}")
        if self.md_preset is None:
            cfg = CampaignConfig(system="custom", **overrides)
            cfg.duration_fs = cfg.duration_fs * length_scale
            return cfg
        base = {"system": self.name, **self.md_preset}
        base["duration_fs"] = base["duration_fs"] * float(length_scale)
        return CampaignConfig(**{**base, **overrides}).with_criteria(self.stability_criteria,
                                                                     energy_floor=self.energy_floor)

    def md_starts(self, initial: Sequence) -> tuple[list, str]:
        """(the campaign's start structures, where they come from): every initial structure, or those whose
        ``info["condition"]`` starts with ``md_start_condition`` (all of them, with a warning, when none does)."""
        starts = list(initial)
        if self.md_start_condition is None:
            return starts, f"every initial structure ({len(starts)})"
        hot = [s for s in starts if str(s.info.get("condition", "")).startswith(self.md_start_condition)]
        if hot:
            return hot, f"the {self.md_start_label} frames of the initial data ({len(hot)})"
        label = self.md_start_label.split(" equilibration")[0]
        return starts, (f"warning: no initial structure carries the {label} label (info 'condition'), so the "
                        f"runs start from every initial structure ({len(starts)}), not from the paper's {label} "
                        "frames")


def register_system(cls: type[System]) -> type[System]:
    """Class decorator: registers ``cls`` under ``cls.name`` (a non-empty name, not taken by another class)."""
    if not isinstance(cls, type) or not issubclass(cls, System):
        raise TypeError("register_system: a System subclass is needed")
    if not cls.name or cls.name in GENERIC:
        raise TypeError(f"register_system: {cls.__name__} needs a name (not {', '.join(GENERIC)})")
    if cls.name in SYSTEMS and SYSTEMS[cls.name] is not cls:
        raise ValueError(f"register_system: the name {cls.name!r} is taken by {SYSTEMS[cls.name].__name__}")
    SYSTEMS[cls.name] = cls
    return cls


def system_names(study: str | None = None) -> list[str]:
    """The registered systems' names, sorted (only those of one ``study`` kind when it is given)."""
    return sorted(n for n, c in SYSTEMS.items() if study is None or c.study == study)


def get_system(name: str) -> System:
    """The registered system ``name``; ValueError (one line naming the known systems) for any other."""
    cls = SYSTEMS.get(name)
    if cls is None:
        raise ValueError(f"unknown system {name!r}; known: {', '.join(system_names())}")
    return cls()


def find_system(name: str) -> System | None:
    """The registered system ``name``, or None (a generic loop label such as ``molecule``)."""
    cls = SYSTEMS.get(name)
    return None if cls is None else cls()


def check_loop_system(name: str) -> str:
    """``name`` when it is a registered system of the ``loop`` study or a generic label (``molecule``,
    ``generic``); ValueError naming the known ones otherwise (a loop config's ``system``)."""
    known = system_names("loop") + list(GENERIC)
    if name not in known:
        raise ValueError(f"unknown system {name!r}; known: {', '.join(known)}")
    return name


#: a loop config's ``system``: a registered system of the loop study, or ``molecule`` / ``generic``
LoopSystemName = Annotated[str, AfterValidator(check_loop_system)]


def check_study_system(name: str) -> str:
    """``name`` when it is a registered system whose study builds its data and runs the loop (a study
    file's ``system``); ValueError naming those systems otherwise."""
    known = [n for n in system_names("loop") if SYSTEMS[n].config is not None]
    if name not in known:
        raise ValueError(f"unknown system {name!r}; known: {', '.join(known)}")
    return name


#: a study file's ``system``: a registered system with a data build and the loop study
StudySystemName = Annotated[str, AfterValidator(check_study_system)]


def check_grid_system(name: str) -> str:
    """``name`` when it is a registered system of the ``grid`` study (a grid study file's ``system``);
    ValueError naming those systems otherwise."""
    known = system_names("grid")
    if name not in known:
        raise ValueError(f"unknown system {name!r}; known: {', '.join(known)}")
    return name


#: a grid study file's ``system``: a registered system of the grid study (fixed splits, every method)
GridSystemName = Annotated[str, AfterValidator(check_grid_system)]


def preset_path(system: str, preset: str) -> Path:
    """The preset file of ``system``: a YAML path as given, or the named preset's file in ``./configs`` or
    the uqpot source tree's ``configs/``."""
    p = Path(preset)
    if p.suffix in (".yaml", ".yml"):
        return p
    try:
        sys_ = get_system(system)
    except ValueError as exc:
        raise ConfigError(None, str(exc)) from None
    if preset not in sys_.preset_files:
        raise ConfigError(None, f"unknown preset {preset!r}: {', '.join(sys_.preset_files)}, or a YAML file")
    name = sys_.preset_files[preset]
    for root in (Path.cwd() / "configs", Path(__file__).resolve().parents[3] / "configs"):
        if (root / name).is_file():
            return root / name
    raise ConfigError(None, f"preset file {name} not found in ./configs or the uqpot source tree")
