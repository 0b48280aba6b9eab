"""The paper's claims, checked against a study's own results (``claims.yaml`` beside this module).

Every claim is split into pairwise comparisons (an ordering A > B > C into A > B, A > C and B > C; "A is best"
into A > B, A > C, ...; "better" in the quantity's own direction, e.g. a lower force MAE).  Each comparison has an *effect*, signed so that a positive effect is what the paper
says, with a 95% interval:

* over seeds (two or more): the mean of the per-seed differences with its t-interval (paired: both sides of
  a comparison share the seed, its data and, in a loop, its initial training set).  For a stable-MD fraction
  the per-seed fraction is used, so the interval holds the trajectories' noise and the training's both;
* one seed: a stable-MD fraction by Newcombe's interval over trajectories, Spearman and ROC-AUC by the
  bootstrap over test structures (paired: both methods are scored on the same structures); other
  quantities then have no interval.

What each comparison is paired on (its ``paired_on`` column; the unit is the study's, ``Observations.unit``):

* a loop study (ammonia, silica): the **seed**.  Both sides of a comparison share the seed, and with it the
  initial split, the MD start structures, velocities and thermostat noise, and the attack's starting
  structures; "rises"/"falls" compare one method's generations within each seed;
* the rMD17 grid: the **(molecule, split, seed)** unit: both methods trained on the same structures with
  the same seed;
* one unit: a stable-MD fraction of two methods in one generation is paired on the
  **trajectory start**: both models ran from the same start structures, temperatures, velocities and thermostat noise
  (the MD seed is the loop seed plus the generation), so the effect is the mean of the per-start
  differences of the outcomes (stable 1, not 0) with the percentile bootstrap over the starts, resampled
  together; where the starts differ (two generations) or the per-start outcomes are not at hand it is
  *not paired* (Newcombe treats the two models' trajectories of the seed as independent samples).
  Spearman and ROC-AUC are paired on the **test structure** (the bootstrap resamples the structures of
  both models together).

p-values (:mod:`uqpot.metrics.significance`): over two or more units the paired t-test of the per-unit
differences (scipy's ``ttest_1samp`` against 0), consistent with the t-interval; one unit: the p-value of
Newcombe's interval (by inversion) or of the percentile bootstrap; none where there is no interval.

Verdict of a comparison (*raw*): *reproduced* if the interval lies above 0, *contradicted* if below, else
*inconclusive* (the interval holds "no effect", or there is none).  *Holm* verdict: the same reading of the
Holm-adjusted p-value (statsmodels' ``multipletests(method="holm")``) at α = 0.05, the family being every
distinct comparison of every claim of the system in one report (:func:`check`; a comparison that two
claims share, e.g. ensemble against MVE on Spearman, is one hypothesis, and comparisons without a p-value
are not in the family): rejected with a positive effect = reproduced, with a negative one = contradicted,
else inconclusive.  A claim is reproduced if every comparison is, contradicted if one is, else inconclusive
(raw and Holm verdicts alike, each from its comparisons' own).  "Only X improves": X's improvement is one
comparison; every other method's improvement can contradict the claim (if significantly positive) but
cannot prove it (absence of an effect is not shown by an interval), so those enter as "not contradicted";
"X does not improve" (``not_improves``) has only such a comparison, and its verdict is then *not
contradicted* or *contradicted* (raw and Holm alike).  A claim on the change between two generations
("from 1 to last") is *not measured* where the study has one generation only (e.g. stopped after its first).

"Rises" and "falls" are read in the quantity's own direction: a force MAE "rises" (improves) when it falls.
``rise_larger`` compares two improvements: per seed, (X at ``to`` − X at ``from``) − (Y at ``to`` − Y at
``from``), paired by seed.

Power (``detectable_effect``): the smallest effect the paired t-test over the study's units would detect
with 80% power at α = 0.05 (two-sided), at the observed standard deviation of the per-unit differences
(statsmodels' ``TTestPower``; see :func:`uqpot.metrics.significance.detectable_effect`); "n/a" for one unit.
An inconclusive comparison whose |effect| lies well below it was beyond the study's power.
``units_needed`` turns it around: how many units (seeds) the same test would need to detect the observed
effect with 80% power at the observed standard deviation (:func:`uqpot.metrics.significance.units_needed`):
what resolving the comparison would take, as an order of magnitude (both estimates are uncertain).

Every claim cites what it encodes (``source``: section, figure or table; ``quote``: the paper's sentence)
and carries the paper's own numbers where the paper gives them (``paper``); :func:`load_claims` refuses an
entry without a source and a quote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from ..metrics import intervals as iv
from ..metrics.registry import METRICS, MetricInputs, get_metric, metrics
from ..metrics import significance as sig



def quantities() -> dict[str, bool]:
    """Every quantity a claim can name (the registered metrics with ``claim``) and whether higher is better."""
    return {m.name: m.higher_is_better for m in metrics(claim=True)}


VERDICTS = ("reproduced", "contradicted", "inconclusive", "not contradicted")
#: the claim kinds and the keys each needs (besides id, source, quote, system, statement, kind, quantity)
KINDS = {"order": ("methods",), "best": ("method",), "better_than": ("better", "worse"),
         "rises": ("from", "to", "methods"), "falls": ("from", "to", "methods"),
         "rise_larger": ("from", "to", "method", "than"), "only_improves": ("from", "to", "method"),
         "not_improves": ("from", "to", "method")}
_COMMON = ("id", "source", "quote", "system", "statement", "kind", "quantity")


def load_claims(system: str | None = None, path=None) -> list[dict]:
    """The claims (of one system, or all) from ``claims.yaml``, each checked for the keys of its kind."""
    claims = yaml.safe_load(Path(path or Path(__file__).with_name("claims.yaml")).read_text())
    for c in claims:
        missing = [k for k in _COMMON if not c.get(k)]
        if missing:
            raise ValueError(f"claim {c.get('id', '?')}: missing {', '.join(missing)}")
        if c["kind"] not in KINDS:
            raise ValueError(f"claim {c['id']}: unknown kind {c['kind']!r}")
        missing = [k for k in KINDS[c["kind"]] if k not in c]
        if missing:
            raise ValueError(f"claim {c['id']}: kind {c['kind']} needs {', '.join(missing)}")
        if c["quantity"] not in quantities():
            raise ValueError(f"claim {c['id']}: unknown quantity {c['quantity']!r}")
    return [c for c in claims if system is None or c["system"] == system]


@dataclass
class Observations:
    """A study's results for the claims: per (method, generation), each replicate unit's value of a quantity.

    ``values[(method, generation, quantity)] = {unit: value}``; ``counts[(method, generation)] = {unit: (k, n)}``
    (stable trajectories of all); ``predictions(method, generation, unit) -> (U, ε)`` of the test set, for
    the bootstrap of a single seed; ``outcomes(method, generation, unit) -> {start: 0 or 1}`` the stability of
    each trajectory by its start (start structure, temperature, MD seed), for the paired comparison of one seed.  Units are seeds for a loop, (molecule, split, seed) for a grid (``unit``)."""

    values: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    predictions: Callable | None = None
    outcomes: Callable | None = None
    last_generation: int = 1
    #: what a replicate unit is (the ``paired_on`` of comparisons over two or more units)
    unit: str = "seed"

    def get(self, method: str, gen: int, q: str) -> dict:
        return self.values.get((method, gen, q), {})

    def has(self, method: str, gen: int, q: str) -> bool:
        return bool(self.get(method, gen, q))


def _generation(spec, obs: Observations) -> int:
    return obs.last_generation if spec == "last" else int(spec)


def _effect(d=np.nan, lo=np.nan, hi=np.nan, how="no data", paired_on="—", p=np.nan, detectable=np.nan,
            hypothesis="", needed=np.nan) -> dict:
    return {"effect": float(d), "low": float(lo), "high": float(hi), "interval": how, "paired_on": paired_on,
            "p": float(p), "detectable_effect": float(detectable), "units_needed": float(needed),
            "hypothesis": hypothesis}


def _over_units(diffs: list[float], unit: str, what: str = "") -> dict:
    """Effect, t-interval, paired t-test p and detectable effect of the per-unit differences ``diffs``."""
    d, lo, hi = iv.mean_interval(diffs)
    units = "seeds" if unit == "seed" else f"units {unit}"
    return _effect(d, lo, hi, f"t over {len(diffs)} paired {units}{what}", unit, sig.paired_t_p(diffs),
                   sig.detectable_effect(diffs), needed=sig.units_needed(diffs))


def _flip(e: dict, sign: float) -> dict:
    if sign < 0:
        e.update(effect=-e["effect"], low=-e["high"], high=-e["low"])
    return e


def _hypothesis(q: str, *sides) -> str:
    """One name per tested hypothesis, whichever way round a claim states it (the tests are two-sided)."""
    return f"{q}: " + " vs ".join(sorted(sides))


def _rise_larger(obs: Observations, q: str, a: str, b: str, g0: int, g1: int) -> dict:
    """Effect "a improves more than b from g0 to g1" on q (positive = a's improvement larger), paired by unit:
    the per-unit difference of the two methods' changes."""
    sign = 1.0 if quantities()[q] else -1.0
    a0, a1, b0, b1 = (obs.get(m, g, q) for m, g in ((a, g0), (a, g1), (b, g0), (b, g1)))
    units = sorted(set(a0) & set(a1) & set(b0) & set(b1), key=str)
    if not units:
        return _effect()
    diffs = [(a1[u] - a0[u]) - (b1[u] - b0[u]) for u in units]
    hyp = _hypothesis(q, f"change of {a} {g0}->{g1}", f"change of {b} {g0}->{g1}")
    if len(units) >= 2:
        e = _over_units(diffs, obs.unit, " (difference of the two changes)")
    else:
        e = _effect(diffs[0], how="one seed: no interval")
    e["hypothesis"] = hyp
    return _flip(e, sign)


def _better_than(obs: Observations, q: str, a: tuple[str, int], b: tuple[str, int]) -> dict:
    """Effect "a is better than b" on q (positive = a better): its interval, p-value, detectable effect, what
    it is paired on and how it was computed."""
    sign = 1.0 if quantities()[q] else -1.0
    va, vb = obs.get(*a, q), obs.get(*b, q)
    units = sorted(set(va) & set(vb), key=str)
    if not units:
        return _effect()
    hyp = _hypothesis(q, f"{a[0]} gen {a[1]}", f"{b[0]} gen {b[1]}")
    if len(units) >= 2:
        e = _over_units([va[u] - vb[u] for u in units], obs.unit)
        low, high = iv.RANGES.get(q, (None, None))
        if low is not None and high is not None:  # a difference of two values in [low, high]
            e.update(low=max(e["low"], low - high), high=min(e["high"], high - low))
    else:
        u = units[0]
        e = _effect(va[u] - vb[u], how="one seed: no interval")
        paired = _per_start(obs, a, b, u) if q == "stable_md_fraction" else None
        if paired is not None:
            xa, xb = paired
            est, vals = iv.bootstrap_distribution(lambda x, y: float(np.mean(x - y)), xa, xb, seed=0)
            d, lo, hi = iv.percentile_interval(est, vals)
            e = _effect(d, lo, hi, f"one seed: paired bootstrap over {len(xa)} trajectory starts",
                        "trajectory start (one seed: both models from the same starts, velocities and noise)",
                        sig.bootstrap_p(vals))
        elif q == "stable_md_fraction" and u in obs.counts.get(a, {}) and u in obs.counts.get(b, {}):
            (k1, n1), (k2, n2) = obs.counts[a][u], obs.counts[b][u]
            d, lo, hi = iv.newcombe_difference(k1, n1, k2, n2)
            e = _effect(d, lo, hi, f"one seed: Newcombe over {n1} and {n2} trajectories",
                        "not paired (the trajectories of one seed, as independent samples)",
                        sig.newcombe_p(k1, n1, k2, n2))
        elif _of_ranking(q) and obs.predictions is not None and a[1] == b[1]:
            pa, pb = obs.predictions(a[0], a[1], u), obs.predictions(b[0], b[1], u)
            if pa is not None and pb is not None and len(pa[1]) == len(pb[1]):
                est, vals = iv.bootstrap_distribution(_metric_difference(q), pa[0], pa[1], pb[0], pb[1], seed=0,
                                                      batched=_metric_difference_rows(q))
                d, lo, hi = iv.percentile_interval(est, vals)
                e = _effect(d, lo, hi, f"one seed: bootstrap over {len(pa[1])} test structures",
                            "test structure (one seed: both models on the same structures)", sig.bootstrap_p(vals))
    e["hypothesis"] = hyp
    return _flip(e, sign)


def _per_start(obs: Observations, a: tuple[str, int], b: tuple[str, int], unit):
    """The two models' outcomes (stable 1, not 0) on the same trajectory starts, in one order, or None where
    either is missing or their starts differ (e.g. two generations: another MD seed)."""
    if obs.outcomes is None:
        return None
    oa, ob = obs.outcomes(*a, unit), obs.outcomes(*b, unit)
    if not oa or not ob or set(oa) != set(ob):
        return None
    keys = sorted(oa, key=str)
    return (np.array([oa[k] for k in keys], dtype=float), np.array([ob[k] for k in keys], dtype=float))


def _of_ranking(q: str) -> bool:
    """Whether quantity ``q`` is a UQ metric of U and ε alone (a bootstrap over test structures applies)."""
    m = METRICS.get(q)
    return m is not None and m.kind == "uq" and not m.needs_calibration


def _metric_difference(q: str):
    fn = get_metric(q).function

    def f(ua, ea, ub, eb):  # each model's uncertainty against its own errors, on the same structures
        return fn(MetricInputs(ua, ea, None)) - fn(MetricInputs(ub, eb, None))

    return f


def _metric_difference_rows(q: str):
    """:func:`_metric_difference` on many resamples at once, where the metric has a batched form (else None)."""
    rows = get_metric(q).batched
    if rows is None:
        return None
    return lambda ua, ea, ub, eb: rows(ua, ea) - rows(ub, eb)


def _verdict(lo: float, hi: float) -> str:
    if np.isfinite(lo) and lo > 0:
        return "reproduced"
    if np.isfinite(hi) and hi < 0:
        return "contradicted"
    return "inconclusive"


def _read(v: str, required: bool) -> str:
    """A verdict of "the effect is there" read for a claim that it is (``required``) or that it is absent."""
    if required:
        return v
    # "no other method improves": a significant improvement contradicts, nothing proves it
    return "contradicted" if v == "reproduced" else "not contradicted"


def _comparison(label: str, effect: dict, required: bool = True) -> dict:
    return {"comparison": label, **effect, "required": required,
            "verdict": _read(_verdict(effect["low"], effect["high"]), required)}


def evaluate(claim: dict, obs: Observations) -> dict:
    """One claim's comparisons and verdict (see the module docstring)."""
    q, kind = claim["quantity"], claim["kind"]
    comps: list[dict] = []
    if kind in ("order", "best", "better_than"):
        g = _generation(claim.get("generation", 1), obs)
        if kind == "order":  # every pair (i < j) of the claimed order: a partial set of methods still counts
            ms = claim["methods"]
            pairs = [(ms[i], ms[j]) for i in range(len(ms)) for j in range(i + 1, len(ms))]
        elif kind == "best":
            others = sorted({m for (m, gg, qq) in obs.values if gg == g and qq == q} - {claim["method"]})
            pairs = [(claim["method"], o) for o in others]
        else:
            pairs = [(b, w) for b in claim["better"] for w in claim["worse"]]
        for a, b in pairs:
            comps.append(_comparison(f"{a} better than {b}", _better_than(obs, q, (a, g), (b, g))))
    elif kind in ("rises", "falls", "rise_larger", "only_improves", "not_improves"):
        g0, g1 = _generation(claim["from"], obs), _generation(claim["to"], obs)
        if g0 >= g1:  # a study stopped at its first generation ("last" is 1): no change to measure
            pass
        elif kind == "rises":
            for m in claim["methods"]:
                comps.append(_comparison(f"{m} improves from generation {g0} to {g1}",
                                         _better_than(obs, q, (m, g1), (m, g0))))
        elif kind == "falls":
            for m in claim["methods"]:
                comps.append(_comparison(f"{m} gets worse from generation {g0} to {g1}",
                                         _better_than(obs, q, (m, g0), (m, g1))))
        elif kind == "rise_larger":
            main = claim["method"]
            for m in claim["than"]:
                comps.append(_comparison(f"{main} improves more than {m} from generation {g0} to {g1}",
                                         _rise_larger(obs, q, main, m, g0, g1)))
        elif kind == "not_improves":
            m = claim["method"]
            comps.append(_comparison(f"{m} improves from generation {g0} to {g1}",
                                     _better_than(obs, q, (m, g1), (m, g0)), required=False))
        else:
            main = claim["method"]
            comps.append(_comparison(f"{main} improves from generation {g0} to {g1}",
                                     _better_than(obs, q, (main, g1), (main, g0))))
            others = sorted({m for (m, gg, qq) in obs.values if gg == g0 and qq == q} - {main})
            for m in others:
                comps.append(_comparison(f"{m} improves from generation {g0} to {g1}",
                                         _better_than(obs, q, (m, g1), (m, g0)), required=False))
    else:
        raise ValueError(f"claim {claim['id']}: unknown kind {kind!r}")
    comps = [c for c in comps if c["interval"] != "no data"] if comps else comps
    return {"id": claim["id"], "source": claim["source"], "quote": claim.get("quote", ""), "statement": claim["statement"],
            "quantity": q, "paper": claim.get("paper") or {}, "comparisons": comps, "verdict": _claim_verdict(comps)}


def holm_correct(results: list[dict], alpha: float = 0.05) -> list[dict]:
    """Adds Holm's correction to evaluated claims (in place; returns them): every comparison gets ``p_holm``
    and ``verdict_holm``, every claim ``verdict_holm``.  The family: the distinct hypotheses with a p-value
    among all comparisons of ``results`` (see the module docstring)."""
    family: dict[str, float] = {}
    for r in results:
        for c in r["comparisons"]:
            if np.isfinite(c["p"]):
                family.setdefault(c["hypothesis"], c["p"])
    names = list(family)
    reject, adjusted = sig.holm([family[h] for h in names], alpha)
    decided = dict(zip(names, zip(reject, adjusted)))
    for r in results:
        for c in r["comparisons"]:
            rej, p_adj = decided.get(c["hypothesis"], (False, np.nan)) if np.isfinite(c["p"]) else (False, np.nan)
            v = ("reproduced" if c["effect"] > 0 else "contradicted") if rej else "inconclusive"
            c.update(p_holm=float(p_adj), verdict_holm=_read(v, c["required"]), holm_family=len(names))
        r["verdict_holm"] = _claim_verdict(r["comparisons"], "verdict_holm")
    return results


def _claim_verdict(comps: list[dict], key: str = "verdict") -> str:
    if not comps:
        return "not measured"
    vs = [c[key] for c in comps]
    required = [v for v in vs if v != "not contradicted"]
    if "contradicted" in vs:
        return "contradicted"
    if not required:  # only comparisons that can contradict the claim, and none did
        return "not contradicted"
    if all(v == "reproduced" for v in required):
        return "reproduced"
    return "inconclusive"


def paper_numbers(result: dict) -> str:
    """The paper's own numbers of a claim, as one line (empty where the paper gives a figure only)."""
    def fmt(v):
        return f"{v:g}" if isinstance(v, (int, float)) else str(v)

    return "; ".join(f"{k} {fmt(v)}" for k, v in (result.get("paper") or {}).items())


def check(system: str, obs: Observations, alpha: float = 0.05) -> list[dict]:
    """Every claim of ``system`` evaluated on ``obs``, raw and with Holm's correction over all their
    comparisons at family-wise level ``alpha`` (:func:`holm_correct`; a sequential study's look passes its
    own share of 0.05, :mod:`uqpot.studies.sequential`); a claim whose data the study lacks is 'not measured'."""
    return holm_correct([evaluate(c, obs) for c in load_claims(system)], alpha)


#: the columns of a report's claims table
TABLE_COLUMNS = ["claim", "source", "statement", "paper", "verdict", "verdict_holm", "comparison", "paired_on", "effect",
                 "interval_95", "p", "p_holm", "comparison_verdict", "comparison_verdict_holm", "detectable_effect", "units_needed", "how"]


def _num(v):
    return float(v) if v is not None and np.isfinite(v) else None


def table_rows(results: list[dict]) -> list[dict]:
    """One row per comparison (the claims table of a report)."""
    rows = []
    for r in results:
        paper = paper_numbers(r)
        head = {"claim": r["id"], "source": r["source"], "statement": r["statement"], "paper": paper,
                "verdict": r["verdict"], "verdict_holm": r.get("verdict_holm", "")}
        if not r["comparisons"]:
            rows.append({**head, "comparison": "—", "effect": None, "interval_95": "",
                         "how": "the study has no data for it"})
        for k, c in enumerate(r["comparisons"]):
            det = c.get("detectable_effect", np.nan)
            need = c.get("units_needed", np.nan)
            rows.append({**(head if k == 0 else {key: "" for key in head}),
                         "comparison": c["comparison"], "paired_on": c.get("paired_on", ""), "effect": c["effect"],
                         "interval_95": iv.fmt((c["effect"], c["low"], c["high"])), "p": _num(c.get("p")),
                         "p_holm": _num(c.get("p_holm")), "comparison_verdict": c["verdict"],
                         "comparison_verdict_holm": c.get("verdict_holm", ""),
                         "detectable_effect": _num(det) if np.isfinite(det) else "n/a",
                         "units_needed": (int(need) if np.isfinite(need) else "more than 10,000" if need == np.inf
                                          else "n/a"),
                         "how": c["interval"]})
    return rows


def add_to_report(rep, results: list[dict], alpha: float = 0.05, alpha_note: str = "") -> None:
    """The claims table of a report (``table_claims.csv``) and, below it, what each claim encodes: its source
    and the paper's sentence (``table_claim_sources.csv``).  ``alpha``: the level of the Holm verdicts
    (``alpha_note`` says where a level other than 0.05 comes from)."""
    family = max((c.get("holm_family", 0) for r in results for c in r["comparisons"]), default=0)
    rep.table("claims", table_rows(results), TABLE_COLUMNS,
              caption="effect > 0 is what the paper claims; comparison_verdict (raw): reproduced: the 95% interval "
                      "lies above 0; contradicted: below 0; inconclusive: it holds 0; not contradicted: a claim that "
                      "an effect is absent, which an interval can only contradict. p: two-sided, of the paired t-test "
                      "over the units named in paired_on (one unit: of Newcombe's interval or the bootstrap). "
                      f"p_holm, *_holm: Holm's correction over the {family} distinct comparisons with a p-value of "
                      f"this report's claims (alpha {alpha:g}{alpha_note}). detectable_effect: the smallest effect "
                      "the paired t-test "
                      "over these units detects with 80% power at alpha 0.05 at the observed standard deviation of "
                      "the differences (n/a: one unit). units_needed: how many units (seeds) the same test would "
                      "need to detect the observed effect with 80% power at the observed standard deviation: a "
                      "projection from uncertain estimates, an order of magnitude")
    rep.table("claim_sources", [{"claim": r["id"], "source": r["source"], "quote": r["quote"]} for r in results],
              ["claim", "source", "quote"], caption="what each claim encodes: the paper's own words")
