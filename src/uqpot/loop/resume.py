"""Whether a loop may go on in its folder: the stored config against the new one (a loop resumes only with
the same settings, save those it never reads and the speed choices it keeps from its start)."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..core.errors import ConfigError
from ..core.rundir import place, recorded_place, setting_differences
from ..sample import SAMPLERS
from ..fit.run import flat_settings, kept_speed_choices
from .config import LoopConfig
from .prepare import recorded_run


def _unread_settings(before: LoopConfig | None, cfg: LoopConfig) -> tuple[str, ...]:
    """Sections of the loop config that neither the stored loop ``before`` (None: unreadable) nor ``cfg``
    ever reads: ``sampling`` (the MD samplers' settings) when no method of either samples with a sampler whose
    settings live there (e.g. every method attacks)."""
    def reads_sampling(c) -> bool:
        return any(SAMPLERS[c.sampler_for(m)].section == "sampling" for m in c.methods)

    return ("sampling",) if before is not None and not reads_sampling(before) and not reads_sampling(cfg) else ()


#: ``until`` settings that only the final models read (:mod:`uqpot.loop.final` trains again when they change)
FINAL_KEYS = ("final", "final_val_fraction")
#: settings of a loop config that name files: compared as files, not as strings (:func:`uqpot.core.rundir.same_file`)
PATH_KEYS = ("data.train", "data.test", "store", "init_model")


def check_same_config(out: Path, cfg: LoopConfig, log=None) -> LoopConfig:
    """The config to go on with in ``out``: ``cfg``, with the speed choices the loop keeps from its start
    (:func:`uqpot.fit.run.kept_speed_choices`).  Settings that neither the stored loop nor ``cfg`` reads
    (:func:`_unread_settings`: the MD samplers' ``sampling`` in a loop that only attacks) are not compared,
    nor is ``out`` (the folder may be given another way, or moved); file paths are compared as files.  Any
    other difference is refused, naming the settings.  Neither are ``until.final`` and
    ``until.final_val_fraction`` (:data:`FINAL_KEYS`): they change only the final models, which
    :mod:`uqpot.loop.final` trains again when they do."""
    old = out / "config.yaml"
    if not old.is_file():
        return cfg
    prev, before = yaml.safe_load(old.read_text()), None
    try:  # through the current schema, so that options added since (at their defaults) compare equal
        before = LoopConfig.model_validate(prev)
        prev = before.model_dump(mode="json")
    except Exception:  # noqa: BLE001 - a config this uqpot cannot read differs from any it writes
        pass
    cur = cfg.model_dump(mode="json")
    kept, note = {}, None
    if isinstance(prev, dict) and isinstance(prev.get("train"), dict):
        kept, note = kept_speed_choices(prev["train"], cfg.train)
        cur["train"].update(kept)
    unread = _unread_settings(before, cfg)
    for d in (prev, cur):  # a longer loop may continue a shorter one
        if isinstance(d, dict):
            d.pop("generations", None)
            for key in FINAL_KEYS:  # the final models' settings: uqpot.loop.final retrains on a change
                (d.get("until") or {}).pop(key, None)
            d.get("train", {}).pop("progress", None)
            d.pop("replicates", None)  # stacked or separate replicates: the same results (uqpot.fit.replicates)
            for key in unread:
                d.pop(key, None)
            if d.get("store") is None and d.get("out") is not None:  # the default store, spelled out
                d["store"] = str(Path(d["out"]) / "labels.db")
    now = place(out)
    then = recorded_place(recorded_run(out), prev.get("out") if isinstance(prev, dict) else None, now)
    a, b = (flat_settings(prev), flat_settings(cur)) if isinstance(prev, dict) else ({"(unreadable)": prev}, {})
    diff = setting_differences(a, b, PATH_KEYS, then, now)
    if diff:
        raise ConfigError(old, f"{out} holds a loop with a different config (differs in: {'; '.join(diff)}); "
                               "choose another 'out', or rerun with --restart to start the loop afresh there (the "
                               "label store is kept)")
    if not kept:
        return cfg
    if log is not None:
        log(note)
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=kept)})

