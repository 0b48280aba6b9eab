"""The silica test set (see :mod:`.build`, step 5): energy bins above the training minimum filled by hot-MD
frames and displacements of training frames, the highest-force candidates kept per bin."""

from __future__ import annotations

import numpy as np

from ...data.sets._build import CurvaturePrior, Slot
from ...data.store import structure_hash
from ...data.structures import Structure

def _structures(numbers, frames: dict, info: dict) -> list:
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
