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
each method's data holds its own adversarial samples, and each trains its own network.  With a stopping rule
(``until``), each method that stopped gets a final model on all its labels once the generations end
(:mod:`uqpot.loop.final`, run by :mod:`uqpot.loop.replicates`).
"""


from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ..core.config_io import dump_config
from ..data.io import ReadOptions, read_structures, write_extxyz
from ..data.store import Store
from ..data.structures import StructureDataset
from ..core.determinism import fixed_threads
from ..core.errors import ConfigError
from ..metrics.registry import in_order_of, table_names
from ..evaluation.models import load
from ..oracle import get_oracle
from ..core.provenance import write_json
from ..systems import find_system
from ..train.losses import study_stress_weight
from ..fit.run import fit_from_backbone, fit_model, member_count, trains_plain_potential, trains_stress
from ..uq.options import parse_uq
from .config import LoopConfig
from .md import neb_for_loop, nh3_minimum, oracle_neb_for_loop, run_campaign_for_loop
from .prepare import check_loop_data, clear_loop, loop_record, prepare_loop
from .resume import check_same_config
from .sampling import label_step, sample_step, sampling_context
from .stopping import labels_added, redecide, until_step


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
            self._oracle = get_oracle(self.cfg.oracle.name, **self.cfg.oracle.options)
        return self._oracle

    @property
    def store(self):
        if self._store is None:
            self._store = Store(self.cfg.store or self.out / "labels.db")
        return self._store

    def train_settings(self):
        """The training settings of every method and generation (``cfg.train_for()``), with one stress weight
        for all methods (:func:`uqpot.train.losses.study_stress_weight`: every method trains on the same
        labels, SI Eq. 1 unless every method can train on a stress)."""
        if self._train_settings is None:
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
        # uqpot wrote it from the oracle's labels in kcal/mol and Å: the unit heuristic is for users' files
        return read_structures(path, ReadOptions(min_distance=0.0, check_units=False))

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
        plain = [m for m in self.cfg.methods if trains_plain_potential(self.cfg.uq_config(m))]
        return plain if len(plain) > 1 else []

    @property
    def backbone_dir(self) -> Path:
        return self.out / "gen1" / "backbone" / "train"

    def step_backbone(self) -> dict:
        """Generation 1's shared plain potential (trained once, resumed or skipped when done)."""
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
                         init=self.init_for(1, "none"), finetune=self.finetune_for(1))

    def step_train(self, g, method, train, val, test) -> dict:
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
                         test, d, console=self.console, extra=extra, init=self.init_for(g, method),
                         finetune=self.finetune_for(g))

    def init_for(self, g: int, method: str) -> list[Path] | None:
        """The model file(s) generation ``g`` of ``method`` fine-tunes (None: trained from scratch)."""
        files = self.cfg.init_files()
        if not files:
            return None
        if g > 1 and self.cfg.finetune.start == "previous":
            return [self.gen_dir(g - 1, method) / "train" / "model.pt"]
        members = member_count(self.cfg.uq_config(method))
        return files if members == len(files) else files[:1]

    def finetune_for(self, g: int):
        """The fine-tuning settings of generation ``g``: the loop's, but a generation that fine-tunes its
        previous model keeps that model's readout (``readout: reinit`` applies to starts from ``init_model``)."""
        fs = self.cfg.finetune
        return fs if g == 1 or fs.start == "init" else fs.model_copy(update={"readout": "keep"})

    def model(self, g, method):
        return load(self.gen_dir(g, method) / "train" / "model.pt")

    def step_attack(self, g, method, pool) -> dict:
        """The sampling step of generation ``g``: the method's sampler (``loop.sampler``) proposes candidates
        from ``pool`` (:meth:`attack_pool`: the starting structures and the energies of the reference)."""
        d = self.gen_dir(g, method) / "attack"
        marker = d / "attack.json"
        if _done(marker):
            return json.loads(marker.read_text())
        ctx = sampling_context(self.cfg, g, method, pool, self.model(g, method),
                               self.gen_dir(g, method) / "train" / "model.pt")
        return sample_step(d, self.cfg.sampler_for(method), ctx, log=lambda msg: self.log(f"gen {g} {method}: {msg}"))

    def step_label(self, g, method, train) -> dict:
        """The oracle's labels of generation ``g``'s candidates, through the store (``train``: the pool whose
        minimum is the energy cut-off's zero)."""
        d = self.gen_dir(g, method) / "attack"
        marker = d / "label.json"
        if _done(marker):
            return json.loads(marker.read_text())
        return label_step(d, self.oracle, self.store, self.executor, generation=g, method=method,
                          source=self.cfg.sampler_for(method), train=train, cutoff=self.cfg.cutoff_for(g),
                          log=lambda msg: self.log(f"gen {g} {method}: {msg}"))

    def step_md(self, g, method) -> dict | None:
        if not self.cfg.md:
            return None
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

    def step_until(self, g, method) -> dict:
        """The stopping rule's exploration and decision after generation ``g`` of ``method``
        (:func:`uqpot.loop.stopping.until_step`), skipped if already done."""
        d = self.gen_dir(g, method)
        if _done(d / "stopping.json"):  # a longer loop re-decides a stop that only ran out of generations
            return redecide(d / "stopping.json", self.cfg)
        train0, val0, *_ = self.initial_data()
        return until_step(d, self.cfg, g, method, self.model(g, method), d / "train" / "model.pt", train0 + val0,
                          labels_added(self.out, g, method), log=lambda msg: self.log(f"gen {g} {method}: {msg}"),
                          oracle=self.oracle, store=self.store, executor=self.executor)

    def needs_ground_state(self) -> bool:
        """Whether the MD campaign needs ammonia's optimised minimum (its energy floor)."""
        found = find_system(self.cfg.system)
        return (found is not None and found.energy_floor and bool(self.cfg.md)
                and self.cfg.md.get("ground_state_energy", "optimised") == "optimised")

    def ground_state(self) -> float | None:
        """Ammonia's optimised minimum energy on the loop's scale (kcal/mol; the MD's energy floor, Sec. 2.5),
        computed once per loop with the oracle (``OUT/ground_state.json``); None where no campaign needs it."""
        if not self.needs_ground_state():
            return None
        path = self.out / "ground_state.json"
        if not _done(path):
            write_json(path, nh3_minimum(self.oracle, self.store))
        return float(json.loads(path.read_text())["energy"])

    def step_neb(self, g, method) -> dict | None:
        if not self.cfg.neb:
            return None
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
        with fixed_threads(self.cfg.threads):
            return {**self._method_generation(g, method), "threads": torch.get_num_threads()}

    def model_steps(self, g: int, method: str) -> None:
        """Training, test, MD and NEB of generation ``g`` for one method, without its sampling and labelling
        (what does not depend on the sampler), each step skipped if already done."""
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
        # the table metrics in the test record's order, then those the data may lack (a stress) where present
        rec["test"] = {k: tr["test"].get(k) for k in in_order_of(table_names(optional=False), tr["test"])}
        for k in table_names(optional=True):
            if tr["test"].get(k) is not None:
                rec["test"][k] = tr["test"][k]
        rec["md"] = self.step_md(g, method)
        rec["neb"] = self.step_neb(g, method)
        stop = False
        if self.cfg.until is not None:  # the stopping rule (uqpot.loop.stopping): a method that stops samples no more
            rec["stopping"] = self.step_until(g, method)
            stop = rec["stopping"]["decision"] == "stop"
        if g < self.cfg.generations and not stop:
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
        cfg = self.cfg = check_same_config(self.out, self.cfg, self.log)
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

