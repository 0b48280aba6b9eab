"""The ammonia data set, built the way the paper built it (Tan et al. 2023, section 2.2 and section 3.2).

The paper's set: 78 training geometries 0-5 kcal/mol above the minimum, made by displacing NH3 along the
normal modes of its Hessian at BP86-D3/def2-SVP; a test set of 200 geometries from 0 to 100 kcal/mol, two
per 1 kcal/mol bin, far outside the training domain (an extrapolative UQ challenge).  Here:

1. **Minimum.**  NH3 (ASE's g2 geometry) is optimised with ASE's BFGS on the oracle's forces (default
   ``pyscf:bp86-d3bj/def2-svp``, the paper's level; ``fmax`` in kcal/mol/Å).  Every force call is a
   label through the store.
2. **Normal modes.**  Hessian by central finite differences of the oracle's forces (step ``fd_step``
   Å, 2·3N labels, symmetrised), mass-weighted, translations and rotations projected out; the 3N-6
   eigenvalues give the harmonic frequencies (cm⁻¹, in the summary) and the modes used below.  The
   umbrella (inversion) mode is the one whose N motion lies most along the C3 axis.
3. **Training set** (``n_train``, 78): the minimum and ``n_train - 1`` random normal-mode combinations
   (a Dirichlet share of the energy per mode, random signs) with target energies drawn uniformly in
   (0, ``train_e_max``]; each is labelled, and its amplitude corrected (secant in s²) until it lies in
   [0, ``train_e_max``] kcal/mol.
4. **Test set** (two per 1 kcal/mol bin from 0 to ``test_e_max``): per wanted structure a *slot* aims at
   its bin with one of three kinds of displacement — random normal-mode combinations (``normal-modes``),
   displacements dominated by the umbrella mode in either direction (``umbrella``, towards and past the
   planar geometry) and points of the inversion path (the N-H bonds' angle to the C3 axis swept from the
   minimum through planarity to the inverted minimum, at fixed N-H lengths) plus a random normal-mode
   displacement (``inversion``).  Candidates are labelled, binned by energy, and each bin keeps the first
   ``test_per_bin`` candidates that land in it (slot order: deterministic); open bins get new slots until
   all are full or ``max_rounds`` have passed (bins left open are listed in the summary).

Every label goes through the :class:`~uqpot.data.store.Store` (default ``OUT/labels.db``) with absolute
energies; the candidates are drawn from seeded per-slot random streams, so a second build makes no oracle
call and a build killed at any point loses no label and recomputes none.

Written files (``OUT/``): ``train.extxyz`` and ``test.extxyz`` with energies **relative to the optimised
minimum** (kcal/mol; ``info["reference_energy"]`` holds the minimum's absolute energy), forces in
kcal/mol/Å, positions in Å, and each frame's provenance in ``info`` (``stage``, ``kind``, ``slot``,
``attempt``, ``amplitude``, ``method``, ``store_id``); ``summary.json`` with counts, energy histograms,
frequencies and label statistics.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ...data.io import write_extxyz
from ...data.sets._build import CurvaturePrior, Labeller, Slot, StageProgress, dirichlet_direction, elapsed
from ...data.sets._common import BuildError, energy_histogram
from ...data.store import open_store, structure_hash
from ...data.structures import StructureDataset
from ...core.executor import executor_from
from ...oracle import get_oracle
from ...core.provenance import write_json
from .modes import NormalModes, _structure, inversion_path, normal_modes, optimise, wavenumber

SOURCE = "uqpot data build ammonia"
DEFAULT_ORACLE = "pyscf:bp86-d3bj/def2-svp"
KINDS = ("normal-modes", "umbrella", "inversion")
_STAGE_SEED = {"train": 1, "test": 2}


@dataclass
class AmmoniaConfig:
    """How the ammonia set is built (defaults: the paper's sizes).  Energies kcal/mol, lengths Å."""

    n_train: int = 78
    train_e_max: float = 5.0
    test_e_max: float = 100.0
    test_bin_width: float = 1.0
    test_per_bin: int = 2
    #: shares of the test slots of each kind (normal-modes, umbrella, inversion)
    kind_weights: tuple = (0.5, 0.25, 0.25)
    seed: int = 0
    fmax: float = 0.01  # kcal/mol/Å, convergence of the optimisation
    max_opt_steps: int = 200
    fd_step: float = 0.005  # Å
    max_attempts: int = 4
    max_rounds: int = 25

    @classmethod
    def quick(cls, **overrides) -> "AmmoniaConfig":
        """A small set for tests and trials: 10 training geometries, test bins up to 10 kcal/mol."""
        base = dict(n_train=10, test_e_max=10.0)
        base.update(overrides)
        return cls(**base)

    def check(self) -> None:
        if self.n_train < 1 or self.test_per_bin < 1 or self.max_attempts < 1 or self.max_rounds < 1:
            raise BuildError("n_train, test_per_bin, max_attempts and max_rounds must be >= 1")
        if not (self.train_e_max > 0 and self.test_e_max > 0 and self.test_bin_width > 0):
            raise BuildError("train_e_max, test_e_max and test_bin_width must be > 0 kcal/mol")
        if len(self.kind_weights) != len(KINDS) or min(self.kind_weights) < 0 or sum(self.kind_weights) <= 0:
            raise BuildError(f"kind_weights needs {len(KINDS)} non-negative shares ({', '.join(KINDS)})")

    @property
    def n_bins(self) -> int:
        return int(round(self.test_e_max / self.test_bin_width))

def _make_slot(index: int, stage: str, cfg: AmmoniaConfig, numbers, x0, nm: NormalModes, target: float,
               bin_: int | None, key: tuple) -> Slot:
    rng = np.random.default_rng([cfg.seed, _STAGE_SEED[stage], *key])
    if stage == "train":
        kind = "normal-modes"
    else:
        w = np.asarray(cfg.kind_weights, dtype=float)
        kind = KINDS[int(rng.choice(len(KINDS), p=w / w.sum()))]
    if kind == "umbrella":
        weights = np.full(len(nm.eigenvalues), 0.3)
        weights[nm.umbrella] = 6.0  # most of the energy in the umbrella mode
        direction = dirichlet_direction(rng, nm.eigenvalues, nm.modes, weights)
        base, e0, info = x0, 0.0, {}
    elif kind == "inversion":
        t = float(rng.uniform(0.0, 1.0))
        direction = dirichlet_direction(rng, nm.eigenvalues, nm.modes)
        base, e0, info = inversion_path(numbers, x0, t), None, {"inversion_t": round(t, 6)}
    else:
        direction = dirichlet_direction(rng, nm.eigenvalues, nm.modes)
        base, e0, info = x0, 0.0, {}
    return Slot(index=index, stage=stage, kind=kind, target=float(target), base=base, direction=direction,
                e0=e0, bin=bin_, info=info)


def _run_round(slots: list[Slot], numbers, labeller: Labeller, e_ref: float, stage: str, prior: CurvaturePrior):
    """Proposes one geometry per open slot, labels them together; returns [(slot, s, labelled or None)]."""
    proposals = []
    for slot in slots:
        s = slot.next_amplitude(prior)
        info = {"stage": stage, "kind": slot.kind, "slot": slot.index, "attempt": slot.attempts,
                "amplitude": round(float(s), 8), "target": round(slot.target, 6), **slot.info}
        proposals.append((slot, s, _structure(numbers, slot.positions(s), info)))
    out, records = labeller([p[2] for p in proposals], stage)
    results = []
    for (slot, s, _), lab, rec in zip(proposals, out, records):
        e = None if lab is None else lab.energy - e_ref
        slot.record(s, e, None if lab is None else lab.forces)
        prior.add(slot)
        if lab is not None:
            lab.info["store_id"] = rec.store_id
        results.append((slot, s, lab))
    return results


def _train_set(cfg, numbers, x0, nm, labeller, e_ref, progress) -> list:
    need = cfg.n_train - 1
    accepted: list = []
    slots: list[Slot] = []
    prior = CurvaturePrior()
    n_made = 0
    for _round in range(cfg.max_rounds):
        open_ = [s for s in slots if not s.done]
        for _ in range(need - len(accepted) - len(open_)):
            rng = np.random.default_rng([cfg.seed, _STAGE_SEED["train"], 10**6, n_made])
            target = float(rng.uniform(0.05 * cfg.train_e_max, cfg.train_e_max))
            slots.append(_make_slot(n_made, "train", cfg, numbers, x0, nm, target, None, (n_made,)))
            n_made += 1
        open_ = [s for s in slots if not s.done]
        if not open_:
            break
        for slot, _s, lab in _run_round(open_, numbers, labeller, e_ref, "train", prior):
            e = None if lab is None else lab.energy - e_ref
            if e is not None and 0.0 <= e <= cfg.train_e_max:
                accepted.append((slot.index, lab))
                slot.done = True
            elif slot.attempts >= cfg.max_attempts:
                slot.done = True
        if progress is not None:
            progress.update(completed=len(accepted) + 1)
        if len(accepted) >= need:
            break
    accepted.sort(key=lambda t: t[0])
    return [lab for _, lab in accepted[:need]]


def _test_set(cfg, numbers, x0, nm, labeller, e_ref, progress, exclude: set):
    n_bins, width, per = cfg.n_bins, cfg.test_bin_width, cfg.test_per_bin
    chosen: list[list] = [[] for _ in range(n_bins)]
    slots: list[Slot] = []
    made = [0] * n_bins
    seen = set(exclude)
    prior = CurvaturePrior()
    n_labelled = 0
    rounds = 0
    for rounds in range(1, cfg.max_rounds + 1):
        for b in range(n_bins):
            vacancies = per - len(chosen[b])
            open_b = sum(1 for s in slots if not s.done and s.bin == b)
            for _ in range(max(0, vacancies - open_b)):
                rng = np.random.default_rng([cfg.seed, _STAGE_SEED["test"], 10**6, b, made[b]])
                target = (b + float(rng.uniform(0.15, 0.85))) * width
                slots.append(_make_slot(len(slots), "test", cfg, numbers, x0, nm, target, b, (b, made[b])))
                made[b] += 1
        open_ = [s for s in slots if not s.done]
        if not open_:
            break
        results = _run_round(open_, numbers, labeller, e_ref, "test", prior)
        n_labelled += len(results)
        for slot, _s, lab in results:  # slot order: deterministic
            if lab is not None:
                e = lab.energy - e_ref
                key = structure_hash(lab, "geometry")
                b = int(math.floor(e / width)) if 0.0 <= e < n_bins * width else None
                if b is not None and len(chosen[b]) < per and key not in seen:
                    seen.add(key)
                    chosen[b].append(lab)
        for slot in open_:
            if len(chosen[slot.bin]) >= per or slot.attempts >= cfg.max_attempts:
                slot.done = True
            elif slot.e0 is not None and slot.target <= slot.e0 and slot.attempts > 0:
                slot.done = True  # its base already lies above the target
        filled = sum(len(c) for c in chosen)
        if progress is not None:
            progress.update(completed=filled, note=f"round {rounds}, {n_labelled} candidates labelled")
        if filled >= n_bins * per:
            break
    missing = [b for b in range(n_bins) if len(chosen[b]) < per]
    return [s for c in chosen for s in c], missing, n_labelled, rounds


def _relative(structures, e_ref: float, method: str) -> list:
    out = []
    for s in structures:
        t = s.__class__(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc,
                        energy=float(s.energy - e_ref), forces=s.forces, source=None, frame=None,
                        info={**s.info, "reference_energy": float(e_ref), "method": method})
        out.append(t)
    return out


def build_ammonia(out, *, store=None, oracle=DEFAULT_ORACLE, config: AmmoniaConfig | None = None,
                  executor=None, progress: bool = True, console=None) -> dict:
    """Builds the ammonia training and test sets into ``out`` (see the module docstring); returns the
    summary (also written to ``OUT/summary.json``).

    ``oracle``: a name for :func:`uqpot.oracle.get_oracle` (``"pyscf:bp86-d3bj/def2-svp"``, ``"tblite"``,
    ...) or an oracle object.  ``store``: a Store or a path (default ``OUT/labels.db``).  ``executor``:
    ``None``/``"none"`` (in process) or ``"local"`` (a local Dask cluster) for the labelling batches.
    """
    t0 = time.perf_counter()
    cfg = config or AmmoniaConfig()
    cfg.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = open_store(store if store is not None else out / "labels.db")
    oracle = get_oracle(oracle) if isinstance(oracle, str) else oracle
    ex = executor_from(executor)
    owns_executor = ex is not executor
    if not ex.in_process and getattr(oracle, "threads", 0) is None:
        oracle.threads = 1  # one thread per worker process
    labeller = Labeller(oracle, store, SOURCE, executor=ex)
    calls0 = oracle.calls
    timings = {}
    try:
        with StageProgress(progress, console) as prog:
            from ase.build import molecule

            guess = molecule("NH3")
            numbers = guess.numbers.copy()
            prog.stage("optimising NH3 (BFGS)", total=None)
            t = time.perf_counter()
            x0, minimum, steps, converged = optimise(numbers, guess.positions.copy(), labeller, cfg.fmax,
                                                     cfg.max_opt_steps, prog)
            timings["optimise"] = elapsed(t)
            if not converged:
                raise BuildError(f"the optimisation did not reach fmax {cfg.fmax} kcal/mol/Å in "
                                 f"{cfg.max_opt_steps} steps")
            e_ref = float(minimum.energy)
            prog.stage("Hessian (finite differences)", total=6 * len(numbers))
            t = time.perf_counter()
            nm = normal_modes(numbers, x0, labeller, cfg.fd_step, prog)
            timings["hessian"] = elapsed(t)
            prog.log(f"minimum {e_ref:.4f} kcal/mol after {steps} BFGS steps; harmonic frequencies "
                     f"{', '.join(f'{f:.0f}' for f in nm.frequencies)} cm⁻¹ (umbrella: "
                     f"{nm.frequencies[nm.umbrella]:.0f})")
            prog.stage(f"training set (0-{cfg.train_e_max:g} kcal/mol)", total=cfg.n_train)
            t = time.perf_counter()
            train = [minimum] + _train_set(cfg, numbers, x0, nm, labeller, e_ref, prog)
            timings["train"] = elapsed(t)
            prog.stage(f"test set ({cfg.test_per_bin} per {cfg.test_bin_width:g} kcal/mol bin, "
                       f"0-{cfg.test_e_max:g})", total=cfg.n_bins * cfg.test_per_bin)
            t = time.perf_counter()
            exclude = {structure_hash(s, "geometry") for s in train}
            test, missing, n_candidates, rounds = _test_set(cfg, numbers, x0, nm, labeller, e_ref, prog, exclude)
            timings["test"] = elapsed(t)
    finally:
        if owns_executor:
            ex.close()
    minimum.info.update({"stage": "train", "kind": "minimum"})
    train_rel = _relative(train, e_ref, oracle.method)
    test_rel = _relative(test, e_ref, oracle.method)
    write_extxyz(StructureDataset(train_rel), out / "train.extxyz")
    write_extxyz(StructureDataset(test_rel), out / "test.extxyz")
    e_train = np.array([s.energy for s in train_rel])
    e_test = np.array([s.energy for s in test_rel])
    train_edges = np.linspace(0.0, cfg.train_e_max, int(round(cfg.train_e_max / 0.5)) + 1)
    test_edges = np.linspace(0.0, cfg.n_bins * cfg.test_bin_width, cfg.n_bins + 1)
    kinds = {k: int(sum(1 for s in test_rel if s.info.get("kind") == k)) for k in KINDS}
    summary = {
        "dataset": "ammonia",
        "method": oracle.method,
        "units": {"energy": "kcal/mol (relative to the optimised minimum)", "forces": "kcal/mol/Å",
                  "positions": "Å", "frequencies": "cm^-1"},
        "reference_energy_kcal_per_mol": e_ref,
        "minimum": {"positions": x0.tolist(), "numbers": numbers.tolist(), "bfgs_steps": steps,
                    "max_force_kcal_per_mol_A": float(np.sqrt((minimum.forces**2).sum(1)).max())},
        "frequencies_cm-1": [round(float(f), 2) for f in nm.frequencies],
        "umbrella_mode": nm.umbrella,
        "train": {"file": "train.extxyz", "n": len(train_rel), "energy_min": float(e_train.min()),
                  "energy_max": float(e_train.max()), "histogram": energy_histogram(e_train, train_edges)},
        "test": {"file": "test.extxyz", "n": len(test_rel), "energy_min": float(e_test.min()) if len(e_test) else None,
                 "energy_max": float(e_test.max()) if len(e_test) else None,
                 "histogram": energy_histogram(e_test, test_edges), "missing_bins": missing,
                 "kinds": kinds, "candidates_labelled": n_candidates, "rounds": rounds},
        "labels": {**labeller.counter.as_dict(), "oracle_calls": oracle.calls - calls0,
                   "store": str(store.path), "store_rows": store.count()},
        "config": asdict(cfg),
        "timings_seconds": {**timings, "total": elapsed(t0)},
    }
    write_json(out / "summary.json", summary)
    return summary


__all__ = ["AmmoniaConfig", "build_ammonia", "normal_modes", "inversion_path", "optimise", "wavenumber",
           "NormalModes", "DEFAULT_ORACLE"]
