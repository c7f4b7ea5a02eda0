#!/usr/bin/env bash
# The GPU numbers of the package in one command of at most 8 minutes, on a CUDA machine without network:
#
#     benchmarks/gpu_check.sh OUT_DIR            # on the GPU machine, from the repository root
#     benchmarks/gpu_check.sh OUT_DIR --dry-run  # tiny sizes on the CPU: checks that every step still runs
#
# Before: put the QM9 cache in data/ of the working tree (cp /work/main/data/qm9_structures.npz data/; data/
# is git-ignored, so carry it along with the tree), or point DATA_ROOT at it. If that machine lacks sevenn,
# put its wheels in wheels/ (pip download sevenn==0.13.0 -d wheels); they are installed from there, offline.
# PYTHON names the interpreter (default: python).
#
# Writes OUT_DIR/gpu_check.json (each step's seconds and exit status, the encoder epochs, the sampling
# stages, the export speed, bench.py's table) and OUT_DIR/gpu_check.log. Each step has a time limit, so
# the whole stays under 8 minutes; a step that runs out is recorded as timed out and the next one runs:
#   encoders  one full-QM9 training epoch of the default and the largest candidate encoder, eager and ENC_COMPILE
#   latents   train_encoder_qm9.py for one epoch on full QM9, then all latents
#   grid      the default sampling grid on those latents
#   export    the SevenNet-0 export of 20,000 molecules (one process, 1,000 per pass)
#   bench     benchmarks/bench.py (the dry run only checks that it starts: tests/test_bench.py runs it)
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
DATA_ROOT="${DATA_ROOT:-$REPO/data}"
OUT="${1:-}"
DRY_RUN="${2:-}"
if [[ -z "$OUT" || ( -n "$DRY_RUN" && "$DRY_RUN" != "--dry-run" ) || $# -gt 2 ]]; then
    echo "error: usage: benchmarks/gpu_check.sh OUT_DIR [--dry-run]" >&2
    exit 2
fi
if [[ -z "$DRY_RUN" ]] && ! "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    echo "error: benchmarks/gpu_check.sh: no CUDA device here; expected a CUDA machine, or --dry-run for the CPU" >&2
    exit 2
fi
if [[ ! -f "$DATA_ROOT/qm9_structures.npz" ]]; then
    echo "error: benchmarks/gpu_check.sh: $DATA_ROOT/qm9_structures.npz not found; expected the QM9 cache there" >&2
    exit 2
fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/gpu_check.log"
STEPS="$OUT/steps.tsv"
: > "$STEPS"
cd "$REPO" || exit 2

if [[ -n "$DRY_RUN" ]]; then
    DEVICE=cpu
    ENCODERS=(--molecules 40 --sizes default large --compile off --repeats 1)
    SUBSET=(--max-molecules 200)
    GRID=(--ns 10 20 --seeds 0 --mlp-epochs 3)
    EXPORT=(--max-molecules 8 --batch-size 4)
    BENCH=(--help)
    LIMIT_SCALE=10  # a dry run checks that each step runs, on whatever CPU: its time limits only stop a hang
else
    DEVICE=cuda
    ENCODERS=(--molecules 0 --sizes default large --compile both --repeats 1)
    SUBSET=()
    GRID=(--seeds 0 1 2 3 4)  # the default grid at 5 seeds; its 20 KRR / 10 MLP seeds scale it linearly
    EXPORT=(--max-molecules 20000 --batch-size 1000)
    BENCH=(--out "$OUT/bench.json")
    LIMIT_SCALE=1
fi

run_step() {  # NAME LIMIT_S COMMAND...: run it under a time limit, log its output, record seconds and status
    local name="$1" limit=$(( $2 * LIMIT_SCALE ))
    shift 2
    echo "=== $name (limit $limit s): $*" >> "$LOG"
    local start="$EPOCHREALTIME" status
    timeout "$limit" "$@" >> "$LOG" 2>&1
    status=$?
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$start" "$EPOCHREALTIME" "$limit" >> "$STEPS"
}

{ echo "gpu_check $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null) device $DEVICE ${DRY_RUN}"
  "$PYTHON" -m pip list 2>/dev/null | grep -iE "^(torch|e3nn|sevenn|numpy) " ; nvidia-smi -L 2>/dev/null; } >> "$LOG"
if ! "$PYTHON" -c "import sevenn" 2>/dev/null && [[ -d "$REPO/wheels" ]]; then
    "$PYTHON" -m pip install --no-index --find-links "$REPO/wheels" sevenn >> "$LOG" 2>&1
fi

run_step encoders 150 "$PYTHON" benchmarks/bench_encoders.py "${ENCODERS[@]}" --data-root "$DATA_ROOT" \
    --device "$DEVICE" --out "$OUT/encoders.json"
run_step latents 80 "$PYTHON" train_encoder_qm9.py --epochs 1 "${SUBSET[@]}" --data-root "$DATA_ROOT" \
    --device "$DEVICE" --out-dir "$OUT/encoder"
run_step grid 100 "$PYTHON" sampling_mlp_experiment.py --latents "$OUT/encoder/latents_qm9.npz" "${GRID[@]}" \
    --device "$DEVICE" --out-dir "$OUT/sampling"
run_step export 60 "$PYTHON" export_pretrained_latents.py "${EXPORT[@]}" --set PRETRAINED_WORKERS=1 \
    --data-root "$DATA_ROOT" --device "$DEVICE" --out-dir "$OUT/export"
run_step bench 70 "$PYTHON" benchmarks/bench.py "${BENCH[@]}"

"$PYTHON" - "$OUT" "$DEVICE" <<'PY'
import json, re, sys
from pathlib import Path

out, device = Path(sys.argv[1]), sys.argv[2]


def lines(path, pattern):
    return [line.split(" INFO ", 1)[-1] for line in path.read_text().splitlines() if re.search(pattern, line)] \
        if path.is_file() else []


def loaded(path):
    return json.loads(path.read_text()) if path.is_file() else None


steps = []
for row in (out / "steps.tsv").read_text().splitlines():
    name, status, start, end, limit = row.split("\t")
    steps.append({"name": name, "status": int(status), "seconds": float(end) - float(start), "limit_s": int(limit),
                  "timed_out": status == "124"})
report = {"device": device, "steps": steps, "encoders": loaded(out / "encoders.json"),
          "training": lines(out / "encoder" / "train.log", r"epoch|latents|descriptor"),
          "grid": lines(out / "sampling" / "sampling.log", r"stage|total"),
          "export": lines(out / "export" / "export.log", r"structures/s"), "bench": loaded(out / "bench.json")}
(out / "gpu_check.json").write_text(json.dumps(report, indent=1))
print(json.dumps([(s["name"], s["status"], round(s["seconds"], 1)) for s in steps]))
PY
