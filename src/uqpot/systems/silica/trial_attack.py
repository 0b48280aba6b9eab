"""Trial adversarial runs: displacement directions for a test set built as the paper's silica test set was.

The SI (section II.A): "an independent test set was created from adversarial sampling during trial runs in
this work. 402 structures with energies between 0 and 30,000 kcal/mol (43 kcal/mol/atom) were picked to form
the test set. The structures were binned and deduplicated according to their energies and 2 structures with
the highest atomic forces were chosen from each bin."

Here a trial run is: a small PaiNN ensemble (``TrialAttack``: 3 members, 16 features) trained briefly on up to
``max_train`` training frames, then attacked as in the study (Eq. 15-16: gradient ascent on log p + log U,
kT = 0.7 kcal/mol/atom, 80 iterations, the silica step of :mod:`uqpot.sample.adversarial`) from ``n_seeds``
training frames.  Each accepted sample's displacement from its starting frame (modulo lattice vectors) is a
*direction*: the silica build (:func:`uqpot.systems.silica.build.build_silica`) labels structures along it at
amplitudes aimed at each energy bin (0-43 kcal/mol/atom), because one attack at the paper's kT stays within
a few kcal/mol/atom of its start while the SI's trial runs spanned the whole range.  The trial model is
written to ``OUT/trial/`` (resumed when there), so a rebuild repeats nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ...nn.painn import PaiNNOptions
from ...train.config import TrainConfig
from ...data.sets._common import BuildError
from ...data.structures import StructureDataset
from ...evaluation.models import load
from ...core.provenance import write_json
from ...sample.adversarial import (AttackConfig, BoltzmannReference, attack, displacement,
                                 paper_equivalent_lr)
from ...fit.run import fit_model
from ...uq.options import parse_uq
from .config import ATTACK_LR


@dataclass
class TrialAttack:
    """The trial runs' settings (energies kcal/mol, lengths Å)."""

    members: int = 3
    features: int = 16
    interactions: int = 2
    epochs: int = 5
    batch_size: int = 8
    lr: float = 1e-3
    max_train: int = 200
    n_seeds: int = 50
    iterations: int = 80
    kT: float = 0.7  # kcal/mol/atom, the SI's
    attack_lr: float = paper_equivalent_lr(ATTACK_LR)
    seed: int = 0
    #: atoms attacked in one batch (the ensemble's second derivatives hold about 7 GB for 50 cells of 192
    #: atoms at once): the seeds are attacked in chunks of at most this many atoms, each seed on its own
    max_atoms_per_batch: int = 2000

    @classmethod
    def quick(cls) -> "TrialAttack":
        """For the tiny trial builds (``uqpot data build silica --quick``): 2 epochs, 8 attacks of 20 steps."""
        return cls(epochs=2, n_seeds=8, iterations=20)


def trial_directions(settings: TrialAttack):
    """``adversarial_directions`` with ``settings``, in the form :func:`uqpot.systems.silica.build.build_silica`
    takes (``directions(train, out)``)."""
    return lambda train, out: adversarial_directions(train, out, settings)


def adversarial_directions(train: list, out, settings: TrialAttack | None = None) -> list[tuple[int, np.ndarray]]:
    """[(index into ``train``, displacement (n, 3) Å)] from trial adversarial runs on ``train`` (labelled
    structures, absolute energies); the trial model and the directions are kept in ``out``."""
    cfg = settings or TrialAttack()
    out = Path(out)
    saved = out / "directions.npz"
    if saved.is_file() and (out / "trial.json").is_file() \
            and json.loads((out / "trial.json").read_text()).get("settings") == asdict(cfg):
        with np.load(saved, allow_pickle=False) as z:
            return [(int(k), d) for k, d in zip(z["index"], z["direction"])]
    rng = np.random.default_rng([cfg.seed, 17])
    order = rng.permutation(len(train))
    n_fit = min(cfg.max_train, len(train))
    n_val = max(1, n_fit // 5)
    fit = StructureDataset([train[int(i)] for i in order[: n_fit - n_val]])
    val = StructureDataset([train[int(i)] for i in order[n_fit - n_val: n_fit]])
    model_cfg = PaiNNOptions(features=cfg.features, interactions=cfg.interactions, readout_hidden=cfg.features)
    train_cfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, progress=False,
                            stress_weight=0.0)
    uq = parse_uq({"method": "ensemble", "members": cfg.members})
    fit_model(model_cfg, uq, train_cfg, cfg.seed, fit, val, val, out / "model", extra={"trial_attack": True})
    model = load(out / "model" / "model.pt")
    seeds_idx = np.sort(rng.choice(len(train), size=min(cfg.n_seeds, len(train)), replace=False))
    seeds = [train[int(i)] for i in seeds_idx]
    ref = BoltzmannReference.from_energies(np.array([s.energy for s in train]), [s.n_atoms for s in train], cfg.kT)
    per_batch = max(1, cfg.max_atoms_per_batch // max(s.n_atoms for s in seeds))
    pairs, rejected = [], 0
    # each seed's ascent is independent of the others' (its own objective; Adam is elementwise), so chunks
    # change only float rounding and which near-duplicates are seen together
    for start in range(0, len(seeds), per_batch):
        chunk = seeds[start:start + per_batch]
        res = attack(model, chunk, ref, AttackConfig(kT=cfg.kT, iterations=cfg.iterations, lr=cfg.attack_lr,
                                                     n_seeds=len(chunk), energy_cutoff=None, seed=cfg.seed))
        pairs += [(int(seeds_idx[start + s.info["attack_seed"]]), displacement(s, chunk[s.info["attack_seed"]]))
                  for s in res.samples]
        rejected += len(res.rejected)
    if not pairs:
        raise BuildError("the trial attacks gave no sample, so the test set has no direction: build with "
                         "--test-directions random")
    out.mkdir(parents=True, exist_ok=True)
    tmp = saved.with_name(f".{saved.stem}.tmp{os.getpid()}.npz")
    np.savez(tmp, index=np.array([k for k, _ in pairs]), direction=np.stack([d for _, d in pairs]))
    os.replace(tmp, saved)  # whole or absent: a killed build recomputes the directions
    write_json(out / "trial.json", {"settings": asdict(cfg), "directions": len(pairs),
                                    "rejected": rejected, "rmsd": [float(np.sqrt((d ** 2).mean()))
                                                                            for _, d in pairs]})
    return pairs
