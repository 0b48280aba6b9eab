"""The plan of ``uqpot reproduce rmd17 --dry-run`` (a grid of trainings): see :mod:`uqpot.studies.plan`.

One job per (molecule, split, seed, method); the post-hoc methods (and ``none``) of a (molecule, split,
seed) wrap one shared plain network.  The official splits: 1000 training frames of which ``val_fraction``
validate (800 / 200), 1000 test frames.  A molecule's step costs the measured ethanol step of the method
times the plain network's step at the molecule's size over ethanol's (:data:`~uqpot.studies.plan_costs.
RMD17_SIZE_STEP_S`, interpolated in atoms); rMD17 runs no MD, attack or oracle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import plan_costs as C
from ..systems import get_system
from .plan import Part, Plan, _n, makespan, step_cost, training_s

#: atoms per rMD17 molecule (the npz files' ``nuclear_charges``)
RMD17_ATOMS = {"aspirin": 21, "azobenzene": 24, "benzene": 12, "ethanol": 9, "malonaldehyde": 9,
               "naphthalene": 18, "paracetamol": 20, "salicylic": 16, "toluene": 15, "uracil": 12}
OFFICIAL_TRAIN, OFFICIAL_TEST = 1000, 1000


def size_scale(atoms: int) -> float:
    """A plain step at ``atoms`` over one at ethanol's 9 (measured sizes, linear in between and beyond)."""
    sizes = sorted(C.RMD17_SIZE_STEP_S)
    steps = [C.RMD17_SIZE_STEP_S[k] for k in sizes]
    if atoms > sizes[-1]:
        slope = (steps[-1] - steps[-2]) / (sizes[-1] - sizes[-2])
        return (steps[-1] + slope * (atoms - sizes[-1])) / C.RMD17_SIZE_STEP_S[9]
    return float(np.interp(atoms, sizes, steps)) / C.RMD17_SIZE_STEP_S[9]


def rmd17_plan(study, preset, seeds=None, methods=None, molecules=None, splits=None, workers: int = 1) -> Plan:
    """The plan of the rMD17 study ``study`` (a loaded :class:`~uqpot.studies.reproduce.RMD17Study`)."""
    from ..data.sets.rmd17 import canonical_molecule
    from ..fit.grid import shares_backbone

    seeds = list(seeds or study.seeds)
    methods = list(methods or study.methods)
    molecules = [canonical_molecule(m) for m in (molecules or study.molecules)]
    splits = list(splits or study.splits)
    tr, F, sys_ = study.train, study.model.features, get_system(study.system)
    n_val = int(round(OFFICIAL_TRAIN * study.val_fraction))
    n_tr = OFFICIAL_TRAIN - n_val
    plan = Plan(f"uqpot reproduce {study.system} --preset {preset} --dry-run: the plan (nothing runs, nothing is written)",
                workers=workers)
    jobs, steps, compiled, trainings, t_train, t_test = [], 0, 0, 0, 0.0, 0.0
    for mol in molecules:
        atoms = RMD17_ATOMS.get(mol)
        if atoms is None:
            plan.notes.append(f"{mol}: size unknown, counted as ethanol's")
            atoms = 9
        scale = size_scale(atoms)
        for _ in range(len(splits) * len(seeds)):
            trained = [m for m in methods if not shares_backbone(m, study.uq.get(m))]
            if len(trained) < len(methods):  # the post-hoc methods' one plain network
                trained.append("none")
            for m in trained:
                M = int(study.uq.get(m, {}).get("members", 5 if m == "ensemble" else 1))
                t, k, comp = training_s(m, F, M, tr.batch_size, n_tr, n_val, tr.epochs, atoms, sys_, tr.compile,
                                        scale)
                test = OFFICIAL_TEST * step_cost(C.EVAL_S, sys_.workload, m, F, M, scale)
                jobs.append(t + test)
                t_train, t_test, steps, compiled, trainings = t_train + t, t_test + test, steps + k, compiled + comp, \
                    trainings + 1
    n_jobs = len(molecules) * len(splits) * len(seeds) * len(methods)
    fetched = any((Path(study.data_dir) / "npz_data").glob("*.npz"))
    plan.lines = [
        f"preset {preset}; molecules {', '.join(molecules)}; splits {', '.join(map(str, splits))}; seeds "
        f"{', '.join(map(str, seeds))}; methods {', '.join(methods)}",
        f"jobs: {n_jobs} (molecule x split x seed x method), {trainings} trainings (post-hoc methods share one "
        f"plain network per molecule, split and seed); {n_tr} training / {n_val} validation / {OFFICIAL_TEST} test "
        f"frames each",
        f"training: {_n(steps)} steps at most ({tr.epochs} epochs, batch {tr.batch_size}, {F} features); compiled: "
        f"{compiled} of {trainings} trainings",
        "trajectories: 0, MD steps: 0, attack iterations: 0, oracle calls: 0 (rMD17 reads its published labels)",
        "data: " + (f"rMD17 already in {study.data_dir}" if fetched else
                    f"the rMD17 archive is fetched into {study.data_dir} first (download time not estimated)"),
    ]
    plan.parts = [Part("training", f"{trainings} trainings, validation every epoch", t_train),
                  Part("test", f"{trainings} x {OFFICIAL_TEST} structures", t_test)]
    plan.wall_s = makespan(jobs, workers)
    return plan
