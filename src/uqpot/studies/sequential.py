"""``--seeds auto[:MAX[:BATCH]]``: a loop study that adds seeds in batches until the paper's claims are resolved.

The study starts with the preset's seeds (the study file's ``seeds``, n₀ of them) and, after each batch, checks
the claims (:func:`uqpot.report.claims.check`) on the seeds run so far.  It stops when no claim is left
unresolved (:func:`decide`), else it adds the next batch: BATCH seeds (default n₀), the smallest non-negative
integers not yet used, until MAX seeds (default 4·n₀; the last batch is cut at MAX).  The planned looks are
therefore known from the start: n₀, n₀+BATCH, …, MAX seeds, K of them (:func:`plan_looks`).

Sequential correction.  Looking at accumulating data K times and stopping at the first look where the claims
are decided would inflate the false-positive rate of the verdicts, so each look k gets its own level α_k from
the Lan-DeMets O'Brien-Fleming-type alpha-spending function (Lan & DeMets 1983, Biometrika 70:659-663) over
the information fractions t_k = seeds at look k / MAX, with α = 0.05 spent in all
(:func:`uqpot.metrics.significance.spending_alphas`: α_k = α*(t_k) − α*(t_{k−1}), α*(t) =
2 − 2Φ(z_{0.975}/√t); Σ α_k ≤ 0.05, so the family-wise error over all looks and comparisons stays ≤ 0.05 by
the union bound).  Early looks spend almost nothing (3 of 12 seeds: α₁ ≈ 9·10⁻⁵), the last one most
(≈ 0.026).
The verdicts of look k are Holm's procedure over the study's comparisons at α_k instead of 0.05; the final
report's claims table uses the last look's α_k and says so.

When a claim is resolved (at look k, by its Holm verdict at α_k): *reproduced* or *contradicted*.  A claim
whose verdict is *not contradicted* (``not_improves``, or only comparisons that can contradict it: an absent
effect is never shown by an interval, so more seeds cannot prove it) or *not measured* (the study has no data
for it) cannot be resolved by adding seeds: such claims are counted as *undecidable* and do not hold the study
back.  An "only X improves" claim is resolved when X's improvement is significant (reproduced) or another
method's is (contradicted).  The study stops when every claim is resolved or undecidable, or when MAX seeds
have run; every look is re-evaluated from scratch on all its seeds (a claim resolved at one look is not frozen).

``OUT/sequential.json`` records the plan and every look (its seeds, α_k, the cumulative α spent, the claims
resolved / unresolved / undecidable, the decision and why); the report (:mod:`uqpot.report.loop`) shows it as
``table_sequential.csv``.  A rerun resumes: finished seeds are not recomputed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..core.config_io import load_config
from ..core.errors import ConfigError
from ..core.provenance import write_json
from ..metrics.significance import spending_alphas
from ..report import claims as claims_mod
from ..report.loop import records
from ..report.observations import observations
from .study import Study, run_study_loop, study_seeds

ALPHA = 0.05
SPENDING = "obrien_fleming"
#: MAX when ``auto`` gives none: this many times the preset's number of seeds
DEFAULT_MAX_FACTOR = 4
RESOLVED = ("reproduced", "contradicted")
UNDECIDABLE = ("not contradicted", "not measured")


@dataclass(frozen=True)
class AutoSeeds:
    """``--seeds auto[:MAX[:BATCH]]``: None = the default (MAX 4·n₀, BATCH n₀)."""

    max: int | None = None
    batch: int | None = None

    def text(self) -> str:
        return ":".join(["auto", *(str(v) for v in (self.max, self.batch) if v is not None)])


def parse_auto(values, option: str = "--seeds") -> AutoSeeds | None:
    """``auto``, ``auto:MAX`` or ``auto:MAX:BATCH`` (text, or a one-item list) as :class:`AutoSeeds`; None when
    the value is no ``auto`` form; a ConfigError (one line) for a bad one."""
    items = [str(v).strip() for v in (values.split(",") if isinstance(values, str) else values)]
    if not any(i.lower().startswith("auto") for i in items):
        return None
    shown = ",".join(items)
    if len(items) != 1:
        raise ConfigError(None, f"{option} {shown!r}: 'auto' stands alone (auto, auto:MAX or auto:MAX:BATCH), not "
                                "in a list of seeds")
    parts = items[0].split(":")
    if parts[0].lower() != "auto" or len(parts) > 3:
        raise ConfigError(None, f"{option} {shown!r}: expected auto, auto:MAX or auto:MAX:BATCH")
    nums = []
    for name, p in zip(("MAX", "BATCH"), parts[1:]):
        try:
            v = int(p)
        except ValueError:
            raise ConfigError(None, f"{option} {shown!r}: {name} must be a positive integer, got {p!r}") from None
        if v < 1:
            raise ConfigError(None, f"{option} {shown!r}: {name} must be a positive integer, got {v}")
        nums.append(v)
    return AutoSeeds(*nums)


def plan_looks(first: list[int], auto: AutoSeeds) -> list[list[int]]:
    """The seeds of every planned look: ``first`` (the preset's), then batches of the next unused integers,
    up to MAX seeds (ConfigError where MAX is below the preset's count)."""
    n0 = len(first)
    top = auto.max if auto.max is not None else DEFAULT_MAX_FACTOR * n0
    batch = auto.batch if auto.batch is not None else n0
    if top < n0:
        raise ConfigError(None, f"--seeds {auto.text()}: MAX {top} is below the preset's {n0} seeds {first}")
    used, seeds, looks = set(first), list(first), [list(first)]
    nxt = 0
    while len(seeds) < top:
        for _ in range(min(batch, top - len(seeds))):
            while nxt in used:
                nxt += 1
            used.add(nxt)
            seeds.append(nxt)
        looks.append(list(seeds))
    return looks


def look_alphas(looks: list[list[int]], alpha: float = ALPHA, kind: str = SPENDING) -> list[float]:
    """Each planned look's level: the spending function over the information fractions seeds / MAX."""
    top = len(looks[-1])
    return spending_alphas([len(s) / top for s in looks], alpha, kind)


def decide(results: list[dict], n_seeds: int, max_seeds: int) -> tuple[bool, str, dict]:
    """(stop, reason, counts) after a look whose claims (:func:`uqpot.report.claims.check` at the look's level)
    are ``results`` over ``n_seeds`` of at most ``max_seeds`` (see the module docstring for what counts as
    resolved).  ``counts``: claim ids by ``resolved``, ``unresolved`` and ``undecidable``."""
    counts: dict[str, list[str]] = {"resolved": [], "unresolved": [], "undecidable": []}
    for r in results:
        v = r.get("verdict_holm", r["verdict"])
        key = "resolved" if v in RESOLVED else "undecidable" if v in UNDECIDABLE else "unresolved"
        counts[key].append(r["id"])
    if not counts["unresolved"]:
        why = (f"every claim resolved ({len(counts['resolved'])})" if counts["resolved"] else "no claim to resolve")
        if counts["undecidable"]:
            why += f"; {len(counts['undecidable'])} cannot be resolved by more seeds (not contradicted / not measured)"
        return True, why, counts
    if n_seeds >= max_seeds:
        return True, f"MAX {max_seeds} seeds reached with {len(counts['unresolved'])} claim(s) unresolved", counts
    return False, f"{len(counts['unresolved'])} claim(s) unresolved: next batch", counts


def first_seeds(preset) -> list[int]:
    """The preset's own seeds (the first batch)."""
    return study_seeds(load_config(preset, Study), None, preset)


def planned_seeds(preset, auto: AutoSeeds) -> list[list[int]]:
    """The planned looks of ``preset`` under ``auto`` (checks MAX against the preset)."""
    return plan_looks(first_seeds(preset), auto)


def look_claims(out: Path, system: str, seeds: list[int], alpha: float) -> list[dict]:
    """The claims of ``system`` on the finished seeds ``seeds`` of the study in ``out``, Holm at ``alpha``."""
    recs = [r for r in records(out)[0] if r["seed"] in set(seeds)]
    return claims_mod.check(system, observations(recs), alpha=alpha)


def run_sequential(preset, out: Path, auto: AutoSeeds, executor=None, console=None, overrides: dict | None = None,
                   restart: bool = False):
    """Runs the study in batches of seeds until :func:`decide` stops it; writes ``OUT/sequential.json`` after
    every look and returns (the last look's study summary, its first loop config, the record)."""
    study = load_config(preset, Study)
    looks = planned_seeds(preset, auto)
    alphas = look_alphas(looks)
    top = len(looks[-1])
    out = Path(out)
    rec = {"rule": "stop when no claim is unresolved (Holm at the look's alpha), else add a batch, up to MAX seeds",
           "spending": "Lan-DeMets O'Brien-Fleming-type alpha spending (Lan & DeMets 1983), increments as the "
                       "looks' levels", "alpha": ALPHA, "option": auto.text(), "first_seeds": looks[0],
           "max_seeds": top, "planned_looks": looks, "planned_alphas": alphas, "looks": []}
    spent = 0.0
    summary = cfg = None
    for k, (seeds, a) in enumerate(zip(looks, alphas), start=1):
        if console is not None:
            console.print(f"[bold]--seeds {auto.text()}[/bold]: look {k} of at most {len(looks)}, seeds "
                          f"{', '.join(map(str, seeds))} (alpha {a:.3g})")
        summary, cfg = run_study_loop(preset, out, executor, console, overrides, seeds, restart=restart and k == 1)
        results = look_claims(out, study.system, seeds, a)
        stop, reason, counts = decide(results, len(seeds), top)
        spent += a
        rec["looks"].append({"look": k, "seeds": seeds, "n_seeds": len(seeds), "information_fraction": len(seeds) / top,
                             "alpha": a, "alpha_spent": spent, **{f"n_{key}": len(v) for key, v in counts.items()},
                             **counts, "decision": "stop" if stop else "continue", "reason": reason,
                             "time": time.strftime("%Y-%m-%d %H:%M:%S")})
        rec.update(stopped_at=k if stop else None, reason=reason if stop else None, seeds=seeds, final_alpha=a)
        write_json(out / "sequential.json", rec)
        if console is not None:
            console.print(f"look {k}: {len(counts['resolved'])} resolved, {len(counts['unresolved'])} unresolved, "
                          f"{len(counts['undecidable'])} undecidable: {'stop' if stop else 'continue'} ({reason})")
        if stop:
            break
    return summary, cfg, rec
