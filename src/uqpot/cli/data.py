"""``uqpot data``: check structure files; fetch or build the paper's data sets."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import EXIT_USER_ERROR, fail as _fail
from ..core.errors import ConfigError, UqpotError
from ..core.schema import SEED_MAX

#: every --seed: an integer in [0, 2**32)
SEED = click.IntRange(0, SEED_MAX)


def _console():
    from rich.console import Console

    return Console(stderr=True)


@click.group()
def data():
    """Structure files: check them; fetch or build the paper's data sets (rMD17, ammonia, silica)."""


@data.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--energy-key", default=None)
@click.option("--forces-key", default=None)
@click.option("--energy-unit", default="kcal/mol", show_default=True)
@click.option("--length-unit", default="Å", show_default=True)
@click.option("--format", "fmt", default=None,
              help="file format as ase.io names it (extxyz, db, vasp-xml, ...; default: guessed from the name).")
@click.option("--min-distance", default=0.5, show_default=True, type=click.FloatRange(min=0.0),
              help="minimum interatomic distance (Å), >= 0 (0: not checked).")
@click.option("--no-labels", is_flag=True, help="structures without energy/forces are valid.")
def check(files, energy_key, forces_key, energy_unit, length_unit, fmt, min_distance, no_labels):
    """Validate structure files; every problem of every file (file, frame, field), one line each, on
    stderr; exit 0 only if all are valid, 2 if any problem was found."""
    from ..data.io import ReadOptions, check_files
    from ..core.units import UnitError

    try:
        opts = ReadOptions(format=fmt, energy_key=energy_key, forces_key=forces_key, energy_unit=energy_unit,
                           length_unit=length_unit, min_distance=min_distance,
                           require_energy=not no_labels, require_forces=not no_labels)
    except UnitError as exc:
        _fail(UqpotError(str(exc)))
    problems = check_files(files, opts)
    for p in problems:
        click.echo(f"error: {p}", err=True)
    if problems:
        click.echo(f"error: {len(problems)} problem(s) in {len({p.path for p in problems})} file(s)", err=True)
        sys.exit(EXIT_USER_ERROR)
    click.echo(f"{len(files)} file(s) valid")


@data.group("fetch")
def fetch():
    """Download the paper's published data sets (verified before anything is extracted)."""


@fetch.command("rmd17")
@click.option("--dest", type=click.Path(path_type=Path), default=Path("data"), show_default=True,
              help="folder for rmd17.tar.bz2 and the extracted rmd17/.")
@click.option("--url", default=None, help="download link (default: the figshare file of DOI 10.6084/m9.figshare.12672038).")
@click.option("--archive", type=click.Path(path_type=Path), default=None,
              help="an rmd17.tar.bz2 downloaded by hand (no network needed).")
@click.option("--sha256", default=None, help="expected SHA-256 (or its first hex digits) of the archive; 'none' skips it.")
@click.option("--molecule", "molecules", multiple=True,
              help="also write this molecule's splits as uqpot files (data.extxyz + index files); repeatable.")
@click.option("--split", "splits", type=click.IntRange(1, 5), multiple=True, help="splits to write (default: 1-5).")
@click.option("--val-fraction", default=0.2, show_default=True, help="share of each training split held out for validation.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="seed of the validation hold-out.")
@click.option("--no-progress", is_flag=True)
def fetch_rmd17_cmd(dest, url, archive, sha256, molecules, splits, val_fraction, seed, no_progress):
    """rMD17: download, verify (size, SHA-256, every bz2 block, expected members) and extract; official splits."""
    from ..data.sets.rmd17 import RMD17_SHA256, RMD17_URL
    from ..data.sets.rmd17_fetch import fetch_rmd17

    expected = RMD17_SHA256 if sha256 is None else (None if sha256.lower() == "none" else sha256)
    try:
        res = fetch_rmd17(dest, url=url or RMD17_URL, archive=archive, sha256=expected, molecules=molecules,
                          splits=splits or None, val_fraction=val_fraction, seed=seed, progress=not no_progress,
                          console=_console())
    except UqpotError as exc:
        _fail(exc)
    what = "downloaded and extracted" if res.downloaded else "extracted" if res.extracted else "already present"
    click.echo(f"rMD17 {what} in {res.root}: {len(res.molecules)} molecule(s) ({', '.join(res.molecules)}); "
               f"archive SHA-256 {res.sha256}")
    for p in res.written:
        if p.name == "data.extxyz":
            click.echo(f"wrote {p.parent}/ (data.extxyz, train.idx, val.idx, test.idx, split.json)")


def _oracle_options(pairs, flag: str = "--oracle-option") -> dict:
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UqpotError(f"{flag} {pair!r}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


@data.group("build")
def build():
    """Build the paper's data sets with a reference method (every label cached in a store: resumable)."""


@build.command("ammonia")
@click.option("--out", type=click.Path(path_type=Path), default=Path("data/ammonia"), show_default=True)
@click.option("--store", type=click.Path(path_type=Path), default=None, help="label store (default: OUT/labels.db).")
@click.option("--executor", type=click.Choice(["none", "local"]), default="none", show_default=True,
              help="where the labelling batches run (local: a Dask cluster on this machine).")
@click.option("--oracle", default="pyscf:bp86-d3bj/def2-svp", show_default=True,
              help="reference method: pyscf:<preset>, pyscf, tblite, ase (see help(uqpot.oracle)).")
@click.option("--oracle-option", "oracle_options", multiple=True, help="KEY=VALUE option of the oracle; repeatable.")
@click.option("--quick", is_flag=True, help="a small set (10 training geometries, test bins up to 10 kcal/mol).")
@click.option("--n-train", type=int, default=None, help="training geometries (default 78, the paper's).")
@click.option("--test-max", type=float, default=None, help="test bins up to this energy, kcal/mol (default 100).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="an integer in [0, 2**32).")
@click.option("--no-progress", is_flag=True)
def build_ammonia_cmd(out, store, executor, oracle, oracle_options, quick, n_train, test_max, seed, no_progress):
    """NH3 like the paper: DFT minimum, normal modes, 78 training geometries 0-5 kcal/mol and 200 test
    geometries (2 per 1 kcal/mol bin, 0-100 kcal/mol); energies in the files relative to the minimum."""
    from ..data.sets import format_histogram
    from ..systems.ammonia.build import AmmoniaConfig, build_ammonia
    from ..oracle import get_oracle

    try:
        overrides = {"seed": seed}
        if n_train is not None:
            overrides["n_train"] = n_train
        if test_max is not None:
            overrides["test_e_max"] = test_max
        cfg = AmmoniaConfig.quick(**overrides) if quick else AmmoniaConfig(**overrides)
        the_oracle = get_oracle(oracle, **_oracle_options(oracle_options))
        summary = build_ammonia(out, store=store, oracle=the_oracle, config=cfg, executor=executor,
                                progress=not no_progress, console=_console())
    except UqpotError as exc:
        _fail(exc)
    lab, tr, te = summary["labels"], summary["train"], summary["test"]
    click.echo(f"ammonia ({summary['method']}): minimum {summary['reference_energy_kcal_per_mol']:.4f} kcal/mol; "
               f"frequencies {', '.join(f'{f:.0f}' for f in summary['frequencies_cm-1'])} cm^-1")
    click.echo(f"train: {tr['n']} geometries, {tr['energy_min']:.2f}-{tr['energy_max']:.2f} kcal/mol above the minimum")
    click.echo(format_histogram(tr["histogram"]))
    click.echo(f"test: {te['n']} geometries from {te['candidates_labelled']} candidates, kinds {te['kinds']}"
               + (f"; bins left open: {te['missing_bins']}" if te["missing_bins"] else ""))
    click.echo(format_histogram(te["histogram"], width=20))
    click.echo(f"oracle calls {lab['oracle_calls']}, labels from the store {lab['from_store']}, failed "
               f"{lab['failed']}; {summary['timings_seconds']['total']:.1f} s; wrote {Path(out) / 'train.extxyz'}, "
               f"{Path(out) / 'test.extxyz'}, {Path(out) / 'summary.json'}")


@build.command("silica")
@click.option("--atoms", type=int, default=None, help="atoms in the cell, a multiple of 3 (default 192; the paper: 699).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("data/silica"), show_default=True)
@click.option("--store", type=click.Path(path_type=Path), default=None, help="label store (default: OUT/labels.db).")
@click.option("--quick", is_flag=True, help="a tiny trial build (24 atoms, MD 25,000x compressed, 2% of the frames).")
@click.option("--time-compression", type=float, default=None,
              help="the one factor by which the SI's MD is compressed in time (default 500).")
@click.option("--time-scale", type=float, default=None,
              help="multiplies every MD duration of the default build (time compression 500 / SCALE).")
@click.option("--frame-scale", type=float, default=None,
              help="multiplies the paper's frame count of every condition (default 1: the 1590 frames of Table S1).")
@click.option("--test-bins", type=int, default=None, help="energy bins of the test set (2 structures each; default 201).")
@click.option("--test-directions", type=click.Choice(["adversarial", "random"]), default="adversarial",
              show_default=True, help="the test set's displacement directions: trial adversarial runs (the SI's) "
                                      "or random.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="an integer in [0, 2**32).")
@click.option("--no-progress", is_flag=True)
def build_silica_cmd(atoms, out, store, quick, time_compression, time_scale, frame_scale, test_bins,
                     test_directions, seed, no_progress):
    """Amorphous SiO2: melt-quench and the MD conditions of SI Table S1 (LAMMPS, BKS + wall) with the SI's
    frame counts, the MD compressed in time by one factor; frames labelled with the BKS oracle; a test set
    of 402 high-energy, high-force structures (2 per energy bin) along trial adversarial directions.  Resumable."""
    from ..data.sets import format_histogram
    from ..systems.silica.build import SilicaConfig, build_silica, format_table
    from ..systems.silica.trial_attack import TrialAttack, trial_directions

    try:
        overrides = {"seed": seed}
        if atoms is not None:
            overrides["atoms"] = atoms
        if time_scale is not None:
            if not time_scale > 0:
                raise ConfigError(None, f"--time-scale: must be > 0, got {time_scale:g}")
            overrides["time_compression"] = SilicaConfig().time_compression / time_scale
            overrides["glass_time_scale"] = time_scale
        if time_compression is not None:
            overrides["time_compression"] = time_compression
        if frame_scale is not None:
            overrides["frame_scale"] = frame_scale
        if test_bins is not None:
            overrides["test_bins"] = test_bins
        cfg = SilicaConfig.quick(**overrides) if quick else SilicaConfig(**overrides)
        trial = TrialAttack.quick() if quick else TrialAttack()
        directions = trial_directions(trial) if test_directions == "adversarial" else None
        summary = build_silica(out, store=store, config=cfg, progress=not no_progress, console=_console(),
                               directions=directions)
    except UqpotError as exc:
        _fail(exc)
    g, tr, te, lab = summary["glass"], summary["train"], summary["test"], summary["labels"]
    click.echo(f"silica ({summary['method']}): {summary['atoms']} atoms ({summary['composition']['Si']} Si, "
               f"{summary['composition']['O']} O); glass {' x '.join(f'{v:.2f}' for v in g['box_A'])} Å, "
               f"{g['density_g_per_cm3']:.3f} g/cm^3")
    click.echo(format_table(summary))
    click.echo(f"MD: the SI's schedule compressed in time by {summary['time_compression']:g} (durations / "
               f"{summary['time_compression']:g}, rates x {summary['time_compression']:g}); test directions: "
               f"{te['directions']}")
    click.echo(f"train: {tr['n']} frames, up to {tr['energy_max_per_atom']:.2f} kcal/mol/atom above the lowest")
    click.echo(f"test: {te['n']} structures ({te['kinds']}) from {te['candidates_labelled']} candidates, "
               f"{te['bins']} bins of {te['bin_width_kcal_per_mol']:.1f} kcal/mol"
               + (f"; bins left open: {te['missing_bins']}" if te["missing_bins"] else ""))
    click.echo(format_histogram(te["histogram"], width=20))
    click.echo(f"oracle calls {lab['oracle_calls']}, labels from the store {lab['from_store']}, failed "
               f"{lab['failed']}; {summary['timings_seconds']['total']:.1f} s; wrote {Path(out) / 'train.extxyz'}, "
               f"{Path(out) / 'test.extxyz'}, {Path(out) / 'summary.json'}")


