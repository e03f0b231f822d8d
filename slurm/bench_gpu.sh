#!/bin/bash
# GPU benchmark on one GPU, OPT shapes with random weights (speed does not depend on the values):
#   opt-1.3b  batch 2 (the paper's): reference loop vs ours bf16 ZeRO-2 / ZeRO-3 / LoRA / LoRA on 8-bit
#   opt-1.3b  batch 16: ours bf16 ZeRO-2 / ZeRO-3 (model FLOPs utilisation at a useful batch)
#   opt-6.7b  ours LoRA and LoRA on an 8-bit base (< 24 GB goal)
#   opt-2.7b  ours bf16 ZeRO-2 (all weights + reference), with 8-bit AdamW under ZeRO-2 and ZeRO-3,
#             and ZeRO-3 with CPU offload (< 40 GB goal)
# Usage: bash slurm/bench_gpu.sh | make bench-gpu | sbatch slurm/bench_gpu.sh  (about 7 minutes)
# Environment: FORGET / RETAIN (data files; default the demo's), MAX_LENGTH (default 256),
#   STEPS / WARMUP (timed / untimed steps, default 5 / 2), BENCH_OUT (default runs/bench),
#   SCALE_DOWN (divide the shapes by this: a rehearsal on a CPU, e.g. 32).
# Writes BENCH_OUT/<name>.json (every measurement) and .log; prints one table per run. A run that
# fails is reported and the next one still runs; the exit status says whether any failed.
#SBATCH --job-name=unlearn-bench
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=16
#SBATCH --time=00:15:00
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT_DIR=${BENCH_OUT:-runs/bench}
mkdir -p "$OUT_DIR"
DATA=()
[ -n "${FORGET:-}" ] && DATA+=(--forget "$FORGET")
[ -n "${RETAIN:-}" ] && DATA+=(--retain "$RETAIN")
failed=0

bench() {  # name, then launch/bench.py arguments
    local name=$1; shift
    local t0=$SECONDS
    if "$PY" launch/bench.py --steps "${STEPS:-5}" --warmup "${WARMUP:-2}" --max-length "${MAX_LENGTH:-256}" \
            --scale-down "${SCALE_DOWN:-1}" "${DATA[@]}" --json "$OUT_DIR/$name.json" "$@" > "$OUT_DIR/$name.log" 2>&1; then
        sed -n '/^opt-[0-9.]*b (x1\//,$p' "$OUT_DIR/$name.log"
    else
        echo "$name: FAILED"; tail -n 20 "$OUT_DIR/$name.log"; failed=1
    fi
    echo "($name: $((SECONDS - t0)) s)"
}

bench opt-1.3b --preset opt-1.3b --variants baseline,ours-bf16,ours-zero3,ours-lora,ours-lora-8bit
bench opt-1.3b-batch16 --preset opt-1.3b --batch 16 --variants ours-bf16,ours-zero3
bench opt-6.7b --preset opt-6.7b --variants ours-lora,ours-lora-8bit
bench opt-2.7b --preset opt-2.7b --variants ours-bf16,ours-bf16-adam8bit,ours-zero3-adam8bit,ours-zero3-offload
exit $failed
