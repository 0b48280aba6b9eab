"""The per-step constants behind ``uqpot reproduce ... --dry-run`` (:mod:`uqpot.studies.plan`), in one place.

Source of every figure unless said otherwise: ``benchmarks/plan_costs.py`` on this project's 2-core CPU
(:data:`MEASURED_ON`): one PyTorch thread (a study's jobs each run with ``threads: 1``, one per worker),
eager, float32, random weights (speed does not depend on them) on structures of the studies' sizes.  The
machine was shared while they were measured (load average in :data:`MEASURED_ON`): on a quiet machine the
figures, and so the estimates, are lower.  Remeasure with ``python benchmarks/plan_costs.py`` and copy its
JSON here.

Each workload (:data:`WORKLOADS`) is a preset's model and sizes; a plan scales from the workload of its
system nearest in width (:func:`nearest`).  Per workload and method kind (``none`` = the plain PaiNN, which
the post-hoc methods train; ``ensemble`` with the workload's members):

* :data:`TRAIN_STEP_S`: seconds per training step (the trainer's batch, loss, backward, optimiser step);
* :data:`EVAL_S`: seconds per structure of energy, forces and U without a graph (validation, test);
* :data:`MD_STEP_S`: seconds per step of the batched NVT engine with the workload's replicas;
* :data:`ATTACK_S`: seconds per structure and iteration of the adversarial attack;
* :data:`NEB_STEP_S`: seconds per band step (11 images) and per relaxation step of the NH3 NEB.
"""

from __future__ import annotations

MEASURED_ON = "on the 2-core CPU while shared (load average 4-8 on 2 cores), torch 2.13, 1 thread, eager"

#: the measured workloads: a preset's model (features, members), batch, MD replicas, attack seeds, atoms
WORKLOADS = {
    "ammonia_quick": dict(system="ammonia", features=64, members=5, batch=16, replicas=40, seeds=20, atoms=4),
    "ammonia_paper": dict(system="ammonia", features=128, members=5, batch=64, replicas=400, seeds=20, atoms=4),
    "silica_quick": dict(system="silica", features=32, members=3, batch=8, replicas=4, seeds=10, atoms=48),
    "silica_paper": dict(system="silica", features=128, members=3, batch=3, replicas=10, seeds=10, atoms=699),
    "rmd17_quick": dict(system="rmd17", features=128, members=5, batch=16, replicas=0, seeds=0, atoms=9),
    "rmd17_paper": dict(system="rmd17", features=128, members=5, batch=64, replicas=0, seeds=0, atoms=9),
}

TRAIN_STEP_S = {
    "ammonia_quick": {"none": 0.0473, "ensemble": 0.1174, "mve": 0.0448, "evidential": 0.0447},
    "ammonia_paper": {"none": 0.157, "ensemble": 1.092, "mve": 0.235, "evidential": 0.217},
    "silica_quick": {"none": 0.412, "ensemble": 1.186, "mve": 0.457, "evidential": 0.522},
    "silica_paper": {"none": 19.2, "ensemble": 73.3, "mve": 23.9, "evidential": 18.0},
    "rmd17_quick": {"none": 0.163, "ensemble": 0.818, "mve": 0.236, "evidential": 0.179},
    "rmd17_paper": {"none": 0.507, "ensemble": 5.09, "mve": 0.661, "evidential": 0.676},
}
EVAL_S = {
    "ammonia_quick": {"none": 0.00040, "ensemble": 0.00105},
    "ammonia_paper": {"none": 0.00037, "ensemble": 0.00252},
    "silica_quick": {"none": 0.0164, "ensemble": 0.0574},
    "silica_paper": {"none": 1.086, "ensemble": 3.067},
    "rmd17_quick": {"none": 0.00130, "ensemble": 0.0112},
    "rmd17_paper": {"none": 0.00130, "ensemble": 0.0135},
}
#: silica_paper's ensemble: not measured (its 10 replicas of 699 atoms need over 20 GB); the plain figure
#: times the 48-atom workload's ensemble/plain ratio (0.286 / 0.119)
MD_STEP_S = {
    "ammonia_quick": {"none": 0.0253, "ensemble": 0.0769},
    "ammonia_paper": {"none": 0.384, "ensemble": 2.472},
    "silica_quick": {"none": 0.119, "ensemble": 0.286},
    "silica_paper": {"none": 34.4, "ensemble": 34.4 * 0.286 / 0.119},
}
#: silica_paper: one seed, one iteration; its ensemble (memory, as for MD) the gmm figure times the 48-atom
#: workload's ensemble/gmm ratio (0.0699 / 0.00815)
ATTACK_S = {
    "ammonia_quick": {"ensemble": 0.00416, "mve": 0.00079, "evidential": 0.00084, "gmm": 0.00154},
    "ammonia_paper": {"ensemble": 0.00791, "mve": 0.00134, "evidential": 0.00097, "gmm": 0.00159},
    "silica_quick": {"ensemble": 0.0699, "mve": 0.0092, "evidential": 0.00815, "gmm": 0.00815},
    "silica_paper": {"ensemble": 0.679 * 0.0699 / 0.00815, "mve": 0.970, "evidential": 1.091, "gmm": 0.679},
}
#: seconds per band step (11 images, the whole band in one model call: uqpot.md.band) and per endpoint
#: relaxation step of the NH3 inversion NEB (benchmarks/plan_costs.py --only neb, load average 0.6 on 2 cores)
NEB_STEP_S = {
    "ammonia_quick": {"none": {"band": 0.0199, "relax": 0.0077}, "ensemble": {"band": 0.0282, "relax": 0.0066}},
    "ammonia_paper": {"none": {"band": 0.0235, "relax": 0.0073}, "ensemble": {"band": 0.0460, "relax": 0.0125}},
}
#: a plain training step of the paper's PaiNN (batch 64) on rMD17-sized molecules, by atoms (ethanol at 9;
#: the others compact random molecules at ethanol's density: all pairs within the cutoff, an upper bound)
RMD17_SIZE_STEP_S = {9: 0.507, 12: 0.960, 16: 1.737, 21: 5.459, 24: 7.200}

#: oracle labels: PySCF BP86-D3(BJ)/def2-SVP on NH3, one thread (benchmarks/plan_costs.py at load 4-6;
#: ORACLES.md gives 0.6-0.9 s with two threads on a quiet machine)
PYSCF_NH3_S = 1.19
#: BKS through LAMMPS, energy, forces and stress: 0.067 s for 699 atoms, 0.005 s for 72 (ORACLES.md): per atom
BKS_S_PER_ATOM = 0.067 / 699
#: oracle calls of the ammonia data build at the paper's sizes (78 training, 200 test structures), counted
#: with GFN2-xTB standing in for the DFT (the same procedure on another surface)
AMMONIA_BUILD_CALLS = 458
AMMONIA_BUILD_STRUCTURES = 78 + 200
#: the loop's oracle NH3 minimum and inversion profile (once per study: the store shares them)
AMMONIA_MINIMUM_CALLS = 34
AMMONIA_ORACLE_NEB_CALLS = 15
#: wall time of the default silica data build (192 atoms: Table S1's 1590 frames with the SI's MD compressed
#: 500x, BKS labels, trial adversarial runs in one batch, 402 test structures): ``uqpot data build silica``,
#: 5180 s at load 4-8 (MD 2832 s, trial attack 2064 s, labels 112 s, melt-quench 145 s); the MD's length
#: does not depend on the frame count, so smaller builds of the same cell cost about as much
SILICA_BUILD_S = 5180.0
SILICA_BUILD_ATOMS = 192
#: other sizes: scaled by (atoms / SILICA_BUILD_ATOMS) to this power, that of the BKS label's cost (0.005 s at 72 atoms,
#: 0.067 s at 699: ORACLES.md); an extrapolation, not measured at 699 atoms
SILICA_BUILD_EXPONENT = 1.14

#: the data build's cost, per measured system (:attr:`uqpot.systems.base.System.workload`): oracle ``calls`` per
#: ``structures`` built (each a label), or a measured wall time (``seconds``) of a cell of ``atoms`` atoms,
#: scaled by the atoms to ``exponent``, with ``what`` the build's steps in words
BUILD = {
    "ammonia": dict(calls=AMMONIA_BUILD_CALLS, structures=AMMONIA_BUILD_STRUCTURES),
    "silica": dict(seconds=SILICA_BUILD_S, atoms=SILICA_BUILD_ATOMS, exponent=SILICA_BUILD_EXPONENT,
                   what="LAMMPS melt-quench, Table S1 MD, BKS labels"),
}
#: oracle calls once per loop study with an MD campaign or a NEB, per measured system (ammonia: the oracle's NH3
#: minimum, the MD's energy floor, and its inversion profile)
ONCE_CALLS = {"ammonia": AMMONIA_MINIMUM_CALLS + AMMONIA_ORACLE_NEB_CALLS}

#: the NEB's steps are those of a trained model, unknown before it exists.  In the quick ammonia study (64
#: features) the bands of one seed took 109-676 band steps (2.4-15 s each with the batched band): the plan
#: takes NEB_BAND_STEPS (and NEB_RELAX_STEPS per endpoint); the most is 2,000.
NEB_BAND_STEPS = 300
NEB_RELAX_STEPS = 50
NEB_NOTE = ("NEB: the band's steps are not known before the model is; counted as 300 band steps per run (one seed's "
            "runs in the quick study took 109-676), at most 2,000")

#: the seeds' trainings of a method stacked into one (``loop.replicates: auto``): measured with
#: benchmarks/replicates_training.py (the quick ammonia preset, 30 epochs, one thread, quiet 2-core CPU): single
#: networks 1.3-1.7x faster at 2-8 seeds, 5-member ensembles 1.0x; the plan counts every seed's training apart
REPLICATES_NOTE = ("training: the seeds' networks of a method train in one stack (loop.replicates: auto); counted "
                   "here one by one, an upper bound: measured 1.3-1.7x faster for single networks at 2-8 seeds, "
                   "no faster for 5-member ensembles (benchmarks/replicates_training.py)")
GPU_NOTE = ("no per-step figure has been measured on a GPU for these workloads, so there is no GPU estimate "
            "(run benchmarks/plan_costs.py there; benchmarks/gpu_check.sh times the separate parts)")


def nearest(system: str, features: int) -> str:
    """The measured workload of ``system`` nearest in width to ``features``."""
    cands = [k for k, w in WORKLOADS.items() if w["system"] == system]
    if not cands:
        raise KeyError(f"no measured workload for {system!r}")
    return min(cands, key=lambda k: (abs(WORKLOADS[k]["features"] - features), k))


def nearest_neb(system: str, features: int) -> str:
    """The workload of ``system`` whose NEB step was measured nearest in width."""
    cands = [k for k in NEB_STEP_S if WORKLOADS[k]["system"] == system]
    if not cands:
        raise KeyError(f"no measured NEB step for {system!r}")
    return min(cands, key=lambda k: (abs(WORKLOADS[k]["features"] - features), k))
