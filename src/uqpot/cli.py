"""The ``uqpot`` command line.

Every user-facing error (bad data, bad config, bad model file) is printed as one line naming the file (and
frame/field) and exits with status 2; nothing is written before inputs have been validated.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import ConfigError, DataErrors, UqpotError

EXIT_USER_ERROR = 2


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _fail(exc: UqpotError) -> None:
    if isinstance(exc, DataErrors) and len(exc.problems) > 1:
        for p in exc.problems[:20]:
            click.echo(f"error: {p}", err=True)
        if len(exc.problems) > 20:
            click.echo(f"error: ... and {len(exc.problems) - 20} more problem(s)", err=True)
    else:
        click.echo(f"error: {exc}", err=True)
    sys.exit(EXIT_USER_ERROR)


@click.group()
@click.version_option(package_name="uqpot")
def cli():
    """uqpot: how far to trust a neural-network interatomic potential, and how to make it robust."""


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="output directory (overrides 'out').")
@click.option("--data", "data_path", type=click.Path(path_type=Path), help="structure file (overrides data.path).")
@click.option("--epochs", type=int, help="overrides train.epochs.")
@click.option("--device", help="cpu, cuda, cuda:1, or auto (overrides train.device).")
@click.option("--no-progress", is_flag=True, help="no progress bar.")
def train(config, out, data_path, epochs, device, no_progress):
    """Train a potential from CONFIG.yaml (resumes an interrupted run in the same output directory)."""
    from .config import RunConfig, load_config
    from .train.run import run_training

    overrides = {}
    if out is not None:
        overrides["out"] = str(out)
    if data_path is not None:
        overrides["data.path"] = str(data_path)
    if epochs is not None:
        overrides["train.epochs"] = epochs
    if device is not None:
        overrides["train.device"] = device
    if no_progress:
        overrides["train.progress"] = False
    try:
        cfg = load_config(config, RunConfig, overrides)
        summary = run_training(cfg, console=_console())
    except ConfigError as exc:
        _fail(exc if exc.path is not None else ConfigError(config, str(exc)))
    except UqpotError as exc:
        _fail(exc)
    t = summary["training"]
    best = t["best_epoch"][0] if len(t["best_epoch"]) == 1 else t["best_epoch"]
    click.echo(f"best epoch {best} of {t['epochs_run']} ({t['stopped']}), "
               f"{t['wall_seconds']:.0f} s; model: {summary['model']}")
    for name in ("val", "test"):
        if name in summary:
            m = summary[name]
            click.echo(f"{name}: energy MAE {m['energy_mae']:.4f} kcal/mol, forces MAE {m['forces_mae']:.4f} "
                       f"kcal/mol/Å ({m['n_structures']} structures)")


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="output directory (default: eval/ beside model.pt, eval_<name>/ beside <name>.pt).")
@click.option("--energy-key", default=None, help="info key holding the energy (default: calculator results).")
@click.option("--forces-key", default=None, help="arrays key holding the forces (default: calculator results).")
@click.option("--energy-unit", default="kcal/mol", show_default=True, help="energy unit of DATA.")
@click.option("--length-unit", default="Å", show_default=True, help="length unit of DATA.")
@click.option("--indices", default=None,
              help="evaluate only these structures: an index file, or RUN/split.json:test (a saved split).")
@click.option("--calibration", "calibration_data", type=click.Path(path_type=Path), default=None,
              help="validation structures to fit σ² = aU + b on (default: the fit stored in the model file).")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--device", default=None)
def evaluate(model, data, out, energy_key, forces_key, energy_unit, length_unit, indices, calibration_data,
             batch_size, device):
    """Errors of MODEL on DATA (energy/force MAE, RMSE; per-structure CSV) and, for a UQ model, the UQ
    metrics (Spearman, ROC-AUC at the 20th/50th error percentile, miscalibration area, cNLL) and plots."""
    from .data.io import ReadOptions
    from .evaluate import evaluate as run_eval
    from .units import UnitError

    out = out or Path(model).parent / ("eval" if Path(model).stem == "model" else f"eval_{Path(model).stem}")
    try:
        opts = ReadOptions(energy_key=energy_key, forces_key=forces_key, energy_unit=energy_unit,
                           length_unit=length_unit)
        metrics = run_eval(model, data, out, opts, batch_size=batch_size, device=device, indices=indices,
                           calibration_data=calibration_data)
    except UnitError as exc:
        _fail(UqpotError(str(exc)))
    except UqpotError as exc:
        _fail(exc)
    click.echo(f"{metrics['n_structures']} structures: energy MAE {metrics['energy_mae']:.4f} "
               f"RMSE {metrics['energy_rmse']:.4f} kcal/mol; forces MAE {metrics['forces_mae']:.4f} "
               f"RMSE {metrics['forces_rmse']:.4f} kcal/mol/Å")
    if "spearman" in metrics:
        click.echo(f"{metrics['method']}: Spearman {metrics['spearman']:.3f}, ROC-AUC {metrics['roc_auc_p20']:.3f} "
                   f"(p20) {metrics['roc_auc_p50']:.3f} (p50), miscalibration area "
                   f"{metrics['miscalibration_area']:.3f}, cNLL {metrics['cnll']:.3f} "
                   f"(calibration fitted on {metrics['calibration_fitted_on']})")
    click.echo(f"wrote {Path(out) / 'metrics.json'} and {Path(out) / 'per_structure.csv'}")


@cli.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--method", required=True,
              help="a post-hoc UQ method (gmm, llpr, or any registered one), 'ensemble' (of several MODELS) or "
                   "'calibrate' (re-fit the calibration of a UQ model).")
@click.option("--data", "train_data", type=click.Path(path_type=Path), default=None,
              help="training structures for the post-hoc fit (default: the run directory's, when MODEL was "
                   "written by uqpot train).")
@click.option("--val", "val_data", type=click.Path(path_type=Path), default=None,
              help="validation structures to calibrate on (default: the run directory's).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="the UQ model file to write (default: <model>_<method>.pt beside MODEL).")
@click.option("--option", "options", multiple=True, help="KEY=VALUE option of the method (as in the config's uq "
                                                         "section); repeatable.")
@click.option("--energy-key", default=None, help="info key holding the energy of --data/--val.")
@click.option("--forces-key", default=None, help="arrays key holding the forces of --data/--val.")
@click.option("--energy-unit", default="kcal/mol", show_default=True, help="energy unit of --data/--val.")
@click.option("--length-unit", default="Å", show_default=True, help="length unit of --data/--val.")
@click.option("--batch-size", type=int, default=None, help="default: the run's validation batch size, else 64.")
@click.option("--device", default=None)
def wrap(models, method, train_data, val_data, out, options, energy_key, forces_key, energy_unit, length_unit,
         batch_size, device):
    """Put an uncertainty on trained potentials: wrap MODEL with a post-hoc method (fitted on the training
    structures), stack MODEL1 MODEL2 ... into an ensemble, or re-calibrate a UQ model; σ² = aU + b and the
    conformal quantiles are fitted on the validation structures.  The result is a UQ model file for
    evaluate, the ASE calculator, MD and the attack."""
    from .data.io import ReadOptions
    from .units import UnitError
    from .wrap import wrap as run_wrap

    try:
        opts = ReadOptions(energy_key=energy_key, forces_key=forces_key, energy_unit=energy_unit,
                           length_unit=length_unit)
        path, summary = run_wrap(models, method, data=train_data, val=val_data, out=out,
                                 options=_oracle_options(options, "--option"), read_options=opts, batch_size=batch_size,
                                 device=device)
    except UnitError as exc:
        _fail(UqpotError(str(exc)))
    except UqpotError as exc:
        _fail(exc)
    cal = summary["calibration"]
    fit = f"fitted on {summary['n_train']} training structures; " if summary["n_train"] else ""
    click.echo(f"{summary['method']}: {fit}calibration σ² = a·U + b with a = {cal['a']:.4g}, b = {cal['b']:.4g} on "
               f"{summary['n_val']} validation structures")
    click.echo(f"wrote {path}")


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="output directory (overrides 'out').")
@click.option("--generations", type=int, help="overrides 'generations' (a longer loop continues a shorter one).")
@click.option("--executor", type=click.Choice(["none", "local"]), default="none", show_default=True,
              help="where oracle labels run: in-process, or a local Dask cluster.")
@click.option("--preset", type=click.Choice(["paper", "quick"]), default="paper", show_default=True,
              help="for a study file: 'paper' runs the file as it is; 'quick' runs its system's quick preset "
                   "(configs/<system>_quick.yaml: a smaller PaiNN, shorter training and MD).")
@click.option("--seeds", default=None,
              help="comma-separated replicate seeds (e.g. 0,1,2): the whole loop runs once per seed, in "
                   "OUT/seed<s>, with one shared label store; default: the study file's seeds (or the loop's seed).")
@click.option("--no-progress", is_flag=True)
def loop(config, out, generations, executor, preset, seeds, no_progress):
    """Active learning: train → evaluate → MD → attack → label → retrain, for every UQ method; resumable.

    CONFIG is a loop config (data files, oracle, methods, ...) or a study file such as configs/ammonia.yaml
    (whose data set is built first if needed, into OUT/data)."""
    from .config import load_yaml
    from .workflow.active_learning import ActiveLearning, load_loop_config, replicates, run_replicates
    from .workflow.reproduce import check_seeds, preset_path
    from .workflow.studies import is_study_file, run_study_loop

    overrides = {}
    if generations is not None:
        overrides["generations"] = generations
    if no_progress:
        overrides["train.progress"] = False
    ex = None
    try:
        seed_list = check_seeds(seeds.split(",")) if seeds else None
        if executor != "none":
            from .executor import get_executor

            ex = get_executor(executor)
        if preset == "quick":
            if not is_study_file(config):
                raise ConfigError(config, "--preset quick needs a study file (with 'system' and 'loop')")
            system = str(load_yaml(config)["system"])
            beside = Path(config).with_name(f"{system}_quick.yaml")
            config = beside if beside.is_file() else preset_path(system, "quick")
        if is_study_file(config):
            study_out = out or Path("runs") / Path(config).stem
            study, cfg = run_study_loop(config, study_out, ex, _console(), overrides, seed_list)
            per_seed, where = study["per_seed"], Path(study_out)
        else:
            if out is not None:
                overrides["out"] = str(out)
            cfg = load_loop_config(config, overrides)
            if seed_list:
                per_seed = run_replicates(replicates(cfg, seed_list), cfg.out, ex, _console())["per_seed"]
            else:
                per_seed = {str(cfg.seed): ActiveLearning(cfg, console=_console(), executor=ex).run()}
            where = Path(cfg.out)
    except ConfigError as exc:
        _fail(exc if exc.path is not None else ConfigError(config, str(exc)))
    except UqpotError as exc:
        _fail(exc)
    finally:
        if ex is not None:
            ex.close()
    for seed, summary in per_seed.items():
        for g, gsum in summary["generations"].items():
            for method, rec in gsum.items():
                t = rec["test"]
                added = rec.get("label", {}).get("n_added") if rec.get("label") else None
                click.echo(f"seed {seed} gen {g} {method:10s} train {rec['n_train']:4d}  test F MAE "
                           f"{t['forces_mae']:.3f}  Spearman {t['spearman']:.3f}  AUC {t['roc_auc_p20']:.3f}"
                           + (f"  added {added}" if added is not None else ""))
    click.echo(f"summary: {where / 'summary.json'}")


@cli.command()
@click.argument("system", type=click.Choice(["ammonia", "rmd17", "silica"]))
@click.option("--preset", default="quick", show_default=True,
              help="quick (a 2-core laptop), paper (the SI's settings), or a YAML file of the same shape.")
@click.option("--executor", type=click.Choice(["local", "slurm", "none"]), default="local", show_default=True,
              help="local: a Dask LocalCluster sized to this machine; slurm: dask-jobqueue; none: in-process.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="output directory.")
@click.option("--molecules", default=None, help="rmd17: comma-separated molecules (e.g. ethanol,aspirin).")
@click.option("--splits", default=None, help="rmd17: comma-separated split numbers (1-5).")
@click.option("--data", "local_data", type=click.Path(path_type=Path), default=None,
              help="rmd17: a local structure file of one molecule instead of the fetched archive "
                   "(random splits, seeded by the split number).")
@click.option("--methods", default=None,
              help="comma-separated UQ methods instead of the preset's (ensemble, mve, evidential, gmm, "
                   "llpr, shallow_ensemble).")
@click.option("--seeds", default=None,
              help="comma-separated replicate seeds (e.g. 0,1,2): the data is built once, and training, attacks "
                   "and MD run once per seed; every number is reported as a mean with its 95% interval. "
                   "Default: the preset's seeds.")
def reproduce(system, preset, executor, out, molecules, splits, local_data, methods, seeds):
    """Run one of the paper's studies end to end and write report.html."""
    from .workflow.reproduce import reproduce as run

    try:
        path = run(system, preset, executor, out,
                   molecules=molecules.split(",") if molecules else None,
                   splits=[int(s) for s in splits.split(",")] if splits else None,
                   local_data=local_data, methods=methods.split(",") if methods else None,
                   seeds=seeds.split(",") if seeds else None, console=_console())
    except UqpotError as exc:
        _fail(exc)
    click.echo(f"wrote {path}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
def report(run_dir):
    """(Re)build report.html, results.json and the tables' CSV files of a run directory."""
    from .workflow.report_dispatch import build_report

    try:
        path = build_report(run_dir)
    except UqpotError as exc:
        _fail(exc)
    click.echo(f"wrote {path}")


@cli.group()
def data():
    """Structure files: check them; fetch or build the paper's data sets (rMD17, ammonia, silica)."""


@data.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--energy-key", default=None)
@click.option("--forces-key", default=None)
@click.option("--energy-unit", default="kcal/mol", show_default=True)
@click.option("--length-unit", default="Å", show_default=True)
@click.option("--min-distance", default=0.5, show_default=True, help="minimum interatomic distance (Å).")
@click.option("--no-labels", is_flag=True, help="structures without energy/forces are valid.")
def check(files, energy_key, forces_key, energy_unit, length_unit, min_distance, no_labels):
    """Validate structure files; one line per problem (file, frame, field); exit 0 only if all are valid."""
    from .data.io import ReadOptions, check_files
    from .units import UnitError

    try:
        opts = ReadOptions(energy_key=energy_key, forces_key=forces_key, energy_unit=energy_unit,
                           length_unit=length_unit, min_distance=min_distance,
                           require_energy=not no_labels, require_forces=not no_labels)
    except UnitError as exc:
        _fail(UqpotError(str(exc)))
    problems = check_files(files, opts)
    for p in problems:
        click.echo(str(p))
    if problems:
        click.echo(f"{len(problems)} problem(s) in {len({p.path for p in problems})} file(s)", err=True)
        sys.exit(1)
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
@click.option("--seed", default=0, show_default=True, help="seed of the validation hold-out.")
@click.option("--no-progress", is_flag=True)
def fetch_rmd17_cmd(dest, url, archive, sha256, molecules, splits, val_fraction, seed, no_progress):
    """rMD17: download, verify (size, SHA-256, every bz2 block, expected members) and extract; official splits."""
    from .data.sets.rmd17 import RMD17_SHA256, RMD17_URL, fetch_rmd17

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
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-progress", is_flag=True)
def build_ammonia_cmd(out, store, executor, oracle, oracle_options, quick, n_train, test_max, seed, no_progress):
    """NH3 like the paper: DFT minimum, normal modes, 78 training geometries 0-5 kcal/mol and 200 test
    geometries (2 per 1 kcal/mol bin, 0-100 kcal/mol); energies in the files relative to the minimum."""
    from .data.sets import format_histogram
    from .data.sets.ammonia import AmmoniaConfig, build_ammonia
    from .oracle import get_oracle

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
@click.option("--quick", is_flag=True, help="a tiny trial build (24 atoms, MD 50x shorter, 2 frames per condition).")
@click.option("--time-scale", type=float, default=None, help="multiplies every MD duration.")
@click.option("--test-bins", type=int, default=None, help="energy bins of the test set (2 structures each; default 50).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-progress", is_flag=True)
def build_silica_cmd(atoms, out, store, quick, time_scale, test_bins, seed, no_progress):
    """Amorphous SiO2: melt-quench and the MD conditions of SI Table S1 (LAMMPS, BKS + wall), frames labelled
    with the BKS oracle; a test set of high-energy, high-force structures.  Resumable."""
    from .data.sets import format_histogram
    from .data.sets.silica import SilicaConfig, build_silica, format_table

    try:
        overrides = {"seed": seed}
        if atoms is not None:
            overrides["atoms"] = atoms
        if time_scale is not None:
            overrides["time_scale"] = time_scale
        if test_bins is not None:
            overrides["test_bins"] = test_bins
        cfg = SilicaConfig.quick(**overrides) if quick else SilicaConfig(**overrides)
        summary = build_silica(out, store=store, config=cfg, progress=not no_progress, console=_console())
    except UqpotError as exc:
        _fail(exc)
    g, tr, te, lab = summary["glass"], summary["train"], summary["test"], summary["labels"]
    click.echo(f"silica ({summary['method']}): {summary['atoms']} atoms ({summary['composition']['Si']} Si, "
               f"{summary['composition']['O']} O); glass {' x '.join(f'{v:.2f}' for v in g['box_A'])} Å, "
               f"{g['density_g_per_cm3']:.3f} g/cm^3")
    click.echo(format_table(summary))
    click.echo(f"train: {tr['n']} frames, up to {tr['energy_max_per_atom']:.2f} kcal/mol/atom above the lowest")
    click.echo(f"test: {te['n']} structures ({te['kinds']}) from {te['candidates_labelled']} candidates, "
               f"{te['bins']} bins of {te['bin_width_kcal_per_mol']:.1f} kcal/mol"
               + (f"; bins left open: {te['missing_bins']}" if te["missing_bins"] else ""))
    click.echo(format_histogram(te["histogram"], width=20))
    click.echo(f"oracle calls {lab['oracle_calls']}, labels from the store {lab['from_store']}, failed "
               f"{lab['failed']}; {summary['timings_seconds']['total']:.1f} s; wrote {Path(out) / 'train.extxyz'}, "
               f"{Path(out) / 'test.extxyz'}, {Path(out) / 'summary.json'}")


def main():
    cli(prog_name="uqpot")


if __name__ == "__main__":
    main()
