"""MD stability campaigns (paper Sec. 2.5, Fig. 3d/3g, Fig. 4c): replicas × temperatures × seeds from given
start structures, run with the batched engine (:mod:`uqpot.md.batched`) or, as a cross-check, through ASE's
own dynamics with :class:`~uqpot.md.calculator.UQPotCalculator`.

A system's paper settings and stability criteria come from its entry in :mod:`uqpot.systems`
(``get_system(name).campaign_config(length_scale=...)``, e.g. ``length_scale=0.01`` for a 10 ps silica smoke
run); this module knows no system by name: a campaign carries its system's criteria
(:meth:`CampaignConfig.with_criteria`).  Each run index k starts from the same randomly drawn structure at every temperature (a paired
design); every replica has its own seed (initial Maxwell-Boltzmann velocities, Langevin noise), derived
from the campaign seed and the replica index, and both engines use the same initial velocities.

Outputs (:meth:`CampaignResult.save`): ``summary.json`` (config, fraction of stable trajectories per
temperature and overall, mean stable time, each replica's time to failure, reason, and its traces of
energy, temperature and uncertainty U every ``record_every`` steps), ``replicas.csv`` (one row per replica)
and ``traces.csv`` (long format: replica, time_fs, energy, temperature, uncertainty).  Units: fs, K,
kcal/mol; U in the UQ method's unit.

Kept whole (about 460 lines): one concept, a campaign: its config, the replica plan both engines follow,
the result both return (summary and files) and the two runs that must stay twins (the same plan, starts,
velocities and criteria); split, each part would import the others.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from ..core import fields as F
from ..data.structures import Structure
from ..core.progress import LogProgress
from ..core.units import EV_TO_KCAL_PER_MOL, KB_KCAL_PER_MOL_K
from ..train.autocompile import choose_md_compile
from .batched import BatchedMD, ReplicaRecord, maxwell_boltzmann
from .integrators import make_integrator
from .stability import REASONS, StabilityCriteria, check_structure

ENGINES = ("batched", "ase")

class CampaignConfig(BaseModel):
    """A stability campaign.  Unknown keys are errors.  Units: fs, K, Å, kcal/mol."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    system: str = Field("ammonia", description="the system's name (a label here: its criteria and settings come "
                                               "from uqpot.systems, see with_criteria) or 'custom'")
    runs: int = Field(100, ge=1, description="trajectories per temperature")
    temperatures_K: list[float] = Field(default_factory=lambda: [300.0, 500.0, 750.0, 1000.0])
    duration_fs: float = Field(5000.0, gt=0)
    timestep_fs: float = Field(0.5, gt=0)
    thermostat: Literal["nose-hoover", "langevin", "nve"] = "nose-hoover"
    tdamp_fs: Optional[float] = Field(None, gt=0, description="Nosé-Hoover damping time; default 100 time steps")
    chain_length: int = Field(3, ge=1)
    friction_per_fs: float = Field(0.01, ge=0)
    seed: int = 0
    remove_com_momentum: bool = True
    skin: float = Field(1.0, ge=0, description="Verlet skin, Å")
    check_every: int = Field(20, ge=1, description="steps between host syncs (failure bookkeeping)")
    record_every: int = Field(20, ge=1, description="steps between records of energy, T and U")
    frame_every: Optional[int] = Field(None, ge=1)
    criteria: Optional[StabilityCriteria] = None
    ground_state_energy: Union[float, Literal["optimised", "min_start"], None] = Field(
        "optimised", description="ammonia's energy floor (kcal/mol, the model's energy scale): 'optimised' = the "
                                 "energy of the optimised minimum (the paper's 0 kcal/mol; the loop computes it "
                                 "with its oracle and sets the number), 'min_start' = the lowest labelled energy "
                                 "of the start structures, a number, or None (no floor)")
    max_replicas_per_batch: Optional[int] = Field(None, ge=1)
    dtype: Optional[Literal["float32", "float64"]] = None
    layout: Literal["auto", "sparse", "dense"] = Field(
        "auto", description="pair layout of the model calls (BatchedMD): 'auto' = dense for molecules when "
                            "compiled, else the Verlet edge list")
    compile: Union[bool, Literal["auto"]] = Field(
        "auto", description="evaluate the model through torch.compile (pays a compilation at the start of each "
                            "batch of replicas); 'auto': where the run's steps repay it (uqpot.train.autocompile)")
    compile_mode: Literal["default", "reduce-overhead"] = Field(
        "default", description="torch.compile's mode of the compiled call: 'reduce-overhead' = CUDA graphs on a "
                               "GPU (as 'default' on a CPU)")
    ensemble: Literal["nvt", "npt"] = Field(
        "nvt", description="'npt': constant pressure with ASE's MTK barostat (Nosé-Hoover chain thermostat and "
                           "barostat, as the paper's LAMMPS data generation); periodic starts, the ASE engine")
    pressure_bar: float = Field(0.0, description="NPT target pressure (bar; 1 bar = 1e-4 GPa)")
    pdamp_fs: Optional[float] = Field(None, gt=0, description="NPT barostat damping time (fs; default 1000 time "
                                                              "steps, ASE's advice)")
    cell_dof: Literal["isotropic", "full"] = Field(
        "isotropic", description="NPT cell degrees of freedom: 'isotropic' (volume only; a glass or liquid) or "
                                 "'full' (all nine components of the cell, for anisotropic solids)")

    _system_criteria: Optional[Callable] = PrivateAttr(None)
    _energy_floor: bool = PrivateAttr(False)

    @model_validator(mode="after")
    def _npt(self):
        if self.ensemble == "npt":
            if self.thermostat != "nose-hoover":
                raise ValueError("ensemble 'npt' uses the MTK Nosé-Hoover chain thermostat; set thermostat: nose-hoover")
        return self

    def with_criteria(self, criteria, energy_floor: bool = False) -> "CampaignConfig":
        """This campaign with a system's stability criteria: ``criteria(ground_state_energy)`` gives them
        (a :class:`StabilityCriteria`); with ``energy_floor`` the criteria take ``ground_state_energy``
        (resolved by :meth:`resolved_criteria`), else None.  Not part of the dumped settings; copies keep it."""
        self._system_criteria = criteria
        self._energy_floor = bool(energy_floor)
        return self

    @property
    def energy_floor(self) -> bool:
        """Whether the campaign's criteria have an energy floor (``ground_state_energy``)."""
        return self._energy_floor

    @property
    def n_steps(self) -> int:
        return int(round(self.duration_fs / self.timestep_fs))

    def resolved_criteria(self, starts: Sequence[Structure]) -> StabilityCriteria:
        """``criteria`` when set, else the system's (:meth:`with_criteria`; with an energy floor, at
        ``ground_state_energy``), else finiteness only."""
        if self.criteria is not None:
            return self.criteria
        if self._system_criteria is None:
            return StabilityCriteria()
        if not self._energy_floor:
            return self._system_criteria(None)
        ground = self.ground_state_energy
        if ground == "optimised":
            raise ValueError("ground_state_energy='optimised' needs the optimised minimum's energy: give it as a "
                             "number (kcal/mol, the model's energy scale; the loop computes it with its oracle), "
                             "'min_start' or None")
        if ground == "min_start":
            energies = [s.energy for s in starts]
            if any(e is None for e in energies):
                raise ValueError("ground_state_energy='min_start' needs labelled start structures; give a "
                                 "number or None")
            ground = float(min(energies))
        return self._system_criteria(ground)


@dataclass
class ReplicaPlan:
    replica: int
    temperature_K: float
    run: int
    start: int
    seed: int


def plan_replicas(config: CampaignConfig, n_starts: int) -> list[ReplicaPlan]:
    """Replica ``t·runs + k`` is run k at temperature index t; its start is the k-th random draw (the same
    at every temperature) and its seed is drawn from (campaign seed, replica index)."""
    rng = np.random.default_rng(config.seed)
    starts = rng.choice(n_starts, size=config.runs, replace=config.runs > n_starts)
    out = []
    for t, T in enumerate(config.temperatures_K):
        for k in range(config.runs):
            rid = t * config.runs + k
            seed = int(np.random.default_rng([config.seed, rid]).integers(2 ** 31 - 1))
            out.append(ReplicaPlan(rid, float(T), k, int(starts[k]), seed))
    return out


@dataclass
class CampaignResult:
    config: CampaignConfig
    engine: str
    replicas: list[ReplicaRecord]
    plans: list[ReplicaPlan]
    wall_time_s: float
    model_calls: int = 0
    uncertainty_description: Optional[str] = None
    start_structures: Optional[list] = None  # ase.Atoms of the starts (for writing frames)
    compiled: Optional[list] = None  # per batch of replicas: [compiled?, why] (compile: auto, uqpot.train.autocompile)

    @property
    def n_steps(self) -> int:
        return self.config.n_steps

    @property
    def stable_fraction(self) -> float:
        return float(np.mean([r.stable for r in self.replicas]))

    def stable_time_fs(self, rec: ReplicaRecord) -> float:
        """How long the replica stayed stable (its time to failure, or the whole run)."""
        return rec.time_to_failure_fs if not rec.stable else self.config.duration_fs

    def summary(self) -> dict:
        per_t = {}
        for T in self.config.temperatures_K:
            recs = [r for r in self.replicas if r.temperature_K == T]
            failed = [r.time_to_failure_fs for r in recs if not r.stable]
            reasons: dict[str, int] = {}
            for r in recs:
                if not r.stable:
                    reasons[r.reason] = reasons.get(r.reason, 0) + 1
            per_t[f"{T:g}"] = {
                "runs": len(recs), "stable": int(sum(r.stable for r in recs)),
                "fraction_stable": float(np.mean([r.stable for r in recs])) if recs else float("nan"),
                "mean_time_to_failure_fs": float(np.mean(failed)) if failed else None,
                "mean_stable_time_fs": float(np.mean([self.stable_time_fs(r) for r in recs])) if recs else None,
                "failure_reasons": reasons}
        steps = sum(r.steps_run for r in self.replicas)
        return {"engine": self.engine, "system": self.config.system, "runs": len(self.replicas),
                "fraction_stable": self.stable_fraction,
                "mean_stable_time_fs": float(np.mean([self.stable_time_fs(r) for r in self.replicas])),
                "per_temperature": per_t, "wall_time_s": self.wall_time_s,
                "replica_steps": int(steps), "replica_steps_per_s": steps / self.wall_time_s if self.wall_time_s else None,
                "model_calls": self.model_calls, "uncertainty": self.uncertainty_description,
                "compiled": self.compiled,
                "ground_state_energy": self.config.ground_state_energy if self.config.energy_floor else None,
                "npt": self.npt_summary() if self.config.ensemble == "npt" else None,
                "units": {"time": "fs", "energy": "kcal/mol", "temperature": "K", "pressure": "bar",
                          "volume": "Å^3"}}

    def npt_summary(self) -> dict:
        """Pressure and volume of the NPT replicas over the second half of each record (the first half is
        equilibration): mean, spread (std of the instantaneous pressure, which is large in a small cell) and
        the standard error of the mean from 10 blocks; the volume's drift as the slope of a straight line
        through the second half (% of the mean volume per ps) and its total change from the start."""
        ps, drifts, v0, v1, vm = [], [], [], [], []
        for r in self.replicas:
            n = len(r.pressure)
            if n < 4:
                continue
            h = n // 2
            ps.append(np.asarray(r.pressure[h:], dtype=float))
            t_ps = np.asarray(r.record_steps[h:n], dtype=float) * self.config.timestep_fs * 1e-3
            vol = np.asarray(r.volume[h:], dtype=float)
            drifts.append(100.0 * np.polyfit(t_ps, vol, 1)[0] / vol.mean())
            v0.append(r.volume[0]), v1.append(r.volume[-1]), vm.append(vol.mean())
        if not ps:
            return {"target_bar": self.config.pressure_bar, "replicas": 0}
        allp = np.concatenate(ps)
        blocks = [b.mean() for p in ps for b in np.array_split(p, min(10, len(p)))]
        return {"target_bar": self.config.pressure_bar, "replicas": len(ps), "samples": int(allp.size),
                "pressure_mean_bar": float(allp.mean()), "pressure_std_bar": float(allp.std()),
                "pressure_sem_bar": float(np.std(blocks, ddof=1) / np.sqrt(len(blocks))) if len(blocks) > 1 else None,
                "volume_start_A3": float(np.mean(v0)), "volume_end_A3": float(np.mean(v1)),
                "volume_mean_second_half_A3": float(np.mean(vm)),
                "volume_change_percent": float(100.0 * (np.mean(v1) - np.mean(v0)) / np.mean(v0)),
                "volume_drift_percent_per_ps": float(np.mean(drifts))}

    def to_dict(self, traces: bool = True) -> dict:
        reps = []
        for rec, plan in zip(self.replicas, self.plans):
            d = rec.as_dict(self.config.timestep_fs, traces=traces)
            d.update(run=plan.run, start=plan.start, stable_time_fs=self.stable_time_fs(rec))
            reps.append(d)
        return {"config": self.config.model_dump(mode="json"), "summary": self.summary(), "replicas": reps}

    def save(self, out_dir) -> Path:
        """``summary.json``, ``replicas.csv``, ``traces.csv`` (and ``frames.extxyz`` if frames were kept)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(_jsonable(self.to_dict()), indent=1))
        with open(out / "replicas.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["replica", "run", "start", "temperature_K", "seed", "stable", "reason", "failure_step",
                        "time_to_failure_fs", "stable_time_fs", "mean_uncertainty", "max_uncertainty"])
            for rec, plan in zip(self.replicas, self.plans):
                u = np.asarray(rec.uncertainty, dtype=float)
                w.writerow([rec.replica, plan.run, plan.start, rec.temperature_K, rec.seed, int(rec.stable), rec.reason,
                            "" if rec.failure_step is None else rec.failure_step,
                            "" if rec.time_to_failure_fs is None else rec.time_to_failure_fs,
                            self.stable_time_fs(rec), float(u.mean()) if u.size else "",
                            float(u.max()) if u.size else ""])
        with open(out / "traces.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["replica", "time_fs", "energy", "temperature", "uncertainty"])
            for rec in self.replicas:
                for t, k in enumerate(rec.record_steps):
                    w.writerow([rec.replica, k * self.config.timestep_fs, float(rec.energy[t]),
                                float(rec.temperature[t]), float(rec.uncertainty[t]) if rec.uncertainty else ""])
        if any(rec.frames for rec in self.replicas):
            from ase.io import write

            frames = []
            for rec, plan in zip(self.replicas, self.plans):
                cells = rec.frame_cells or [None] * len(rec.frames)
                for k, pos, cell in zip(rec.frame_steps, rec.frames, cells):
                    frames.append((rec, plan, k, pos, cell))
            self._write_frames(out / "frames.extxyz", frames, write)
        return out

    def _write_frames(self, path, frames, write) -> None:
        atoms_list = []
        for rec, plan, k, pos, cell in frames:
            a = self.start_structures[plan.start].copy()
            a.calc = None
            if cell is not None:
                a.cell = cell
            a.positions = pos
            a.info.update(replica=rec.replica, temperature_K=rec.temperature_K, time_fs=k * self.config.timestep_fs)
            atoms_list.append(a)
        write(path, atoms_list, format="extxyz")


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def run_campaign(config: CampaignConfig, model, starts: Sequence, *, engine: Optional[str] = None,
                 out_dir=None) -> CampaignResult:
    """Runs the campaign with ``engine`` ``"batched"`` (the default for NVT) or ``"ase"`` (one replica at a time
    through ASE's NoseHooverChainNVT / Langevin / VelocityVerlet and :class:`UQPotCalculator`, the cross-check;
    the engine of ``ensemble: npt``, which runs ASE's MTK barostat: ``IsotropicMTKNPT`` or ``MTKNPT``).

    ``model``: a Potential, a UQ method (then U is recorded) or any module with the Potential interface
    (the ASE engine needs a uqpot model the calculator accepts).  ``starts``: the structures runs start from
    (Structure or ase.Atoms; the training geometries in the paper).  With ``out_dir`` the result is saved.
    """
    if engine is None:
        engine = "ase" if config.ensemble == "npt" else "batched"
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    if config.ensemble == "npt" and engine != "ase":
        raise ValueError("ensemble 'npt' runs on the 'ase' engine (ASE's MTK barostat); the batched engine is NVT/NVE")
    structures = [s if isinstance(s, Structure) else Structure.from_atoms(
        s, energy=s.calc.results.get("energy") if s.calc is not None else None) for s in starts]
    if not structures:
        raise ValueError("no start structures")
    if config.ensemble == "npt" and not all(bool(np.all(s.pbc)) for s in structures):
        raise ValueError("ensemble 'npt' needs start structures periodic in all three directions")
    criteria = config.resolved_criteria(structures)
    plans = plan_replicas(config, len(structures))
    t0 = time.perf_counter()
    if engine == "batched":
        records, calls, udesc, compiled = _run_batched(config, model, structures, plans, criteria)
    else:
        records, calls, udesc = _run_ase(config, model, structures, plans, criteria)
        compiled = [[False, "the ASE engine"]]
    res = CampaignResult(config, engine, records, plans, time.perf_counter() - t0, calls, udesc,
                         [s.to_atoms() for s in structures], compiled)
    if out_dir is not None:
        res.save(out_dir)
    return res


def _run_batched(config, model, structures, plans, criteria):
    chunk = config.max_replicas_per_batch or len(plans)
    records, calls, udesc, choices = [], 0, None, []
    for lo in range(0, len(plans), chunk):
        part = plans[lo:lo + chunk]
        compiled, why = choose_md_compile(config.compile, model, [structures[p.start] for p in part],
                                          config.n_steps, getattr(model, "device", "cpu"))
        choices.append([compiled, why])
        md = BatchedMD(model, [structures[p.start] for p in part], timestep_fs=config.timestep_fs,
                       temperatures_K=[p.temperature_K for p in part], seeds=[p.seed for p in part],
                       thermostat=config.thermostat, tdamp_fs=config.tdamp_fs, chain_length=config.chain_length,
                       friction_per_fs=config.friction_per_fs, remove_com_momentum=config.remove_com_momentum,
                       skin=config.skin, check_every=config.check_every, record_every=config.record_every,
                       frame_every=config.frame_every, criteria=criteria, dtype=config.dtype,
                       replica_ids=[p.replica for p in part], layout=config.layout, compile=compiled,
                       compile_mode=config.compile_mode)
        res = md.run(config.n_steps)
        records.extend(res.replicas)
        calls += res.model_calls
        udesc = res.uncertainty_description
    return records, calls, udesc, choices


class _Stop(Exception):
    pass


def _run_ase(config, model, structures, plans, criteria):
    """One replica at a time through ASE's integrators (eV, ASE time units) and UQPotCalculator."""
    from ase import units
    from ase.data import atomic_masses
    from ase.md.nose_hoover_chain import IsotropicMTKNPT, MTKNPT

    from .calculator import UQPotCalculator

    integrator = make_integrator(config.thermostat, timestep_fs=config.timestep_fs, tdamp_fs=config.tdamp_fs,
                                 chain_length=config.chain_length, friction_per_fs=config.friction_per_fs)

    calc = UQPotCalculator(model, energy_unit="eV")
    records, calls = [], 0
    vel_unit = units.Angstrom / units.fs  # Å/fs in ASE's velocity unit
    log_progress = LogProgress(f"MD (ASE, {config.ensemble.upper()}) of {len(plans)} replicas", len(plans), "replicas")
    for p in plans:
        log_progress.update(len(records))
        s = structures[p.start]
        atoms = s.to_atoms()
        atoms.calc = calc
        calc.reset()
        atoms.set_velocities(maxwell_boltzmann(atomic_masses[s.numbers], p.temperature_K, p.seed,
                                               config.remove_com_momentum) * vel_unit)
        dt = config.timestep_fs * units.fs
        npt = config.ensemble == "npt"
        if npt:
            tdamp = (config.tdamp_fs if config.tdamp_fs is not None else 100.0 * config.timestep_fs) * units.fs
            pdamp = (config.pdamp_fs if config.pdamp_fs is not None else 1000.0 * config.timestep_fs) * units.fs
            cls = IsotropicMTKNPT if config.cell_dof == "isotropic" else MTKNPT
            dyn = cls(atoms, timestep=dt, temperature_K=p.temperature_K, pressure_au=config.pressure_bar * units.bar,
                      tdamp=tdamp, pdamp=pdamp, tchain=config.chain_length, pchain=config.chain_length)
        else:  # the batched engine's scheme, as its ASE twin
            dyn = integrator.ase_dynamics(atoms, config.timestep_fs, p.temperature_K, p.seed)
        rec = ReplicaRecord(replica=p.replica, temperature_K=p.temperature_K, seed=p.seed, n_atoms=s.n_atoms)
        ndof = 3 * s.n_atoms

        def observe(rec=rec, atoms=atoms, dyn=dyn, ndof=ndof):
            k = dyn.nsteps
            e = atoms.get_potential_energy() * EV_TO_KCAL_PER_MOL
            ke = atoms.get_kinetic_energy() * EV_TO_KCAL_PER_MOL
            f = atoms.get_forces() * EV_TO_KCAL_PER_MOL
            if k % config.record_every == 0:
                rec.record_steps.append(k)
                rec.energy.append(e)
                rec.temperature.append(2.0 * ke / (ndof * KB_KCAL_PER_MOL_K))
                conserved = dyn.get_conserved_energy() * EV_TO_KCAL_PER_MOL if hasattr(
                    dyn, "get_conserved_energy") else e + ke
                rec.conserved.append(conserved)
                if F.UNCERTAINTY in atoms.calc.results:
                    rec.uncertainty.append(atoms.calc.results[F.UNCERTAINTY])
                if atoms.pbc.all():
                    # instantaneous pressure with the kinetic term, bar (ASE's stress is eV/Å³, tension positive)
                    sig = atoms.get_stress(voigt=False, include_ideal_gas=True)
                    rec.pressure.append(float(-np.trace(sig) / 3.0 / units.bar))
                    rec.volume.append(float(atoms.get_volume()))
            if config.frame_every and k % config.frame_every == 0:
                rec.frame_steps.append(k)
                rec.frames.append(atoms.positions.copy())
                if npt:
                    rec.frame_cells.append(atoms.cell.array.copy())
            reason = check_structure(criteria, atoms.positions, atoms.numbers, cell=atoms.cell.array, pbc=atoms.pbc,
                                     energy=e, kinetic_energy=ke, forces=f)
            rec.steps_run = k
            if reason != "stable":
                rec.stable, rec.reason = False, reason
                rec.failure_step, rec.time_to_failure_fs = k, k * config.timestep_fs
                raise _Stop

        dyn.attach(observe, interval=1)
        try:
            with np.errstate(all="ignore"):
                dyn.run(config.n_steps)
        except _Stop:
            pass
        except Exception as exc:  # a diverged replica (NaN positions in the neighbour list, ...) is a failure
            if rec.stable:
                k = dyn.nsteps
                rec.stable, rec.reason = False, REASONS[1]
                rec.failure_step, rec.time_to_failure_fs, rec.steps_run = k, k * config.timestep_fs, k
                rec.error = f"{type(exc).__name__}: {exc}"
        calls += dyn.nsteps + 1
        rec.final_positions = atoms.positions.copy()
        rec.final_velocities = atoms.get_velocities() / vel_unit
        if npt:
            rec.final_cell = atoms.cell.array.copy()
        records.append(rec)
    udesc = getattr(model, "uncertainty_description", None) or None
    return records, calls, udesc
