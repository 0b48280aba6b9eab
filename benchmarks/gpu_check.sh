#!/usr/bin/env bash
# Every benchmark on CUDA in one command, one table at the end (about 8 minutes on one GPU).
#
#   bash benchmarks/gpu_check.sh [OUT]        (default OUT: gpu_check)
#
# Environment: UQPOT_DATA (folder with rmd17_ethanol_800.extxyz; default ../shared/data), PYTHON (default
# python), SCHNETPACK_PYTHON (schnetpack 2.2's interpreter, see benchmarks/README.md; without it the
# schnetpack columns are empty), GPU_CHECK_DEVICE (default cuda; cpu with GPU_CHECK_SMALL=1 runs every part
# at a toy size, to check the script itself on a machine without a GPU).
#
# What it runs, each under its own time limit so that one slow part cannot take the whole budget:
#   train_speed.py   batch 64 and 256: uqpot (edge list, dense, dense compiled) against schnetpack's PaiNN
#   uq_overhead.py   batch 64: the 5-member ensemble, MVE, evidential, GMM against one plain PaiNN
#   md_speed.py      400 NH3 replicas, 1,000 steps of the batched engine (ASE: 1 replica, 100 steps);
#                    the paper's campaign of 400 x 10,000 steps is extrapolated from the measured rate
#   compile_breakeven.py  compile time (cold and warm inductor cache) against the per-step saving
# The JSON line of every benchmark is kept in OUT/; a part that fails or runs out of time is reported as
# such in the table and the others still run.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-gpu_check}
DATA=${UQPOT_DATA:-$HERE/../../shared/data}/rmd17_ethanol_800.extxyz
PY=${PYTHON:-python}
DEV=${GPU_CHECK_DEVICE:-cuda}
mkdir -p "$OUT"
if [ "$DEV" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device visible to $PY (torch.cuda.is_available() is False)"; exit 2
fi
# sizes: the check's, or a toy run of the same commands (GPU_CHECK_SMALL=1)
if [ -n "${GPU_CHECK_SMALL:-}" ]; then B1=8; B2=16; ROUNDS=1; MDR=20; MDS=40; STEPS=3; VARIANTS=sparse,dense
else B1=64; B2=256; ROUNDS=3; MDR=400; MDS=1000; STEPS=20; VARIANTS=sparse,dense,dense+compile; fi
[ -f "$DATA" ] || { echo "gpu_check: $DATA: no such file (set UQPOT_DATA)"; exit 2; }
REF=()
[ -n "${SCHNETPACK_PYTHON:-}" ] && REF=(--reference-python "$SCHNETPACK_PYTHON")

run() {  # run NAME LIMIT_S ARGS...: the last JSON line into OUT/NAME.json, the output into OUT/NAME.log
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$PY" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  grep '^{' "$OUT/$name.log" | tail -1 > "$OUT/$name.json"
  echo "$name: exit $rc, $((SECONDS - t0)) s"
}

# limits add up to 470 s: the whole check stays within 8 minutes
run train64 90 "$HERE/train_speed.py" --data "$DATA" --device "$DEV" --batch $B1 --rounds $ROUNDS \
  --variants "$VARIANTS" "${REF[@]}"
run train256 70 "$HERE/train_speed.py" --data "$DATA" --device "$DEV" --batch $B2 --rounds $ROUNDS \
  --variants sparse,dense "${REF[@]}"
run uq 70 "$HERE/uq_overhead.py" --data "$DATA" --device "$DEV" --batch $B1 --rounds $ROUNDS
run md 110 "$HERE/md_speed.py" --device "$DEV" --replicas $MDR --steps $MDS --ase-replicas 1 --ase-steps 100 --rounds 1
run compile 130 "$HERE/compile_breakeven.py" --data "$DATA" --device "$DEV" --batch $B1 --steps $STEPS \
  --md-replicas $MDR

"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])


def load(name):
    try:
        return json.loads((out / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


rows = []
for name in ("train64", "train256"):
    r = load(name)
    b = r["batch"] if r else name[5:]
    if r is None:
        rows.append((f"training, batch {b}", "failed or timed out", "")); continue
    spk = r.get("schnetpack", {}).get("train_structures_per_s")
    for v, x in r["uqpot"].items():
        ratio = f"{x['train_structures_per_s'] / spk:.2f}x schnetpack" if spk else "no schnetpack reference"
        rows.append((f"training, batch {b}, {v}", f"{x['train_structures_per_s']:.0f} structures/s", ratio))
r = load("uq")
if r is None:
    rows.append(("UQ overhead", "failed or timed out", ""))
else:
    for m in ("ensemble", "mve", "evidential", "gmm"):
        if m in r:
            rows.append((f"{m} vs one PaiNN", f"train {r[m]['train_cost_vs_plain']}x, inference "
                         f"{r[m]['infer_cost_vs_plain']}x", f"peak {r[m]['peak_mb']:.0f} MB"))
r = load("md")
if r is None:
    rows.append(("MD, 400 NH3", "failed or timed out", ""))
else:
    rate = r["batched_replica_steps_per_s"]
    rows.append((f"MD, {r['replicas']} NH3, batched engine", f"{rate:.0f} replica-steps/s", f"{r['speedup']:.1f}x ASE"))
    rows.append((f"MD campaign {r['replicas']} x 10,000 steps",
                 f"{r['replicas'] * 10_000 / rate / 60:.1f} min (extrapolated from {r['steps']:,})", ""))
r = load("compile")
if r is None:
    rows.append(("compile break-even", "failed or timed out", ""))
else:
    for kind in ("train", "md"):
        if kind in r:
            x = r[kind]
            be = x["breakeven_steps_cold"]
            rows.append((f"compile, {kind}", f"{x['speedup']:.2f}x per step, compile {x['compiled_cold']['first_s']:.0f} s "
                         f"cold / {x['compiled_warm']['first_s']:.0f} s warm",
                         f"break-even {'never' if be is None else f'{be:.0f} steps'} (cold)"))
w = max(len(a) for a, _, _ in rows)
for a, b, c in rows:
    print(f"{a:<{w}} | {b} | {c}")
EOF
