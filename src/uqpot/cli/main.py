"""The ``uqpot`` command line.

Every command shares one error path (:mod:`uqpot.cli.errors`): a user error (bad data, config, model file,
option, an output folder that cannot be written) is one line ``error: <file>: <frame/field/key>: message``
on stderr and exit status 2, with nothing written that could be taken for a result; an internal error says
that it is one and where its traceback was written (exit status 1).

Kept whole (about 400 lines): the commands' declarations (options, help, the one error path); each
command's work lives in the package it belongs to, and ``uqpot data`` is :mod:`uqpot.cli.data`.
"""

from __future__ import annotations

from pathlib import Path

import click

from .errors import EXIT_USER_ERROR, UqpotGroup, fail
from ..core.errors import ConfigError, UqpotError

__all__ = ["cli", "main", "EXIT_USER_ERROR"]

_fail = fail  # the name the commands used before the shared error path


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


@click.group(cls=UqpotGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="uqpot")
def cli():
    """uqpot: how far to trust a neural-network interatomic potential, and how to make it robust."""


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--out", help="output directory (overrides 'out').")
@click.option("--data", "data_path", type=click.Path(path_type=Path), help="structure file (overrides data.path).")
@click.option("--epochs", type=click.IntRange(min=1), help="overrides train.epochs (>= 1).")
@click.option("--device", help="cpu, cuda, cuda:1, or auto (overrides train.device).")
@click.option("--restart", is_flag=True,
              help="remove the files of an earlier run in the output directory and train afresh (needed when its "
                   "config or its data files changed; without it such a directory is refused).")
@click.option("--no-progress", is_flag=True, help="no progress bar.")
def train(config, out, data_path, epochs, device, restart, no_progress):
    """Train a potential from CONFIG.yaml (resumes an interrupted run in the same output directory)."""
    from ..fit.config import RunConfig
    from ..core.config_io import load_config
    from ..fit.run import run_training

    overrides, sources = {}, {}
    for key, option, value in (("out", "--out", out), ("data.path", "--data", data_path),
                               ("train.epochs", "--epochs", epochs), ("train.device", "--device", device)):
        if value is not None:
            overrides[key], sources[key] = (str(value) if isinstance(value, Path) else value), option
    if no_progress:
        overrides["train.progress"] = False
    try:
        cfg = load_config(config, RunConfig, overrides, sources)
        summary = run_training(cfg, console=_console(), config_path=config, restart=restart)
    except ConfigError as exc:
        fail(_blame(exc, config, sources))
    t = summary["training"]
    if t.get("nonfinite_steps"):
        _warn(f"{t['nonfinite_steps']} training step(s) had a non-finite loss and were skipped "
              f"({t.get('rollbacks', 0)} rollback(s)); see {Path(cfg.out) / 'train.log'}")
    best = t["best_epoch"][0] if len(t["best_epoch"]) == 1 else t["best_epoch"]
    click.echo(f"best epoch {best} of {t['epochs_run']} ({t['stopped']}), "
               f"{t['wall_seconds']:.0f} s; model: {summary['model']}")
    for name in ("val", "test"):
        if name in summary:
            m = summary[name]
            stress = f", stress MAE {m['stress_mae']:.4g} kcal/mol/Å³" if m.get("stress_mae") is not None else ""
            click.echo(f"{name}: energy MAE {m['energy_mae']:.4f} kcal/mol, forces MAE {m['forces_mae']:.4f} "
                       f"kcal/mol/Å{stress} ({m['n_structures']} structures)")
    if "test" not in summary:
        click.echo("test: none (the split has no test structures)")


def _blame(exc: ConfigError, config, sources: dict) -> ConfigError:
    """A config error with its source: the command-line option that set the key (``--device``), else the
    config file when the error names no file of its own."""
    if exc.path is not None:
        return exc
    text = str(exc)
    for key, option in sources.items():
        if text.startswith(f"{key}:"):
            return ConfigError(None, f"{option} ({key}):{text[len(key) + 1:]}")
        if f"{option} (" in text:
            return exc
    return ConfigError(config, text)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", default=None,
              help="output directory (default: eval/ beside model.pt, eval_<name>/ beside <name>.pt).")
@click.option("--format", "fmt", default=None,
              help="format of DATA as ase.io names it (extxyz, db, vasp-xml, ...; default: guessed from the name).")
@click.option("--energy-key", default=None, help="info key holding the energy (default: calculator results).")
@click.option("--forces-key", default=None, help="arrays key holding the forces (default: calculator results).")
@click.option("--energy-unit", default="kcal/mol", show_default=True, help="energy unit of DATA.")
@click.option("--length-unit", default="Å", show_default=True, help="length unit of DATA.")
@click.option("--indices", default=None,
              help="evaluate only these structures: an index file, or RUN/split.json:test (a saved split).")
@click.option("--calibration", "calibration_data", type=click.Path(path_type=Path), default=None,
              help="validation structures to fit σ² = aU + b on (default: the fit stored in the model file); UQ "
                   "models only.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default=None, help="cpu, cuda, cuda:1, or auto (default: cpu).")
def evaluate(model, data, out, fmt, energy_key, forces_key, energy_unit, length_unit, indices, calibration_data,
             batch_size, device):
    """Errors of MODEL on DATA (energy/force MAE, RMSE; per-structure CSV) and, for a UQ model, the UQ
    metrics (Spearman, ROC-AUC at the 20th/50th error percentile, miscalibration area, cNLL) and plots."""
    from ..data.io import ReadOptions
    from ..evaluation.evaluate import evaluate as run_eval
    from ..metrics.registry import describe
    from ..metrics.registry import metrics as uq_metrics
    from ..core.units import UnitError

    if out is not None and not str(out).strip():
        raise ConfigError(None, "--out: an output directory is needed (an empty one would write into the working "
                                "directory)")
    out = out or Path(model).parent / ("eval" if Path(model).stem == "model" else f"eval_{Path(model).stem}")
    try:
        opts = ReadOptions(format=fmt, energy_key=energy_key, forces_key=forces_key, energy_unit=energy_unit,
                           length_unit=length_unit)
    except UnitError as exc:
        fail(UqpotError(str(exc)))
    metrics = run_eval(model, data, out, opts, batch_size=batch_size, device=device, indices=indices,
                       calibration_data=calibration_data)
    click.echo(f"{metrics['n_structures']} structures: energy MAE {metrics['energy_mae']:.4f} "
               f"RMSE {metrics['energy_rmse']:.4f} kcal/mol; forces MAE {metrics['forces_mae']:.4f} "
               f"RMSE {metrics['forces_rmse']:.4f} kcal/mol/Å"
               + (f"; stress MAE {metrics['stress_mae']:.4g} kcal/mol/Å³" if metrics.get("stress_mae") is not None
                  else ""))
    if any(m.name in metrics for m in uq_metrics(kind="uq")):
        click.echo(f"{metrics['method']}: {describe(metrics, uq_metrics(kind='uq'))} "
                   f"(calibration fitted on {metrics['calibration_fitted_on']})")
    click.echo(f"wrote {Path(out) / 'metrics.json'} and {Path(out) / 'per_structure.csv'}")
    for w in metrics.get("warnings", []):
        _warn(w)


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
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="default: the run's validation batch size, else 64.")
@click.option("--device", default=None, help="cpu, cuda, cuda:1, or auto (default: the model file's, cpu).")
def wrap(models, method, train_data, val_data, out, options, energy_key, forces_key, energy_unit, length_unit,
         batch_size, device):
    """Put an uncertainty on trained potentials: wrap MODEL with a post-hoc method (fitted on the training
    structures), stack MODEL1 MODEL2 ... into an ensemble, or re-calibrate a UQ model; σ² = aU + b and the
    conformal quantiles are fitted on the validation structures.  The result is a UQ model file for
    evaluate, the ASE calculator, MD and the attack."""
    from ..data.io import ReadOptions
    from ..core.units import UnitError
    from ..fit.wrap import wrap as run_wrap

    from .data import _oracle_options

    try:
        opts = ReadOptions(energy_key=energy_key, forces_key=forces_key, energy_unit=energy_unit,
                           length_unit=length_unit)
    except UnitError as exc:
        fail(UqpotError(str(exc)))
    path, summary = run_wrap(models, method, data=train_data, val=val_data, out=out,
                             options=_oracle_options(options, "--option"), read_options=opts, batch_size=batch_size,
                             device=device)
    cal = summary["calibration"]
    fit = f"fitted on {summary['n_train']} training structures; " if summary["n_train"] else ""
    click.echo(f"{summary['method']}: {fit}calibration σ² = a·U + b with a = {cal['a']:.4g}, b = {cal['b']:.4g} on "
               f"{summary['n_val']} validation structures")
    click.echo(f"wrote {path}")


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--trusted", is_flag=True,
              help="you trust the file's source: MACE model files and SevenNet checkpoints are pickles, and loading "
                   "one runs its code.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="the uqpot model file to write (default: MODEL with suffix .uqpot.pt).")
@click.option("--head", default=None, help="the head of a multi-head MACE model.")
def convert(model, trusted, out, head):
    """Convert a MACE model file (MACE's own training script's output, or a foundation model you downloaded)
    or a SevenNet checkpoint (a file SevenNet wrote, or the name of one that ships inside sevenn, e.g. 7net-0)
    into a uqpot model file, once: then train, wrap, evaluate, MD and the loop take it like any uqpot model."""
    from ..nn import sevennet_file

    if sevennet_file.is_sevennet_source(model):
        if head is not None:
            fail(UqpotError("--head: SevenNet checkpoints have no heads (multi-fidelity ones are not supported)"))
        path, summary = sevennet_file.convert(model, trusted, out)
        click.echo(f"SevenNet model: {len(summary['elements'])} elements, cutoff {summary['cutoff']:g} Å; probe check: "
                   f"energy differs by {summary['probe_energy_diff']:.2g} kcal/mol, forces by "
                   f"{summary['probe_forces_diff']:.2g} kcal/mol/Å")
        click.echo(f"wrote {path}")
        return
    from ..nn.mace_file import convert as run_convert

    path, summary = run_convert(model, trusted, out, head)
    click.echo(f"MACE model: elements {summary['elements']}, cutoff {summary['cutoff']:g} Å, {summary['dtype']}, head "
               f"{summary['head']}; probe check: energy differs by {summary['probe_energy_diff']:.2g} kcal/mol, forces "
               f"by {summary['probe_forces_diff']:.2g} kcal/mol/Å")
    click.echo(f"wrote {path}")


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--out", help="output directory (overrides 'out').")
@click.option("--generations", type=int, help="overrides 'generations' (a longer loop continues a shorter one).")
@click.option("--executor", type=click.Choice(["none", "local"]), default="none", show_default=True,
              help="where oracle labels run: in-process, or a local Dask cluster.")
@click.option("--preset", default="paper", show_default=True,
              help="for a study file: 'paper' runs the file as it is; another of its system's presets (quick, and "
                   "for ammonia medium) runs that preset's file (configs/<system>_<preset>.yaml; quick: a smaller "
                   "PaiNN, shorter training and MD).")
@click.option("--seeds", default=None,
              help="comma-separated replicate seeds (e.g. 0,1,2): the whole loop runs once per seed, in "
                   "OUT/seed<s>, with one shared label store; default: the study file's seeds (or the loop's seed). "
                   "auto[:MAX[:BATCH]] (a study file): start with the study's seeds and add BATCH more (default: as "
                   "many) until every claim of the paper is resolved or MAX seeds (default 4x) have run, with "
                   "O'Brien-Fleming-type alpha spending over the looks (OUT/sequential.json).")
@click.option("--restart", is_flag=True,
              help="start the loop afresh in its output directory: remove the loop's own earlier outputs there "
                   "(config.yaml, run.json, alignment.json, summary.json, loop.log, neb_oracle.json and the gen<g>/ "
                   "folders; for --seeds or a study file, those of every seed) and keep the label store "
                   "(labels.db: every label computed so far is reused, no oracle call is repeated) and a study's "
                   "built data set (OUT/data).  Needed when the config or a data file changed since the loop "
                   "started; without it such a directory is refused.")
@click.option("--no-progress", is_flag=True)
def loop(config, out, generations, executor, preset, seeds, restart, no_progress):
    """Active learning: train → evaluate → MD → attack → label → retrain, for every UQ method; resumable.

    CONFIG is a loop config (data files, oracle, methods, ...) or a study file such as configs/ammonia.yaml
    (whose data set is built first if needed, into OUT/data)."""
    from ..core.config_io import load_yaml
    from ..core.rundir import RunLock, check_out_dir
    from ..loop.active_learning import ActiveLearning
    from ..loop.config import load_loop_config
    from ..loop.replicates import replicates, run_loop, run_replicates
    from ..systems import get_system, preset_path
    from ..studies.reproduce import check_seeds
    from ..studies.sequential import AutoSeeds, planned_seeds, run_sequential
    from ..studies.study import is_study_file, run_study_loop

    if out is not None and not out.strip():
        raise ConfigError(None, "--out: an output directory is needed (an empty one would write into the working "
                                "directory)")
    overrides = {}
    if generations is not None:
        overrides["generations"] = generations
    if no_progress:
        overrides["train.progress"] = False
    ex = None
    try:
        seed_list = check_seeds(seeds)
        if executor != "none":
            from ..core.executor import get_executor

            ex = get_executor(executor)
        if preset != "paper":
            if not is_study_file(config):
                raise ConfigError(config, f"--preset {preset} needs a study file (with 'system' and 'loop')")
            system = str(load_yaml(config)["system"])
            try:
                preset_file = get_system(system).preset_file(preset)
            except ValueError as exc:
                raise ConfigError(config, f"--preset: {exc}") from None
            beside = Path(config).with_name(preset_file)
            config = beside if beside.is_file() else preset_path(system, preset)
        auto = seed_list if isinstance(seed_list, AutoSeeds) else None
        if auto is not None and not is_study_file(config):
            raise ConfigError(config, f"--seeds {auto.text()} needs a study file (with 'system' and 'loop'): its "
                                      "claims decide when to stop")
        if is_study_file(config):
            if auto is not None:
                planned_seeds(config, auto)  # MAX against the study's seeds, before anything is written
            study_out = check_out_dir(Path(out) if out else Path("runs") / Path(config).stem, "--out",
                                      {"config": config})
            with RunLock(study_out, "uqpot loop"):  # one loop per directory
                if auto is not None:
                    study, cfg, _ = run_sequential(config, study_out, auto, ex, _console(), overrides, restart)
                else:
                    study, cfg = run_study_loop(config, study_out, ex, _console(), overrides, seed_list, restart)
            per_seed, where = study["per_seed"], Path(study_out)
        else:
            if out is not None:
                overrides["out"] = str(out)
            cfg = load_loop_config(config, overrides)
            with RunLock(check_out_dir(cfg.out, "out", {"config": config}), "uqpot loop"):
                if seed_list:
                    per_seed = run_replicates(replicates(cfg, seed_list), cfg.out, ex, _console(),
                                              restart=restart)["per_seed"]
                else:
                    per_seed = {str(cfg.seed): run_loop(ActiveLearning(cfg, console=_console(), executor=ex,
                                                                       restart=restart))}
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


class SystemChoice(click.Choice):
    """The registered systems (:mod:`uqpot.systems`), read when the command line is parsed or its help shown
    (importing the registry, and with it torch, only then)."""

    def __init__(self):
        super().__init__([])

    @property
    def choices(self):
        from ..systems import system_names

        return system_names()

    @choices.setter
    def choices(self, value):
        pass


@cli.command()
@click.argument("system", type=SystemChoice())
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
                   "llpr, shallow_ensemble, partial_ensemble, descriptor_distance).")
@click.option("--seeds", default=None,
              help="comma-separated replicate seeds (e.g. 0,1,2): the data is built once, and training, attacks "
                   "and MD run once per seed; every number is reported as a mean with its 95% interval. "
                   "Default: the preset's seeds. auto[:MAX[:BATCH]] (ammonia, silica): start with the preset's seeds "
                   "and add BATCH more (default: as many) until every claim of the paper is resolved or MAX seeds "
                   "(default 4x the preset's) have run; the looks' verdicts use O'Brien-Fleming-type alpha spending, "
                   "and report.html says where it stopped and why (OUT/sequential.json). With --dry-run: the plan "
                   "for MAX seeds, the upper bound.")
@click.option("--samplers", default=None,
              help="ammonia/silica: comma-separated samplers (adversarial, md, biased_md): the study runs once per "
                   "sampler at the same oracle budget per generation, and report.html compares them.")
@click.option("--dry-run", is_flag=True,
              help="print the plan (jobs, trajectories, MD steps, attack iterations, oracle calls) and its estimated "
                   "time on this machine, then stop: nothing runs and nothing is written.")
def reproduce(system, preset, executor, out, molecules, splits, local_data, methods, seeds, samplers, dry_run):
    """Run one of the paper's studies end to end and write report.html."""
    from ..studies.reproduce import reproduce as run

    if dry_run:
        from ..studies.reproduce import dry_run as plan

        try:
            click.echo(plan(system, preset, executor, out, molecules=molecules.split(",") if molecules else None,
                            splits=[int(s) for s in splits.split(",")] if splits else None,
                            methods=methods.split(",") if methods else None,
                            seeds=seeds.split(",") if seeds else None,
                            samplers=samplers.split(",") if samplers else None))
        except UqpotError as exc:
            _fail(exc)
        return
    try:
        path = run(system, preset, executor, out, molecules=molecules, splits=splits, local_data=local_data,
                   methods=methods, seeds=seeds, samplers=samplers, console=_console())
    except UqpotError as exc:
        _fail(exc)
    click.echo(f"wrote {path}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
def report(run_dir):
    """(Re)build report.html, results.json and the tables' CSV files of a run directory."""
    from ..studies.report_dispatch import build_report

    try:
        path = build_report(run_dir)
    except UqpotError as exc:
        _fail(exc)
    click.echo(f"wrote {path}")


from .data import data  # noqa: E402  (the `uqpot data ...` commands)

cli.add_command(data)


def main():
    cli(prog_name="uqpot")


if __name__ == "__main__":
    main()
