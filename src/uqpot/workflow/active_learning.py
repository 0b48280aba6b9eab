"""Active learning by adversarial sampling, generation after generation (paper Fig. 1, sections 2.4, 3.2-3.3).

For every configured UQ method, each with its own growing data set:

    generation g:  train → evaluate on the test set → MD stability → NEB → attack → label (oracle) → g + 1

Everything a step produces is written to ``OUT/gen{g}/{method}/`` before the step counts as done (its
marker file is written last, atomically), so ``uqpot loop CONFIG.yaml`` resumes after any interruption,
SIGKILL included, without repeating a finished step: training resumes from its checkpoint, and labels come
from the store (``OUT/labels.db``), so the oracle never computes a structure twice.

Energy alignment: the data files may hold energies on another scale than the oracle's (relative energies,
another program).  Before the first generation the oracle labels the lowest-energy training structures and
the constant offset between the two scales is applied to the data (the spread of the offsets is reported:
a large spread means the data's level of theory differs from the oracle's).

New samples are split 80/20 into the training and validation pools (seeded), so the validation set, which
steers the learning-rate schedule and the best-model choice, also covers the new regions.

One backbone in generation 1: the post-hoc methods (GMM, LLPR) train a plain potential, and in generation 1
every method has the same data, so when the loop has two or more of them they share one network trained in
``OUT/gen1/backbone/train/`` and each wraps it (the numbers of training it alone).  From generation 2 on
each method's data holds its own adversarial samples, and each trains its own network.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np
from pydantic import Field, field_validator, model_validator

from ..nn.painn import PaiNNOptions

from ..nn.backbone import ModelSection

from ..schema import Strict

from ..train.config import TrainConfig

from ..config_io import dump_config, load_config
from ..schema import Distinct, Seed
from ..data.io import ReadOptions, read_structures, write_extxyz
from ..data.structures import StructureDataset
from ..errors import ConfigError
from ..provenance import write_json
from ..uq.options import MethodOptions, UQMethodName, UQOptions, parse_uq
from .loop_prepare import check_loop_data, clear_loop, loop_record, prepare_loop, recorded_run
from .loop_sampling import SamplerName, SamplingSettings

#: the default methods: the paper's four
DEFAULT_METHODS = ("ensemble", "mve", "evidential", "gmm")


class LoopData(Strict):
    train: Path  # initial labelled training structures (split into train/val)
    test: Path  # labelled test structures
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # the paper: 62 train / 16 validation of 78
    energy_unit: str = "kcal/mol"
    length_unit: str = "Å"
    align_energies: bool = True  # put the data on the oracle's energy scale (see module docstring)
    align_structures: int = Field(3, ge=1)


class AttackSettings(Strict):
    kT: float = Field(0.7, gt=0.0)  # kcal/mol/atom
    iterations: int = Field(80, ge=1)  # SI Sec. III: 80 iterations, for every method
    # a different number for evidential models (uqpot's option, not the SI's: unset = ``iterations``)
    iterations_evidential: Optional[int] = Field(None, ge=1)
    lr: float = Field(2.0e-3, gt=0.0)  # Å per step; see uqpot.sample.adversarial on the SI's 5e-5
    n_seeds: int = Field(20, ge=1)
    # kcal/mol above the training minimum; one value, or one per attacked generation (silica: 5000, 10000)
    energy_cutoff: Optional[Union[float, list[float]]] = 100.0

    @field_validator("energy_cutoff")
    @classmethod
    def _cutoffs(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("an empty list: give one cut-off (kcal/mol), one per attacked generation, or null "
                             "for none")
        return v
    dedup_rmsd: float = Field(0.01, ge=0.0)
    min_displacement: float = Field(1e-3, ge=0.0)
    # where the attack's starting structures, the Boltzmann partition function (Eq. 16) and the energy
    # cut-off's reference (its minimum) come from: "initial", the paper's (Sec. 2.4: "randomly chosen
    # structures, x from the initial training data"; Eq. 16 sums over the initial training data), i.e.
    # every structure of ``data.train`` (training and validation pools of generation 1, the 78 geometries of
    # the ammonia set); or "current", the generation's own training split (earlier adversarial samples
    # included), which moves the reference as the data grows
    seed_pool: Literal["initial", "current"] = "initial"


class FinetuneSettings(Strict):
    """``finetune``: how each generation trains when the loop starts from ``init_model`` (a warm start:
    :mod:`uqpot.fit.finetune`).  A trained network needs a smaller step and fewer epochs than one trained
    from random weights; unset values are a fifth of ``train.lr`` and half of ``train.epochs`` (the other
    ``train`` settings apply as they are)."""

    lr: Optional[float] = Field(None, gt=0.0)
    epochs: Optional[int] = Field(None, ge=1)
    #: generation g > 1 starts from the same method's model of generation g - 1 ("previous"), or every
    #: generation from ``init_model`` ("init")
    start: Literal["previous", "init"] = "previous"


class OracleSettings(Strict):
    name: str
    options: dict = {}

    @field_validator("name")
    @classmethod
    def _known(cls, v):
        from ..oracle import FACTORIES

        if v.lower().split(":")[0] not in FACTORIES:
            raise ValueError(f"unknown oracle {v!r}; known: {', '.join(FACTORIES)} (or pyscf:<preset>)")
        return v


class LoopConfig(Strict):
    seed: Seed = 0
    out: Path = Path("runs/loop")
    system: Literal["ammonia", "silica", "molecule", "generic"] = "generic"
    methods: Distinct[UQMethodName] = list(DEFAULT_METHODS)  # any registered UQ method
    generations: int = Field(3, ge=1)
    data: LoopData
    model: ModelSection = Field(default_factory=PaiNNOptions)
    uq: MethodOptions = {}  # per-method options of the `uq` section, e.g. {ensemble: {members: 5}}
    train: TrainConfig = TrainConfig()
    attack: AttackSettings = AttackSettings()
    # how each generation finds the structures the oracle labels: one sampler, or one per method
    sampler: Union[SamplerName, dict[str, SamplerName]] = "adversarial"
    sampling: SamplingSettings = SamplingSettings()
    oracle: OracleSettings
    md: Optional[dict] = None  # stability campaign settings (uqpot.md.campaign), or none
    neb: Union[bool, Literal["full"]] = False  # NH3 inversion barrier, model (NEB) vs oracle (see loop_md)
    batch_size: int = Field(64, ge=1)
    # PyTorch threads of every step (training, MD, attack, NEB): fixed, so that results do not depend on the
    # executor (see uqpot.determinism); part of the run's identity
    threads: int = Field(1, ge=1)
    store: Optional[Path] = None  # the label store; default OUT/labels.db (replicates of a study share one)
    # a trained uqpot model file (or, for an ensemble, one file per member) that every method fine-tunes
    # instead of training from scratch (``uqpot convert`` makes one from a MACE file); the network is then
    # the file's, and ``model`` is not used
    init_model: Optional[Union[Path, list[Path]]] = None
    finetune: FinetuneSettings = FinetuneSettings()

    def init_files(self) -> list[Path]:
        if self.init_model is None:
            return []
        return [Path(p) for p in (self.init_model if isinstance(self.init_model, list) else [self.init_model])]

    def train_for(self) -> TrainConfig:
        """The training settings of every generation (the ``finetune`` ones when fine-tuning)."""
        if self.init_model is None:
            return self.train
        ft = self.finetune
        return self.train.model_copy(update={"lr": ft.lr or self.train.lr / 5,
                                             "epochs": ft.epochs or max(1, self.train.epochs // 2)})

    def uq_config(self, method: str) -> UQOptions:
        return parse_uq({"method": method, **self.uq.get(method, {})})

    def sampler_for(self, method: str) -> str:
        if isinstance(self.sampler, str):
            return self.sampler
        return self.sampler.get(method, "adversarial")

    @model_validator(mode="after")
    def _sampler_methods(self):
        if self.md:  # the campaign settings, checked now rather than after the first training
            from pydantic import ValidationError

            from .loop_md import campaign_config

            try:
                campaign_config(self.md, self.system, self.seed)
            except ValidationError as exc:
                e = exc.errors()[0]
                where = "".join(f".{x}" for x in e["loc"])
                raise ValueError(f"md{where}: {e['msg'].removeprefix('Value error, ')}") from None
        if isinstance(self.sampler, dict):
            extra = sorted(set(self.sampler) - set(self.methods))
            if extra:
                raise ValueError(f"sampler: {', '.join(extra)} not among the loop's methods")
        return self

    def cutoff_for(self, generation: int) -> float | None:
        c = self.attack.energy_cutoff
        if isinstance(c, list):
            return c[min(generation - 1, len(c) - 1)] if c else None
        return c


def _done(path: Path) -> bool:
    return path.is_file()


class ActiveLearning:
    def __init__(self, cfg: LoopConfig, console=None, executor=None, restart: bool = False):
        self.cfg = cfg
        self.restart = restart  # remove the loop's earlier outputs in out before it starts (not the store)
        self.prepared = None
        self.out = Path(cfg.out)
        self.console = console
        self.executor = executor
        self._oracle = None
        self._store = None
        self._train_settings = None
        self.opts = ReadOptions(energy_unit=cfg.data.energy_unit, length_unit=cfg.data.length_unit)

    # ----------------------------------------------------------------- helpers
    def log(self, msg: str) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "loop.log", "a") as fh:
            fh.write(time.strftime("%Y-%m-%d %H:%M:%S ") + msg + "\n")
        if self.console is not None:
            self.console.print(msg)

    @property
    def oracle(self):
        if self._oracle is None:
            from ..oracle import get_oracle

            self._oracle = get_oracle(self.cfg.oracle.name, **self.cfg.oracle.options)
        return self._oracle

    @property
    def store(self):
        if self._store is None:
            from ..data.store import Store

            self._store = Store(self.cfg.store or self.out / "labels.db")
        return self._store

    def train_settings(self):
        """The training settings of every method and generation (``cfg.train_for()``), with one stress weight
        for all methods (:func:`uqpot.train.losses.study_stress_weight`: every method trains on the same
        labels, SI Eq. 1 unless every method can train on a stress)."""
        if self._train_settings is None:
            from ..train.losses import study_stress_weight
            from ..fit.run import trains_stress

            train = read_structures(self.cfg.data.train, self.opts)  # every initial structure (stress or not)
            self._train_settings = study_stress_weight(
                self.cfg.train_for(), train, {m: trains_stress(self.cfg.uq_config(m)) for m in self.cfg.methods})
        return self._train_settings[0]

    def gen_dir(self, g: int, method: str) -> Path:
        return self.out / f"gen{g}" / method

    # ----------------------------------------------------------------- data
    def initial_data(self) -> tuple[StructureDataset, StructureDataset, StructureDataset, dict]:
        """(train, val, test) on the oracle's energy scale, and the alignment record."""
        train_all = read_structures(self.cfg.data.train, self.opts)
        test = read_structures(self.cfg.data.test, self.opts)
        align = self._alignment(train_all)
        for ds in (train_all, test):
            for s in ds:
                s.energy = s.energy + align["offset"]
        rng = np.random.default_rng(self.cfg.seed)
        perm = rng.permutation(len(train_all))
        n_val = max(1, int(round(self.cfg.data.val_fraction * len(train_all))))
        val, train = train_all.subset(np.sort(perm[:n_val])), train_all.subset(np.sort(perm[n_val:]))
        return train, val, test, align

    def _alignment(self, train_all: StructureDataset) -> dict:
        path = self.out / "alignment.json"
        if _done(path):
            return json.loads(path.read_text())
        if not self.cfg.data.align_energies:
            rec = {"offset": 0.0, "spread": 0.0, "structures": []}
        else:
            order = np.argsort(train_all.energies())[: self.cfg.data.align_structures]
            ref = [train_all[int(i)] for i in order]
            res = self.oracle.label(ref, store=self.store, provenance={"source": "alignment"},
                                    executor=self.executor)
            pairs = [(s.energy, r.energy) for s, r in zip(ref, res.structures) if r is not None]
            if not pairs:
                raise ConfigError(None, "energy alignment failed: the oracle could not label any of the "
                                        f"{len(ref)} lowest-energy training structures")
            d = np.array([o - e for e, o in pairs])
            rec = {"offset": float(d.mean()), "spread": float(d.max() - d.min()),
                   "structures": [int(train_all[int(i)].frame) for i in order]}
            if rec["spread"] > 1.0:
                self.log(f"warning: the data and the oracle disagree by {rec['spread']:.2f} kcal/mol in relative "
                         "energy on the alignment structures: different levels of theory?")
        write_json(path, rec)
        return rec

    def attack_pool(self, train: StructureDataset) -> StructureDataset:
        """The structures the attack of a generation starts from and measures its Boltzmann factor and energy
        cut-off against (``attack.seed_pool``): every initial structure, or ``train`` (the generation's own
        training split)."""
        if self.cfg.attack.seed_pool == "current":
            return train
        train0, val0, *_ = self.initial_data()
        return train0 + val0

    def _new_samples(self, g: int, method: str) -> StructureDataset:
        """Labelled adversarial samples accepted after generation g (empty if none)."""
        path = self.gen_dir(g, method) / "attack" / "labelled.extxyz"
        if not path.is_file() or path.stat().st_size == 0:
            return StructureDataset([])
        return read_structures(path, ReadOptions(min_distance=0.0))

    def data_for(self, g: int, method: str, base) -> tuple[StructureDataset, StructureDataset]:
        train, val = base
        for h in range(1, g):
            new = self._new_samples(h, method)
            if not len(new):
                continue
            rng = np.random.default_rng(self.cfg.seed + 1000 * h)
            perm = rng.permutation(len(new))
            n_val = int(round(self.cfg.data.val_fraction * len(new)))
            val = val + new.subset(np.sort(perm[:n_val]))
            train = train + new.subset(np.sort(perm[n_val:]))
        return train, val

    # ----------------------------------------------------------------- steps
    def shared_methods(self) -> list[str]:
        """The methods that wrap one plain-trained backbone in generation 1 (when two or more would train the
        same network; see the module docstring)."""
        from ..fit.run import trains_plain_potential

        plain = [m for m in self.cfg.methods if trains_plain_potential(self.cfg.uq_config(m))]
        return plain if len(plain) > 1 else []

    @property
    def backbone_dir(self) -> Path:
        return self.out / "gen1" / "backbone" / "train"

    def step_backbone(self) -> dict:
        """Generation 1's shared plain potential (trained once, resumed or skipped when done)."""
        from ..fit.run import fit_model
        from ..uq.options import parse_uq

        d = self.backbone_dir
        if _done(d / "summary.json"):
            return json.loads((d / "summary.json").read_text())
        train, val, test, _ = self.initial_data()
        self.log(f"gen 1 backbone of {', '.join(self.shared_methods())}: training on {len(train)} structures "
                 f"({len(val)} validation)")
        d.mkdir(parents=True, exist_ok=True)
        write_extxyz(train, d / "train.extxyz")
        write_extxyz(val, d / "val.extxyz")
        return fit_model(self.cfg.model, parse_uq({"method": "none"}), self.train_settings(), self.cfg.seed, train,
                         val, test, d, console=self.console, extra={"generation": 1, "method": "backbone"},
                         init=self.init_for(1, "none"))

    def step_train(self, g, method, train, val, test) -> dict:
        from ..fit.run import fit_from_backbone, fit_model

        d = self.gen_dir(g, method) / "train"
        marker = d / "summary.json"
        if _done(marker):
            return json.loads(marker.read_text())
        shared = g == 1 and method in self.shared_methods()
        if shared:
            self.step_backbone()
        self.log(f"gen {g} {method}: " + (f"wrapping the shared backbone {self.backbone_dir}" if shared else
                                          f"training on {len(train)} structures ({len(val)} validation)"))
        d.mkdir(parents=True, exist_ok=True)
        write_extxyz(train, d / "train.extxyz")
        write_extxyz(val, d / "val.extxyz")
        extra = {"generation": g, "method": method}
        if shared:
            return fit_from_backbone(self.backbone_dir, self.cfg.uq_config(method), self.train_settings(), train, val,
                                     test, d, extra=extra)
        return fit_model(self.cfg.model, self.cfg.uq_config(method), self.train_settings(), self.cfg.seed, train, val,
                         test, d, console=self.console, extra=extra, init=self.init_for(g, method))

    def init_for(self, g: int, method: str) -> list[Path] | None:
        """The model file(s) generation ``g`` of ``method`` fine-tunes (None: trained from scratch)."""
        from ..fit.run import member_count

        files = self.cfg.init_files()
        if not files:
            return None
        if g > 1 and self.cfg.finetune.start == "previous":
            return [self.gen_dir(g - 1, method) / "train" / "model.pt"]
        members = member_count(self.cfg.uq_config(method))
        return files if members == len(files) else files[:1]

    def model(self, g, method):
        from ..models import load

        return load(self.gen_dir(g, method) / "train" / "model.pt")

    def step_attack(self, g, method, train) -> dict:
        """The attack of generation ``g``: ``train`` is its pool (:meth:`attack_pool`), the starting structures
        and the reference of Eq. 16."""
        if self.cfg.sampler_for(method) != "adversarial":
            return self.step_md_sample(g, method, train)
        from ..sample.adversarial import AttackConfig, BoltzmannReference, attack, draw_seeds, signed_shift

        d = self.gen_dir(g, method) / "attack"
        marker = d / "attack.json"
        if _done(marker):
            return json.loads(marker.read_text())
        a = self.cfg.attack
        from ..uq import method_class

        cfg = AttackConfig(kT=a.kT, iterations=getattr(a, method_class(method).attack_iterations) or a.iterations,
                           lr=a.lr, n_seeds=a.n_seeds, energy_cutoff=self.cfg.cutoff_for(g),
                           dedup_rmsd=a.dedup_rmsd, min_displacement=a.min_displacement,
                           seed=self.cfg.seed + g)
        model = self.model(g, method)
        ref = BoltzmannReference.from_energies(train.energies(), [s.n_atoms for s in train], cfg.kT)
        shift = signed_shift(model, train, self.cfg.batch_size) if model.signed_uncertainty else 0.0
        seeds = draw_seeds(train, cfg.n_seeds, cfg.seed)
        t0 = time.perf_counter()
        res = attack(model, seeds, ref, cfg, u_shift=shift)
        d.mkdir(parents=True, exist_ok=True)
        write_extxyz(StructureDataset(res.samples), d / "candidates.extxyz")
        np.savez(d / "history.npz", **res.history)
        rec = {"n_seeds": len(seeds), "n_candidates": len(res.samples), "rejected": res.rejected,
               "kT": cfg.kT, "iterations": cfg.iterations, "lr": cfg.lr, "energy_cutoff": cfg.energy_cutoff,
               "seconds": round(time.perf_counter() - t0, 2), "u_shift": shift,
               "reference_e_min_per_atom": ref.e_min, "seed_pool": a.seed_pool, "pool_size": len(train)}
        write_json(marker, rec)
        self.log(f"gen {g} {method}: attack gave {len(res.samples)} candidates from {len(seeds)} seeds")
        return rec

    def step_md_sample(self, g, method, train) -> dict:
        """The ``md`` / ``biased_md`` samplers: candidates in the same place and format as the attack's."""
        from .loop_sampling import md_sample_for_loop

        d = self.gen_dir(g, method) / "attack"
        marker = d / "attack.json"
        if _done(marker):
            return json.loads(marker.read_text())
        rec = md_sample_for_loop(self, g, method, train, d)
        write_json(marker, rec)
        self.log(f"gen {g} {method}: {rec['sampler']} gave {rec['n_candidates']} candidates from "
                 f"{rec['frames_in_band']} frames in the trust band ({rec['frames']} frames of {rec['replicas']} "
                 "replicas)")
        return rec

    def step_label(self, g, method, train) -> dict:
        d = self.gen_dir(g, method) / "attack"
        marker = d / "label.json"
        if _done(marker):
            return json.loads(marker.read_text())
        cand = read_structures(d / "candidates.extxyz", ReadOptions(require_energy=False, require_forces=False,
                                                                    min_distance=0.0)) \
            if (d / "candidates.extxyz").stat().st_size else StructureDataset([])
        calls0, t0 = self.oracle.calls, time.perf_counter()
        res = self.oracle.label(list(cand), store=self.store,
                                provenance={"generation": g, "uq_method": method,
                                            "source": self.cfg.sampler_for(method)},
                                executor=self.executor)
        e_min = min(s.energy for s in train)  # kcal/mol (oracle scale), the training minimum
        cutoff = self.cfg.cutoff_for(g)
        accepted, dropped = [], []
        for k, s in enumerate(res.structures):
            if s is None:
                dropped.append({"candidate": k, "reason": "oracle failure: " + str(res.records[k].error)})
                continue
            e_rel = s.energy - e_min
            if cutoff is not None and e_rel > cutoff:
                dropped.append({"candidate": k, "reason": f"reference energy {e_rel:.1f} kcal/mol above cut-off"})
                continue
            s.info = {**cand[k].info, "generation": g, "uq_method": method, "energy_rel": e_rel}
            accepted.append(s)
        write_extxyz(StructureDataset(accepted), d / "labelled.extxyz")
        energies = [s.info["energy_rel"] for s in accepted]
        failed = sum(s is None for s in res.structures)
        rec = {"n_candidates": len(cand), "n_added": len(accepted), "n_failed": failed, "dropped": dropped,
               "oracle_calls": self.oracle.calls - calls0, "from_store": res.n_from_store,
               "energy_rel_min": min(energies) if energies else None,
               "energy_rel_max": max(energies) if energies else None,
               "seconds": round(time.perf_counter() - t0, 2)}
        write_json(marker, rec)
        self.log(f"gen {g} {method}: labelled {len(cand)} candidates ({rec['oracle_calls']} oracle calls), "
                 f"added {len(accepted)}" + (f", {failed} failed (see {marker})" if failed else ""))
        return rec

    def step_md(self, g, method) -> dict | None:
        if not self.cfg.md:
            return None
        from .loop_md import run_campaign_for_loop

        d = self.gen_dir(g, method) / "md"
        marker = d / "summary.json"
        if _done(marker):
            return json.loads(marker.read_text())
        d.mkdir(parents=True, exist_ok=True)
        train0, val0, *_ = self.initial_data()
        rec = run_campaign_for_loop(self.model(g, method), train0 + val0, self.cfg.md, self.cfg.system, d,
                                    seed=self.cfg.seed + g, ground_state=self.ground_state(),
                                    log=lambda msg: self.log(f"gen {g} {method}: {msg}"))
        write_json(marker, rec)
        return rec

    def needs_ground_state(self) -> bool:
        """Whether the MD campaign needs ammonia's optimised minimum (its energy floor)."""
        return (self.cfg.system == "ammonia" and bool(self.cfg.md)
                and self.cfg.md.get("ground_state_energy", "optimised") == "optimised")

    def ground_state(self) -> float | None:
        """Ammonia's optimised minimum energy on the loop's scale (kcal/mol; the MD's energy floor, Sec. 2.5),
        computed once per loop with the oracle (``OUT/ground_state.json``); None where no campaign needs it."""
        if not self.needs_ground_state():
            return None
        from .loop_md import nh3_minimum

        path = self.out / "ground_state.json"
        if not _done(path):
            write_json(path, nh3_minimum(self.oracle, self.store))
        return float(json.loads(path.read_text())["energy"])

    def step_neb(self, g, method) -> dict | None:
        if not self.cfg.neb:
            return None
        from .loop_md import neb_for_loop

        d = self.gen_dir(g, method)
        marker = d / "neb.json"
        if _done(marker):
            return json.loads(marker.read_text())
        t0 = time.perf_counter()
        rec = neb_for_loop(self.model(g, method), self.oracle_neb(), d)
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        write_json(marker, rec)
        return rec

    def oracle_neb(self) -> dict:
        """The oracle's own NEB barrier, computed once per loop."""
        from .loop_md import oracle_neb_for_loop

        path = self.out / "neb_oracle.json"
        if _done(path):
            return json.loads(path.read_text())
        rec = oracle_neb_for_loop(self.oracle, self.store, self.out,
                                  mode="full" if self.cfg.neb == "full" else "symmetric")
        write_json(path, rec)
        return rec

    # ----------------------------------------------------------------- the loop
    def method_generation(self, g: int, method: str) -> dict:
        """Every step of generation ``g`` for one UQ method (each step skipped if already done), with the
        loop's fixed number of PyTorch threads."""
        from ..determinism import fixed_threads

        import torch

        with fixed_threads(self.cfg.threads):
            return {**self._method_generation(g, method), "threads": torch.get_num_threads()}

    def model_steps(self, g: int, method: str) -> None:
        """Training, test, MD and NEB of generation ``g`` for one method, without its sampling and labelling
        (what does not depend on the sampler), each step skipped if already done."""
        from ..determinism import fixed_threads

        with fixed_threads(self.cfg.threads):
            train0, val0, test, _ = self.initial_data()
            train, val = self.data_for(g, method, (train0, val0))
            self.step_train(g, method, train, val, test)
            self.step_md(g, method)
            self.step_neb(g, method)

    def _method_generation(self, g: int, method: str) -> dict:
        train0, val0, test, _ = self.initial_data()
        train, val = self.data_for(g, method, (train0, val0))
        rec = {"n_train": len(train), "n_val": len(val)}
        tr = self.step_train(g, method, train, val, test)
        rec["train_seconds"] = tr["training"]["wall_seconds"]
        rec["epochs"] = tr["training"]["epochs_run"]
        rec["step_peak_mb"] = tr["training"].get("step_peak_mb")
        rec["test"] = {k: tr["test"].get(k) for k in ("energy_mae", "forces_mae", "spearman", "roc_auc_p20",
                                                     "roc_auc_p50", "miscalibration_area", "cnll")}
        if tr["test"].get("stress_mae") is not None:  # periodic test structures with a stress
            rec["test"]["stress_mae"] = tr["test"]["stress_mae"]
        rec["md"] = self.step_md(g, method)
        rec["neb"] = self.step_neb(g, method)
        if g < self.cfg.generations:
            pool = self.attack_pool(train)
            rec["attack"] = self.step_attack(g, method, pool)
            rec["label"] = self.step_label(g, method, pool)
        return rec

    def validate(self):
        """Checks everything the loop needs before anything is written (:func:`loop_prepare.prepare_loop`)."""
        if self.prepared is None:
            self.prepared = prepare_loop(self.cfg)
        return self.prepared

    def prepare(self) -> dict:
        """What every generation needs, done once in the calling process before any worker starts: the
        checks (:meth:`validate`, and one training objective for every method), the resume check (same config,
        same data; ``restart`` clears the loop's earlier outputs first), the config and run record, the energy
        alignment and the oracle's NEB barrier."""
        prep = self.validate()
        self.train_settings()  # one objective for every method; a bad stress weight stops here
        if self.restart:
            removed = clear_loop(self.out)
            if removed:
                self.log(f"restart: removed the earlier loop's {', '.join(removed)} (the label store is kept)")
            self.restart = False
        cfg = self.cfg = _check_same_config(self.out, self.cfg, self.log)
        check_loop_data(self.out, prep)
        self._train_settings = None  # the config may keep speed choices of the loop's start
        train_cfg = self.train_settings()
        objective = self._train_settings[1]
        self.out.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, self.out / "config.yaml")
        write_json(self.out / "run.json", {**loop_record(cfg, prep), "objective": objective,
                                           "stress_weight": train_cfg.stress_weight})
        self.log(f"training objective: {objective}")
        *_, align = self.initial_data()  # aligns energies once, before any worker needs it
        if cfg.neb:
            self.oracle_neb()  # once, before the methods need it
        self.ground_state()  # ammonia's MD energy floor, once, before the methods need it
        return align


def _unread_settings(before: "LoopConfig | None", cfg: LoopConfig) -> tuple[str, ...]:
    """Sections of the loop config that neither the stored loop ``before`` (None: unreadable) nor ``cfg``
    ever reads: ``sampling`` (the MD samplers' settings) when every method of both samples by the attack."""
    def attack_only(c) -> bool:
        return all(c.sampler_for(m) == "adversarial" for m in c.methods)

    return ("sampling",) if before is not None and attack_only(before) and attack_only(cfg) else ()


#: settings of a loop config that name files: compared as files, not as strings (:func:`uqpot.rundir.same_file`)
PATH_KEYS = ("data.train", "data.test", "store", "init_model")


def _check_same_config(out: Path, cfg: LoopConfig, log=None) -> LoopConfig:
    """The config to go on with in ``out``: ``cfg``, with the speed choices the loop keeps from its start
    (:func:`uqpot.fit.run.kept_speed_choices`).  Settings that neither the stored loop nor ``cfg`` reads
    (:func:`_unread_settings`: the MD samplers' ``sampling`` in a loop that only attacks) are not compared,
    nor is ``out`` (the folder may be given another way, or moved); file paths are compared as files.  Any
    other difference is refused, naming the settings."""
    import yaml

    from ..rundir import place, recorded_place, setting_differences
    from ..fit.run import flat_settings, kept_speed_choices

    old = out / "config.yaml"
    if not old.is_file():
        return cfg
    prev, before = yaml.safe_load(old.read_text()), None
    try:  # through the current schema, so that options added since (at their defaults) compare equal
        before = LoopConfig.model_validate(prev)
        prev = before.model_dump(mode="json")
    except Exception:  # noqa: BLE001 - a config this uqpot cannot read differs from any it writes
        pass
    cur = cfg.model_dump(mode="json")
    kept, note = {}, None
    if isinstance(prev, dict) and isinstance(prev.get("train"), dict):
        kept, note = kept_speed_choices(prev["train"], cfg.train)
        cur["train"].update(kept)
    unread = _unread_settings(before, cfg)
    for d in (prev, cur):  # a longer loop may continue a shorter one
        if isinstance(d, dict):
            d.pop("generations", None)
            d.get("train", {}).pop("progress", None)
            for key in unread:
                d.pop(key, None)
            if d.get("store") is None and d.get("out") is not None:  # the default store, spelled out
                d["store"] = str(Path(d["out"]) / "labels.db")
    now = place(out)
    then = recorded_place(recorded_run(out), prev.get("out") if isinstance(prev, dict) else None, now)
    a, b = (flat_settings(prev), flat_settings(cur)) if isinstance(prev, dict) else ({"(unreadable)": prev}, {})
    diff = setting_differences(a, b, PATH_KEYS, then, now)
    if diff:
        raise ConfigError(old, f"{out} holds a loop with a different config (differs in: {'; '.join(diff)}); "
                               "choose another 'out', or rerun with --restart to start the loop afresh there (the "
                               "label store is kept)")
    if not kept:
        return cfg
    if log is not None:
        log(note)
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=kept)})


def load_loop_config(path, overrides: dict | None = None) -> LoopConfig:
    return load_config(path, LoopConfig, overrides)
