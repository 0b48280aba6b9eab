"""The silica build's LAMMPS MD (BKS + wall): the melt-quench, the conditions of SI Table S1 and the hot MD
of the test set (see :mod:`.build`, steps 2-3), their frames saved atomically under ``OUT/md/``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...data.sets._common import BuildError
from ...oracle.bks import lammps_commands, load_lammps
from .cell import silica_cell
from .config import MASSES, PAPER_MD, TYPES, SilicaConfig

class LammpsMD:
    """BKS + wall silica MD in LAMMPS (metal units: Å, ps, eV, K, bar) on an orthorhombic periodic box."""

    def __init__(self, numbers, positions, lengths, velocities=None, cfg: SilicaConfig | None = None):
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
