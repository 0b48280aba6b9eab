"""The silica build's settings: SI Table S1's conditions, the SI's MD schedule and :class:`SilicaConfig`
(how the build compresses that schedule in time and scales its frame counts; see :mod:`.build`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ...data.sets._common import BuildError

#: the SI's adversarial learning rate for silica (Å per step, before paper_equivalent_lr)
ATTACK_LR = 3e-5
MASSES = {14: 28.0855, 8: 15.9994}  # amu
TYPES = {14: 1, 8: 2}

#: SI Table S1: (simulation type, name, temperature K, heating/cooling rate K/ps, strain rate x and y in
#: units of 1e-4 /ps, frames in the paper)
TABLE_S1 = [
    ("Temperature equilibration", "300 K", 300, None, None, None, 100),
    ("Temperature equilibration", "500 K", 500, None, None, None, 100),
    ("Temperature equilibration", "1000 K", 1000, None, None, None, 100),
    ("Temperature equilibration", "1500 K", 1500, None, None, None, 100),
    ("Temperature equilibration", "2000 K", 2000, None, None, None, 100),
    ("Temperature equilibration", "2500 K", 2500, None, None, None, 99),
    ("Temperature equilibration", "3000 K", 3000, None, None, None, 98),
    ("Temperature equilibration", "3500 K", 3500, None, None, None, 92),
    ("Cooling", "cooling", None, 1.0, None, None, 410),
    ("Uniaxial deformation", "uniaxial_compress", 300, None, -1.0, None, 30),
    ("Uniaxial deformation", "uniaxial_stretch", 300, None, 1.0, None, 30),
    ("Biaxial compression", "biaxial_m1-m0.25", 300, None, -1.0, -0.25, 30),
    ("Biaxial compression", "biaxial_m1-m0.5", 300, None, -1.0, -0.5, 30),
    ("Biaxial compression", "biaxial_m1-m0.75", 300, None, -1.0, -0.75, 30),
    ("Biaxial compression", "biaxial_m1-m1", 300, None, -1.0, -1.0, 30),
    ("Biaxial stretch", "biaxial_1-0.25", 300, None, 1.0, 0.25, 23),
    ("Biaxial stretch", "biaxial_1-0.5", 300, None, 1.0, 0.5, 26),
    ("Biaxial stretch", "biaxial_1-0.75", 300, None, 1.0, 0.75, 23),
    ("Biaxial stretch", "biaxial_1-1", 300, None, 1.0, 1.0, 22),
    ("Biaxial shear", "biaxial_1-m0.25", 300, None, 1.0, -0.25, 28),
    ("Biaxial shear", "biaxial_1-m0.5", 300, None, 1.0, -0.5, 29),
    ("Biaxial shear", "biaxial_1-m0.75", 300, None, 1.0, -0.75, 30),
    ("Biaxial shear", "biaxial_1-m1", 300, None, 1.0, -1.0, 30),
]


#: the SI's MD schedule (section II.A), in the paper's time (ps): equilibration before sampling and the
#: interval between frames; cooling runs, temperatures, rate (K/ps) and frames per run; deformation rate of
#: the fastest direction (1/ps), final strain, interval between frames
PAPER_MD = {"equilibration_ps": 1000.0, "frame_interval_ps": 100.0, "cooling_runs": 5, "cooling_start": 2300.0,
            "cooling_end": 300.0, "cooling_rate": 1.0, "cooling_frames_per_run": 82, "cooling_prep_ps": 100.0,
            "strain_rate": 1.0e-4, "max_strain": 0.3}

#: version of the MD protocol below (part of the key that guards the saved frames)
MD_PROTOCOL = 3
_MD_FIELDS = ("atoms", "seed", "timestep_fs", "time_compression", "frame_scale", "glass_time_scale",
              "melt_temperature", "melt_ps", "quench_ps", "anneal_ps", "pressure_bar",
              "tdamp_ps", "pdamp_ps", "md_coulomb_cutoff", "md_kspace", "hot_temperatures", "hot_ps", "hot_frames")


@dataclass
class SilicaConfig:
    """How the silica set is built.  Temperatures K, times ps (LAMMPS metal units), energies kcal/mol."""

    atoms: int = 192
    seed: int = 0
    timestep_fs: float = 1.0
    #: the one factor by which the SI's MD is compressed in time (durations / C, rates × C); 500 takes
    #: about 10 min of LAMMPS MD for 192 atoms on 2 cores (the SI's 140 ns become 0.28 ns)
    time_compression: float = 500.0
    #: multiplies the paper's frame count of every condition (at least one frame each)
    frame_scale: float = 1.0
    #: multiplies the glass preparation's durations (melt, quench, anneal: uqpot's, not the SI's)
    glass_time_scale: float = 1.0
    melt_temperature: float = 5000.0
    melt_ps: float = 6.0
    quench_ps: float = 12.0
    anneal_ps: float = 3.0
    pressure_bar: float = 0.0
    tdamp_ps: float = 0.1
    pdamp_ps: float = 1.0
    md_coulomb_cutoff: float = 7.0  # Å
    md_kspace: str = "pppm 1e-4"
    hot_temperatures: tuple = (6000.0, 9000.0)
    hot_ps: float = 2.0
    hot_frames: int = 10
    test_bins: int = 201  # x 2 per bin = the SI's 402
    test_per_bin: int = 2
    test_candidates_per_bin: int = 4
    test_e_max_per_atom: float = 43.0  # kcal/mol/atom: the paper's 30,000 kcal/mol for 699 atoms
    max_attempts: int = 4
    max_rounds: int = 12

    @classmethod
    def quick(cls, **overrides) -> "SilicaConfig":
        """A small, fast build (a 24-atom cell, the SI's MD 25,000x compressed, 2 % of its frames (at least
        one per condition), 5 test bins)."""
        base = dict(atoms=24, time_compression=25000.0, frame_scale=0.02, glass_time_scale=0.02, hot_frames=2,
                    test_bins=5, test_candidates_per_bin=3, max_rounds=8)
        base.update(overrides)
        return cls(**base)

    def frames(self, paper_frames: int) -> int:
        """A condition's frame count: the paper's times ``frame_scale``, at least one."""
        return max(1, int(round(paper_frames * self.frame_scale)))

    def cooling_frames_per_run(self) -> int:
        return max(1, int(round(PAPER_MD["cooling_frames_per_run"] * self.frame_scale)))

    def n_train_frames(self) -> int:
        """The training frames of the build (every condition of Table S1; 1590 at ``frame_scale`` 1)."""
        return sum(PAPER_MD["cooling_runs"] * self.cooling_frames_per_run() if row[0] == "Cooling"
                   else self.frames(row[6]) for row in TABLE_S1)

    def paper_steps(self, paper_ps: float) -> int:
        """MD steps for ``paper_ps`` of the paper's time, compressed by ``time_compression``."""
        return max(1, int(round(paper_ps / self.time_compression * 1000.0 / self.timestep_fs)))

    @property
    def effective_strain_rate(self) -> float:
        """The fastest engineering strain rate applied (1/ps): the SI's 1e-4 times ``time_compression``."""
        return PAPER_MD["strain_rate"] * self.time_compression

    @property
    def effective_cooling_rate(self) -> float:
        """The cooling rate applied (K/ps): the SI's 1 K/ps times ``time_compression``."""
        return PAPER_MD["cooling_rate"] * self.time_compression

    def md_key(self) -> str:
        """A hash of every setting that changes the MD (saved with the glass and the frames, so that a
        rerun never mixes frames made with other settings)."""
        import hashlib
        import json

        md = {k: v for k, v in asdict(self).items() if k in _MD_FIELDS}
        return hashlib.sha256(json.dumps({"protocol": MD_PROTOCOL, **md}, sort_keys=True).encode()).hexdigest()[:16]

    def steps(self, ps: float) -> int:
        """MD steps of the glass preparation and the hot test MD (uqpot's own durations, scaled by
        ``glass_time_scale``)."""
        return max(1, int(round(ps * self.glass_time_scale * 1000.0 / self.timestep_fs)))

    def check(self) -> None:
        if self.atoms % 3 or self.atoms < 6:
            raise BuildError(f"--atoms must be a multiple of 3 (SiO2 units) and at least 6, got {self.atoms}")
        for name in ("test_bins", "test_per_bin", "max_attempts", "max_rounds"):
            if getattr(self, name) < 1:
                raise BuildError(f"{name} must be >= 1")
        if self.test_candidates_per_bin < self.test_per_bin:
            raise BuildError("test_candidates_per_bin must be >= test_per_bin")
        for name in ("time_compression", "timestep_fs", "frame_scale", "glass_time_scale"):
            if not getattr(self, name) > 0:
                raise BuildError(f"{name} must be > 0")
