"""What a batched MD run leaves behind: one :class:`ReplicaRecord` per replica (its fate and traces) and the
run's :class:`MDResult`.  Times fs, energies kcal/mol (the model's frame), temperatures K, lengths Å."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ReplicaRecord:
    """One replica's trajectory summary.  Times in fs, energies kcal/mol (model's frame), temperatures K."""

    replica: int
    temperature_K: float
    seed: int
    n_atoms: int
    stable: bool = True
    failure_step: int | None = None
    time_to_failure_fs: float | None = None
    reason: str = "stable"
    steps_run: int = 0
    record_steps: list = field(default_factory=list)
    energy: list = field(default_factory=list)
    temperature: list = field(default_factory=list)
    conserved: list = field(default_factory=list)
    uncertainty: list = field(default_factory=list)
    pressure: list = field(default_factory=list)  # bar, with the kinetic term (periodic replicas, ASE engine)
    volume: list = field(default_factory=list)  # Å³
    frame_steps: list = field(default_factory=list)
    frames: list = field(default_factory=list)  # (n_atoms, 3) arrays, Å
    frame_cells: list = field(default_factory=list)  # (3, 3) arrays, Å (periodic replicas)
    frame_energy: list = field(default_factory=list)  # kcal/mol, at the frames
    frame_uncertainty: list = field(default_factory=list)  # U at the frames (UQ methods)
    final_cell: np.ndarray | None = None  # Å (NPT only)
    final_positions: np.ndarray | None = None
    final_velocities: np.ndarray | None = None  # Å/fs
    error: str | None = None  # the exception that stopped it, if any (ASE path)

    def as_dict(self, timestep_fs: float, traces: bool = True) -> dict:
        d = {"replica": self.replica, "temperature_K": self.temperature_K, "seed": self.seed,
             "n_atoms": self.n_atoms, "stable": self.stable, "reason": self.reason,
             "failure_step": self.failure_step, "time_to_failure_fs": self.time_to_failure_fs,
             "simulated_fs": self.steps_run * timestep_fs, "error": self.error}
        if traces:
            d.update(time_fs=[s * timestep_fs for s in self.record_steps], energy=list(map(float, self.energy)),
                     temperature=list(map(float, self.temperature)), conserved=list(map(float, self.conserved)),
                     uncertainty=list(map(float, self.uncertainty)) if self.uncertainty else None)
            if self.pressure:
                d.update(pressure_bar=list(map(float, self.pressure)), volume_A3=list(map(float, self.volume)))
        return d


@dataclass
class MDResult:
    replicas: list[ReplicaRecord]
    timestep_fs: float
    n_steps: int
    thermostat: str
    wall_time_s: float
    model_calls: int
    neighbor_builds: int
    replays: int
    uncertainty_description: str | None = None

    @property
    def stable_fraction(self) -> float:
        return float(np.mean([r.stable for r in self.replicas])) if self.replicas else float("nan")

    @property
    def replica_steps_per_second(self) -> float:
        done = sum(r.steps_run for r in self.replicas)
        return done / self.wall_time_s if self.wall_time_s > 0 else float("nan")
