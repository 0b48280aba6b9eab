"""Silica glass, built like the paper's (SI section II.A, Table S1) on a cell of configurable size.

The paper's set: 1590 frames of a 699-atom amorphous SiO2 cell sampled from LAMMPS MD (Nosé-Hoover
thermostat and barostat) under 23 conditions — equilibration at 300-3500 K, cooling from 2300 K to 300 K
at 1 K/ps, uniaxial and biaxial tension/compression and biaxial "shear" (tension in x, compression in y)
at strain rates of 10⁻⁴ ps⁻¹ up to 30 % strain — labelled with VASP PBE; and 402 test structures of very
high energy and force (0-30,000 kcal/mol, i.e. 0-43 kcal/mol/atom), binned by energy, two of the
highest-force structures kept per bin.

Here, with the SI's conditions and frame counts, at a cost a workstation can pay (``uqpot data build silica``:
the 1590 frames of Table S1 and a 402-structure test set on a 192-atom cell; ``--atoms 699`` for the
paper's cell):

1. **Cell** (:func:`silica_cell`): α-quartz (space group 154, Si (0.4697, 0, 2/3), O (0.4135, 0.2669,
   0.1191-1/3), a = 4.916, c = 5.405 Å) in its orthohexagonal 18-atom cell, repeated to the most nearly
   cubic box holding at least ``atoms`` atoms, then SiO2 units (a random Si and its two nearest O) are
   removed until ``atoms`` remain (192 atoms = 64 SiO2: a 2x2x3 box of 216 minus 8 units; 699 = 4x2x5
   minus 7 units, the paper's cell).
2. **Melt-quench** with LAMMPS on BKS + the short-range wall (:mod:`uqpot.oracle.bks`; the MD uses PPPM
   and a 7 Å real-space Coulomb cutoff for speed, the labels use the oracle's exact Ewald settings): NVT
   at ``melt_temperature``, NPT quench to 300 K at 0 bar, NPT anneal at 300 K.
3. **Training frames** from the conditions of Table S1 (:data:`TABLE_S1`), each an MD run from the glass,
   with the SI's schedule (:data:`PAPER_MD`) compressed in time by ONE factor, ``time_compression`` (C,
   default 500): every duration is the paper's divided by C and every rate the paper's times C.
   Equilibration: NPT at each temperature, 1 ns/C, then the condition's frames every 100 ps/C (the SI:
   11 ns, frames every 100 ps of the last 10 ns).  Cooling: 5 runs from the glass (own velocities), NPT
   from 2300 to 300 K at C K/ps (the SI: 1 K/ps), 82 frames each, evenly over the ramp (the SI: every
   25 ps; 5 × 82 = 410).  Deformation at 300 K with ``fix deform``: engineering strain rate 1e-4·C per ps
   in x (and the condition's ratio in y) up to 30 % in x, the undeformed directions under the barostat
   at 0 bar, the condition's frames evenly over the run (the SI: every 100 ps).  Frame counts are the
   paper's per condition (1590 in all), times ``frame_scale`` (at least one per condition) for smaller
   builds.
4. **Labels**: every frame with the BKS oracle (``lammps:bks+wall``) through the store.
5. **Test set** (the SI: 402 structures of 0-30,000 kcal/mol, i.e. 0-43 kcal/mol/atom, from adversarial
   sampling during trial runs, binned and deduplicated by energy, the 2 highest-force structures per bin):
   candidates from very hot NVT MD (``hot_temperatures``) and displacements of training frames aimed
   (secant on the amplitude, as in :mod:`.ammonia`) at ``test_bins`` energy bins (201 × 2 = 402) from 0 to
   ``test_e_max_per_atom`` kcal/mol/atom above the training minimum.  The displacement directions come
   from ``directions``: trial adversarial runs (:mod:`uqpot.systems.silica.trial_attack`, which ``uqpot data
   build silica`` uses: a small trial ensemble trained on the training frames, attacked as in Eq. 15-16,
   each attack's displacement a direction), or random directions where none is given.  Candidates of the
   same energy (to 1e-6 kcal/mol) are duplicates; per bin the ``test_per_bin`` structures with the
   highest atomic force (max |F_i|) are kept.

Resumable: the glass and each condition's frames are saved under ``OUT/md/`` (NumPy files written
atomically) as soon as they exist, and every label is in the store; a rerun skips the finished MD and
makes no oracle call for a stored label.  LAMMPS MD is deterministic in one process, so an interrupted
condition is rerun to the same frames.

Written files (``OUT/``): ``train.extxyz`` and ``test.extxyz`` (energies kcal/mol **relative to the
lowest training energy**, ``info["reference_energy"]`` its absolute BKS energy; forces kcal/mol/Å;
positions and cell Å; ``info``: ``condition``, ``group``, ``time_ps``, ``temperature``, ``strain_x``,
``strain_y``, ``method``, ``store_id``), ``summary.json`` with the per-condition frame counts (the
analogue of Table S1) and energy histograms.

**Your own DFT data** (the paper's VASP PBE labels): uqpot reads VASP outputs through ``ase.io``, e.g.
``uqpot data check vasprun.xml --energy-unit eV`` (or ``OUTCAR``); energies and forces come from the
calculator results ASE attaches (eV, eV/Å; ``energy`` is VASP's energy extrapolated to σ → 0) and are
converted to kcal/mol.  In a training config set ``data.path: vasprun.xml`` and ``data.energy_unit: eV``.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ...data.sets._common import BuildError, energy_histogram
from ...data.sets._build import CurvaturePrior, Labeller, Slot, StageProgress, elapsed

SOURCE = "uqpot data build silica"
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


# -- the cell -------------------------------------------------------------------------------------------
def quartz_orthorhombic():
    """α-quartz in its orthohexagonal cell (a, √3·a, c; 18 atoms)."""
    from ase.build import make_supercell
    from ase.spacegroup import crystal

    quartz = crystal(["Si", "O"], basis=[(0.4697, 0.0, 2.0 / 3.0), (0.4135, 0.2669, 0.1191 - 1.0 / 3.0)],
                     spacegroup=154, cellpar=[4.916, 4.916, 5.405, 90, 90, 120])
    ortho = make_supercell(quartz, [[1, 0, 0], [1, 2, 0], [0, 0, 1]])
    ortho.set_cell(np.diag(np.diag(ortho.cell.array)), scale_atoms=False)
    ortho.wrap()
    return ortho


def _repeats(n_atoms: int, lengths) -> tuple[int, int, int]:
    best = None
    for n1 in range(1, 13):
        for n2 in range(1, 13):
            for n3 in range(1, 13):
                cells = n1 * n2 * n3
                if 18 * cells < n_atoms:
                    continue
                dims = np.array([n1, n2, n3]) * lengths
                key = (cells, dims.max() / dims.min())
                if dims.max() / dims.min() <= 1.8 and (best is None or key < best[0]):
                    best = (key, (n1, n2, n3))
    if best is None:
        raise BuildError(f"no quartz supercell for {n_atoms} atoms")
    return best[1]


def silica_cell(n_atoms: int = 192, seed: int = 0):
    """An orthorhombic SiO2 cell of ``n_atoms`` atoms cut from α-quartz (see the module docstring)."""
    from ase.neighborlist import neighbor_list

    if n_atoms % 3 or n_atoms < 6:
        raise BuildError(f"a SiO2 cell needs a multiple of 3 atoms (at least 6), got {n_atoms}")
    unit = quartz_orthorhombic()
    rep = _repeats(n_atoms, np.diag(unit.cell.array))
    atoms = unit.repeat(rep)
    rng = np.random.default_rng([seed, 7])
    remove: set[int] = set()
    i, j, d = neighbor_list("ijd", atoms, 2.2)
    oxygens: dict[int, list] = {}
    for ii, jj, dd in zip(i, j, d):
        if atoms.numbers[ii] == 14 and atoms.numbers[jj] == 8:
            oxygens.setdefault(int(ii), []).append((float(dd), int(jj)))
    while len(atoms) - len(remove) > n_atoms:
        si = [k for k in np.flatnonzero(atoms.numbers == 14) if k not in remove]
        s = int(rng.choice(si))
        partners = sorted((dd, jj) for dd, jj in oxygens.get(s, []) if jj not in remove)
        if len(partners) < 2:
            raise BuildError("cannot remove an SiO2 unit (an Si without two O neighbours)")
        remove.update([s, int(partners[0][1]), int(partners[1][1])])
    keep = [k for k in range(len(atoms)) if k not in remove]
    out = atoms[keep]
    order = np.argsort(-out.numbers, kind="stable")  # Si first, then O
    return out[order]


# -- LAMMPS MD ------------------------------------------------------------------------------------------
class LammpsMD:
    """BKS + wall silica MD in LAMMPS (metal units: Å, ps, eV, K, bar) on an orthorhombic periodic box."""

    def __init__(self, numbers, positions, lengths, velocities=None, cfg: SilicaConfig | None = None):
        from ...oracle.bks import lammps_commands, load_lammps

        cfg = cfg or SilicaConfig()
        lammps = load_lammps()
        self.numbers = np.asarray(numbers, dtype=np.int64)
        self.lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
        lx, ly, lz = (float(v) for v in lengths)
        for c in ["units metal", "atom_style charge", "atom_modify map array", "boundary p p p",
                  f"region box block 0 {lx!r} 0 {ly!r} 0 {lz!r}", "create_box 2 box",
                  f"mass 1 {MASSES[14]}", f"mass 2 {MASSES[8]}"]:
            self.command(c)
        n = len(self.numbers)
        types = [TYPES[int(z)] for z in self.numbers]
        v = None if velocities is None else np.asarray(velocities, dtype=np.float64).reshape(-1).tolist()
        self.lmp.create_atoms(n, list(range(1, n + 1)), types, np.asarray(positions, dtype=np.float64).reshape(-1).tolist(),
                              v)
        for c in lammps_commands(wall=True, coulomb_cutoff=cfg.md_coulomb_cutoff):
            if c.startswith("kspace_style"):
                c = f"kspace_style {cfg.md_kspace}"
            elif c.startswith("pair_modify"):
                c = "pair_modify shift yes"
            self.command(c)
        for c in ["neighbor 1.0 bin", "neigh_modify every 1 delay 0 check yes",
                  f"timestep {cfg.timestep_fs / 1000.0!r}", "thermo 0"]:
            self.command(c)

    def command(self, c: str) -> None:
        try:
            self.lmp.command(c)
        except Exception as e:  # noqa: BLE001  (LAMMPS raises a bare Exception)
            raise BuildError(f"LAMMPS: {c!r} failed: {e}") from None

    def run(self, steps: int) -> None:
        self.command(f"run {int(steps)}")

    def step(self) -> int:
        return int(self.lmp.extract_global("ntimestep"))

    def box(self) -> np.ndarray:
        lo, hi, xy, yz, xz, _periodic, _changed = self.lmp.extract_box()
        return np.asarray(hi, dtype=np.float64) - np.asarray(lo, dtype=np.float64)

    def state(self) -> dict:
        """Positions (wrapped into [0, L)), velocities (Å/ps), box lengths (Å), temperature (K)."""
        lo, hi, *_ = self.lmp.extract_box()
        ids = np.array(self.lmp.numpy.extract_atom("id"), dtype=np.int64).reshape(-1)
        n = len(self.numbers)
        order = np.argsort(ids[:n])
        x = np.array(self.lmp.numpy.extract_atom("x"), dtype=np.float64)[:n][order]
        v = np.array(self.lmp.numpy.extract_atom("v"), dtype=np.float64)[:n][order]
        lengths = np.asarray(hi, dtype=np.float64) - np.asarray(lo, dtype=np.float64)
        x = np.mod(x - np.asarray(lo), lengths)
        return {"positions": x, "velocities": v, "lengths": lengths,
                "temperature": float(self.lmp.get_thermo("temp"))}

    def close(self) -> None:
        if self.lmp is not None:
            self.lmp.close()
            self.lmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _lmp_seed(cfg: SilicaConfig, *key) -> int:
    return int(np.random.default_rng([cfg.seed, 11, *key]).integers(1, 2**31 - 1))


def _save_npz(path: Path, key: str, **arrays) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
    np.savez(tmp, md_key=np.array(key), **arrays)
    os.replace(tmp, path)


def _load_npz(path: Path, key: str) -> dict | None:
    """The arrays saved in ``path`` (None if there is no such file); refuses frames made with other settings."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    saved = str(data.pop("md_key", ""))
    if saved != key:
        raise BuildError(f"{path} was made with other MD settings (key {saved or 'none'}, these settings: {key}); "
                         "build into another --out folder or remove its md/ folder")
    return data


def _frames_file(md_dir: Path, name: str) -> Path:
    return md_dir / f"frames_{name.replace(' ', '')}.npz"


def melt_quench(cfg: SilicaConfig, md_dir: Path, progress=None) -> dict:
    """The glass (positions, velocities, box lengths), from ``md/glass.npz`` when it exists."""
    path = md_dir / "glass.npz"
    saved = _load_npz(path, cfg.md_key())
    if saved is not None:
        return saved
    atoms = silica_cell(cfg.atoms, cfg.seed)
    lengths = np.diag(atoms.cell.array)
    p, T = cfg.pressure_bar, cfg.melt_temperature
    with LammpsMD(atoms.numbers, atoms.positions, lengths, cfg=cfg) as md:
        md.command(f"velocity all create {T!r} {_lmp_seed(cfg, 0)} mom yes rot no dist gaussian")
        md.command(f"fix ens all nvt temp {T!r} {T!r} {cfg.tdamp_ps!r}")
        md.run(cfg.steps(cfg.melt_ps))
        md.command("unfix ens")
        md.command(f"fix ens all npt temp {T!r} 300.0 {cfg.tdamp_ps!r} iso {p!r} {p!r} {cfg.pdamp_ps!r}")
        md.run(cfg.steps(cfg.quench_ps))
        md.command("unfix ens")
        md.command(f"fix ens all npt temp 300.0 300.0 {cfg.tdamp_ps!r} iso {p!r} {p!r} {cfg.pdamp_ps!r}")
        md.run(cfg.steps(cfg.anneal_ps))
        st = md.state()
    glass = {"numbers": atoms.numbers.astype(np.int64), "positions": st["positions"],
             "velocities": st["velocities"], "lengths": st["lengths"]}
    _save_npz(path, cfg.md_key(), **glass)
    return glass


def _run_condition(cfg: SilicaConfig, glass: dict, index: int, row: tuple) -> dict:
    """MD of one Table S1 condition from the glass, on the SI's schedule compressed by ``time_compression``
    (module docstring); the sampled frames with their conditions."""
    group, name, temp, rate, ex, ey, paper_frames = row
    p, td, pd = cfg.pressure_bar, cfg.tdamp_ps, cfg.pdamp_ps
    frames = {"positions": [], "lengths": [], "time_ps": [], "temperature": [], "strain_x": [], "strain_y": []}

    def sample(md, l0, t_ps, n_frames, interval_steps):
        """n_frames segments of interval_steps, run as ONE LAMMPS run (``start``/``stop``): a ramped
        thermostat target and ``fix deform`` then follow the whole schedule, not each segment."""
        first = md.step()
        last = first + n_frames * interval_steps
        for _ in range(n_frames):
            md.command(f"run {int(interval_steps)} start {first} stop {last}")
            t_ps += interval_steps * cfg.timestep_fs / 1000.0
            st = md.state()
            frames["positions"].append(st["positions"])
            frames["lengths"].append(st["lengths"])
            frames["time_ps"].append(t_ps)
            frames["temperature"].append(st["temperature"])
            frames["strain_x"].append(st["lengths"][0] / l0[0] - 1.0)
            frames["strain_y"].append(st["lengths"][1] / l0[1] - 1.0)
        return t_ps

    if group == "Cooling":  # 5 runs from the glass, each its own velocities, 82 frames over the ramp
        t_hi, t_lo = PAPER_MD["cooling_start"], PAPER_MD["cooling_end"]
        ramp = cfg.paper_steps((t_hi - t_lo) / PAPER_MD["cooling_rate"])
        n = cfg.cooling_frames_per_run()
        for run in range(PAPER_MD["cooling_runs"]):
            with LammpsMD(glass["numbers"], glass["positions"], glass["lengths"], cfg=cfg) as md:
                l0 = md.box()
                md.command(f"velocity all create {t_hi!r} {_lmp_seed(cfg, 1, index, run)} mom yes rot no dist gaussian")
                md.command(f"fix ens all npt temp {t_hi!r} {t_hi!r} {td!r} iso {p!r} {p!r} {pd!r}")
                prep = cfg.paper_steps(PAPER_MD["cooling_prep_ps"])
                md.run(prep)
                md.command("unfix ens")
                md.command(f"fix ens all npt temp {t_hi!r} {t_lo!r} {td!r} iso {p!r} {p!r} {pd!r}")
                sample(md, l0, prep * cfg.timestep_fs / 1000.0, n, max(1, ramp // n))
        return {k: np.asarray(v) for k, v in frames.items()}

    n = cfg.frames(paper_frames)
    with LammpsMD(glass["numbers"], glass["positions"], glass["lengths"], cfg=cfg) as md:
        l0 = md.box()
        md.command(f"velocity all create {float(temp)!r} {_lmp_seed(cfg, 1, index)} mom yes rot no dist gaussian")
        if group == "Temperature equilibration":  # the SI: 1 ns, then frames every 100 ps
            md.command(f"fix ens all npt temp {float(temp)!r} {float(temp)!r} {td!r} iso {p!r} {p!r} {pd!r}")
            eq = cfg.paper_steps(PAPER_MD["equilibration_ps"])
            md.run(eq)
            interval = cfg.paper_steps(PAPER_MD["frame_interval_ps"] * paper_frames / n)
            sample(md, l0, eq * cfg.timestep_fs / 1000.0, n, interval)
        else:  # deformation: 1e-4/ps (x; y at the condition's ratio) up to 30 % strain in x
            rx = ex * cfg.effective_strain_rate
            ry = None if ey is None else ey * cfg.effective_strain_rate
            baro = "y {p!r} {p!r} {pd!r} z {p!r} {p!r} {pd!r}" if ry is None else "z {p!r} {p!r} {pd!r}"
            md.command(f"fix ens all npt temp {float(temp)!r} {float(temp)!r} {td!r} " + baro.format(p=p, pd=pd))
            deform = f"x erate {rx!r}" + ("" if ry is None else f" y erate {ry!r}")
            md.command(f"fix def all deform 1 {deform} remap x")
            total = cfg.paper_steps(PAPER_MD["max_strain"] / PAPER_MD["strain_rate"])
            sample(md, l0, 0.0, n, max(1, total // n))
    return {k: np.asarray(v) for k, v in frames.items()}


def _hot_frames(cfg: SilicaConfig, glass: dict, k: int, temp: float) -> dict:
    frames = {"positions": [], "lengths": [], "time_ps": [], "temperature": [], "strain_x": [], "strain_y": []}
    with LammpsMD(glass["numbers"], glass["positions"], glass["lengths"], cfg=cfg) as md:
        md.command(f"velocity all create {float(temp)!r} {_lmp_seed(cfg, 2, k)} mom yes rot no dist gaussian")
        md.command(f"fix ens all nvt temp {float(temp)!r} {float(temp)!r} {cfg.tdamp_ps!r}")
        interval = max(1, cfg.steps(cfg.hot_ps) // cfg.hot_frames)
        for f in range(cfg.hot_frames):
            md.run(interval)
            st = md.state()
            frames["positions"].append(st["positions"])
            frames["lengths"].append(st["lengths"])
            frames["time_ps"].append((f + 1) * interval * cfg.timestep_fs / 1000.0)
            frames["temperature"].append(st["temperature"])
            frames["strain_x"].append(0.0)
            frames["strain_y"].append(0.0)
    return {k_: np.asarray(v) for k_, v in frames.items()}


def _structures(numbers, frames: dict, info: dict) -> list:
    from ...data.structures import Structure

    out = []
    for f in range(len(frames["positions"])):
        i = {**info, "frame_index": f}
        for key in ("time_ps", "temperature", "strain_x", "strain_y"):
            i[key] = round(float(frames[key][f]), 6)
        out.append(Structure(numbers=np.asarray(numbers, dtype=np.int64).copy(),
                             positions=np.asarray(frames["positions"][f], dtype=np.float64),
                             cell=np.diag(np.asarray(frames["lengths"][f], dtype=np.float64)),
                             pbc=np.ones(3, dtype=bool), info=i))
    return out


def _max_force(s) -> float:
    return float(np.sqrt((np.asarray(s.forces) ** 2).sum(1)).max())


def _test_set(cfg, train, hot, labeller, e_ref, progress, directions=None):
    """Bins of energy above the training minimum; per bin the test_per_bin highest-force candidates.
    ``directions``: (training-frame index, displacement (n, 3) Å) pairs to displace along (trial adversarial
    runs); None: random directions from random training frames below the target."""
    from ...data.store import structure_hash
    from ...data.structures import Structure

    n_at = len(train[0].numbers)
    e_max = cfg.test_e_max_per_atom * n_at
    width = e_max / cfg.test_bins
    pool: list = []
    seen = {structure_hash(s, "geometry") for s in train}
    energies: set = set()

    def add(lab):
        if lab is None:
            return
        key = structure_hash(lab, "geometry")
        e_key = round(float(lab.energy), 6)  # the SI deduplicates by energy
        if key in seen or e_key in energies:
            return
        seen.add(key)
        energies.add(e_key)
        e = lab.energy - e_ref
        if 0.0 <= e < e_max:
            pool.append((int(e // width), lab))

    for lab in hot:
        add(lab)
    counts = lambda: np.bincount([b for b, _ in pool], minlength=cfg.test_bins)[: cfg.test_bins]  # noqa: E731
    slots: list[Slot] = []
    made = [0] * cfg.test_bins
    # before any label: E ≈ c·s² with c ≈ 200 kcal/mol/Å² per atom (BKS glass, RMS displacement s)
    prior = CurvaturePrior(default=200.0 * n_at, fallback="displacement")
    n_labelled = 0
    rounds = 0
    for rounds in range(1, cfg.max_rounds + 1):
        have = counts()
        pilot = rounds == 1
        for b in range(cfg.test_bins):
            want = cfg.test_candidates_per_bin - int(have[b])
            open_b = sum(1 for s in slots if not s.done and s.bin == b)
            n_new = max(0, want - open_b)
            if pilot:  # a first round of one slot per bin teaches the prior the energy scale
                n_new = min(n_new, 1)
            for _ in range(n_new):
                rng = np.random.default_rng([cfg.seed, 3, b, made[b]])
                target = (b + float(rng.uniform(0.15, 0.85))) * width
                if directions:  # a trial attack's displacement, from its own starting frame
                    k, direction = directions[len(slots) % len(directions)]
                    base, kind = train[int(k)], "adversarial-direction"
                else:  # a random direction from a training frame well below the target
                    below = [s for s in train if s.energy - e_ref <= 0.5 * target] or [min(train, key=lambda s: s.energy)]
                    base, kind = below[int(rng.integers(len(below)))], "displacement"
                    direction = rng.normal(size=(n_at, 3))
                direction = direction / np.sqrt((direction**2).sum(1).mean())  # RMS displacement 1 Å at s = 1
                slot = Slot(index=len(slots), stage="test", kind=kind, target=target,
                            base=base.positions.copy(), direction=direction, e0=base.energy - e_ref, bin=b,
                            info={"base_condition": base.info.get("condition"), "cell": base.cell.copy()})
                slots.append(slot)
                made[b] += 1
        for slot in slots:
            if not slot.done and slot.e0 >= slot.target:
                slot.done = True  # its base already lies above the bin
        open_ = [s for s in slots if not s.done]
        if not open_:
            break
        proposals = []
        for slot in open_:
            s = slot.next_amplitude(prior)
            info = {"stage": "test", "kind": slot.kind, "slot": slot.index, "attempt": slot.attempts,
                    "amplitude": round(float(s), 8), "condition": slot.kind,
                    "base_condition": slot.info["base_condition"]}
            proposals.append((slot, s, Structure(numbers=train[0].numbers.copy(), positions=slot.positions(s),
                                                 cell=slot.info["cell"], pbc=np.ones(3, dtype=bool), info=info)))
        out, records = labeller([p[2] for p in proposals], "test")
        n_labelled += len(proposals)
        for (slot, s, _), lab, rec in zip(proposals, out, records):
            slot.record(s, None if lab is None else lab.energy - e_ref, None if lab is None else lab.forces)
            prior.add(slot)
            if lab is not None:
                lab.info["store_id"] = rec.store_id
            add(lab)
        have = counts()
        for slot in open_:
            if have[slot.bin] >= cfg.test_candidates_per_bin or slot.attempts >= cfg.max_attempts:
                slot.done = True
        if progress is not None:
            progress.update(completed=int(np.minimum(have, cfg.test_per_bin).sum()),
                            note=f"round {rounds}, {n_labelled} candidates labelled")
        if (have >= cfg.test_candidates_per_bin).all():
            break
    chosen = []
    for b in range(cfg.test_bins):
        members = [lab for bb, lab in pool if bb == b]
        members.sort(key=lambda lab: -_max_force(lab))
        chosen += members[: cfg.test_per_bin]
    have = counts()
    missing = [b for b in range(cfg.test_bins) if have[b] < cfg.test_per_bin]
    return chosen, missing, n_labelled, rounds, width


def _relative(structures, e_ref: float, method: str) -> list:
    out = []
    for s in structures:
        info = {k: v for k, v in s.info.items() if k != "cell"}
        out.append(s.__class__(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc,
                               energy=float(s.energy - e_ref), forces=s.forces, source=None, frame=None,
                               info={**info, "reference_energy": float(e_ref), "method": method},
                               stress=s.stress))
    return out


def build_silica(out, *, atoms: int | None = None, store=None, config: SilicaConfig | None = None,
                 oracle=None, progress: bool = True, console=None, directions=None) -> dict:
    """Builds the silica training and test sets into ``out`` (see the module docstring); returns the
    summary (also ``OUT/summary.json``).  ``oracle``: default the BKS oracle (``lammps:bks+wall``).
    ``directions``: a callable ``(training structures, out folder) -> [(frame index, displacement)]`` that
    gives the test set's displacement directions (:func:`uqpot.systems.silica.trial_attack.adversarial_directions`,
    the SI's trial adversarial runs), or None for random directions."""
    from ...oracle import get_oracle
    from ...provenance import write_json
    from ...data.io import write_extxyz
    from ...data.store import open_store
    from ...data.structures import StructureDataset

    t0 = time.perf_counter()
    cfg = config or SilicaConfig()
    if atoms is not None:
        cfg.atoms = int(atoms)
    cfg.check()
    out = Path(out)
    md_dir = out / "md"
    md_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(store if store is not None else out / "labels.db")
    oracle = get_oracle("bks") if oracle is None else (get_oracle(oracle) if isinstance(oracle, str) else oracle)
    labeller = Labeller(oracle, store, SOURCE)
    calls0 = oracle.calls
    timings: dict = {"md": 0.0, "labels": 0.0}
    table = []
    train = []
    with StageProgress(progress, console) as prog:
        prog.stage(f"melt-quench ({cfg.atoms} atoms)", total=None)
        t = time.perf_counter()
        glass = melt_quench(cfg, md_dir, prog)
        timings["melt_quench"] = elapsed(t)
        numbers = glass["numbers"]
        vol = float(np.prod(glass["lengths"]))
        mass_g = sum(MASSES[int(z)] for z in numbers) / 6.02214076e23
        density = mass_g / (vol * 1e-24)
        prog.log(f"glass: {len(numbers)} atoms, box {' x '.join(f'{v:.2f}' for v in glass['lengths'])} Å, "
                 f"density {density:.3f} g/cm³")
        prog.stage("MD conditions of Table S1", total=len(TABLE_S1))
        for index, row in enumerate(TABLE_S1):
            group, name, temp, rate, ex, ey, paper = row
            path = _frames_file(md_dir, name)
            t = time.perf_counter()
            frames = _load_npz(path, cfg.md_key())
            if frames is None:
                frames = _run_condition(cfg, glass, index, row)
                _save_npz(path, cfg.md_key(), **frames)
            timings["md"] += time.perf_counter() - t
            t = time.perf_counter()
            structs = _structures(numbers, frames, {"stage": "train", "condition": name, "group": group})
            labelled, records = labeller(structs, name)
            timings["labels"] += time.perf_counter() - t
            ok = []
            for lab, rec in zip(labelled, records):
                if lab is not None:
                    lab.info["store_id"] = rec.store_id
                    ok.append(lab)
            train += ok
            table.append({"type": group, "name": name, "temperature_K": temp,
                          "cooling_rate_K_per_ps": None if rate is None else cfg.effective_cooling_rate,
                          "paper_cooling_rate_K_per_ps": rate,
                          "strain_rate_x_per_ps": None if ex is None else ex * cfg.effective_strain_rate,
                          "strain_rate_y_per_ps": None if ey is None else ey * cfg.effective_strain_rate,
                          "paper_strain_rate_x_1e-4_per_ps": ex, "paper_strain_rate_y_1e-4_per_ps": ey,
                          "frames": len(ok), "failed": len(structs) - len(ok), "paper_frames": paper,
                          "final_strain_x": round(float(frames["strain_x"][-1]), 4),
                          "final_strain_y": round(float(frames["strain_y"][-1]), 4)})
            prog.update(advance=1, note=f"{name}: {len(ok)} frames")
        if not train:
            raise BuildError("no training frame was labelled")
        e_ref = float(min(s.energy for s in train))
        prog.stage("hot MD for the test set", total=len(cfg.hot_temperatures))
        hot = []
        for k, temp in enumerate(cfg.hot_temperatures):
            name = f"hot_{int(temp)}K"
            path = _frames_file(md_dir, name)
            t = time.perf_counter()
            frames = _load_npz(path, cfg.md_key())
            if frames is None:
                frames = _hot_frames(cfg, glass, k, temp)
                _save_npz(path, cfg.md_key(), **frames)
            timings["md"] += time.perf_counter() - t
            structs = _structures(numbers, frames, {"stage": "test", "kind": "hot-md", "condition": name})
            labelled, records = labeller(structs, "test")
            for lab, rec in zip(labelled, records):
                if lab is not None:
                    lab.info["store_id"] = rec.store_id
                    hot.append(lab)
            prog.update(advance=1)
        dirs, source = None, "random displacements"
        if directions is not None:
            prog.stage("trial adversarial runs (the test set's directions)", total=None)
            t = time.perf_counter()
            dirs = directions(train, out / "trial")
            timings["trial_attack"] = elapsed(t)
            source = f"displacements along {len(dirs)} trial adversarial samples"
            prog.log(f"trial attacks gave {len(dirs)} directions")
        prog.stage(f"test set ({cfg.test_per_bin} highest-force per bin, {cfg.test_bins} bins)",
                   total=cfg.test_bins * cfg.test_per_bin)
        t = time.perf_counter()
        test, missing, n_candidates, rounds, width = _test_set(cfg, train, hot, labeller, e_ref, prog, dirs)
        timings["test"] = elapsed(t)
    train_rel = _relative(train, e_ref, oracle.method)
    test_rel = _relative(test, e_ref, oracle.method)
    write_extxyz(StructureDataset(train_rel), out / "train.extxyz")
    write_extxyz(StructureDataset(test_rel), out / "test.extxyz")
    e_train = np.array([s.energy for s in train_rel])
    e_test = np.array([s.energy for s in test_rel])
    f_train = np.array([_max_force(s) for s in train_rel])
    f_test = np.array([_max_force(s) for s in test_rel])
    n_at = len(numbers)
    test_edges = np.linspace(0.0, width * cfg.test_bins, cfg.test_bins + 1)
    train_edges = np.linspace(0.0, max(float(e_train.max()), 1e-9), 21)
    summary = {
        "dataset": "silica",
        "method": oracle.method,
        "units": {"energy": "kcal/mol (relative to the lowest training energy)", "forces": "kcal/mol/Å",
                  "positions": "Å", "time": "ps", "temperature": "K"},
        "atoms": n_at, "composition": {"Si": int((numbers == 14).sum()), "O": int((numbers == 8).sum())},
        "glass": {"box_A": [float(v) for v in glass["lengths"]], "density_g_per_cm3": round(density, 4)},
        "reference_energy_kcal_per_mol": e_ref,
        "time_compression": cfg.time_compression,
        "conditions": table,
        "train": {"file": "train.extxyz", "n": len(train_rel), "paper_n": 1590,
                  "energy_max": float(e_train.max()), "energy_max_per_atom": float(e_train.max()) / n_at,
                  "max_force_max": float(f_train.max()), "histogram": energy_histogram(e_train, train_edges)},
        "test": {"file": "test.extxyz", "n": len(test_rel), "bins": cfg.test_bins, "bin_width_kcal_per_mol": width,
                 "energy_max": float(e_test.max()) if len(e_test) else None,
                 "energy_max_per_atom": float(e_test.max()) / n_at if len(e_test) else None,
                 "max_force_median": float(np.median(f_test)) if len(f_test) else None,
                 "hot_md_frames": len(hot), "candidates_labelled": n_candidates + len(hot), "rounds": rounds,
                 "missing_bins": missing, "directions": source,
                 "kinds": {k: int(sum(1 for s in test_rel if s.info.get("kind") == k))
                           for k in ("hot-md", "displacement", "adversarial-direction")},
                 "histogram": energy_histogram(e_test, test_edges)},
        "labels": {**labeller.counter.as_dict(), "oracle_calls": oracle.calls - calls0,
                   "store": str(store.path), "store_rows": store.count()},
        "config": asdict(cfg),
        "timings_seconds": {k: round(v, 2) for k, v in {**timings, "total": time.perf_counter() - t0}.items()},
    }
    write_json(out / "summary.json", summary)
    return summary


def format_table(summary: dict) -> str:
    """The per-condition frame counts (the analogue of SI Table S1) as text."""
    lines = [f"{'simulation type':<26} {'name':<18} {'T (K)':>6} {'rate x/y (1/ps)':>18} {'frames':>6} {'paper':>6}"]
    for r in summary["conditions"]:
        rates = "-"
        if r["strain_rate_x_per_ps"] is not None:
            rates = f"{r['strain_rate_x_per_ps']:+.3g}" + (f"/{r['strain_rate_y_per_ps']:+.3g}"
                                                           if r["strain_rate_y_per_ps"] is not None else "")
        elif r["cooling_rate_K_per_ps"] is not None:
            rates = f"{r['cooling_rate_K_per_ps']:g} K/ps"
        temp = "-" if r["temperature_K"] is None else f"{r['temperature_K']}"
        lines.append(f"{r['type']:<26} {r['name']:<18} {temp:>6} {rates:>18} {r['frames']:>6} {r['paper_frames']:>6}")
    total = sum(r["frames"] for r in summary["conditions"])
    lines.append(f"{'total':<26} {'':<18} {'':>6} {'':>18} {total:>6} {1590:>6}")
    return "\n".join(lines)


__all__ = ["SilicaConfig", "build_silica", "silica_cell", "quartz_orthorhombic", "LammpsMD", "TABLE_S1",
           "format_table", "melt_quench"]
