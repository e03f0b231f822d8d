#!/bin/bash
# GPU benchmark on one GPU, OPT shapes with random weights (speed does not depend on the values):
#   opt-1.3b  batch 2 (the paper's): reference loop vs ours bf16 ZeRO-2 / ZeRO-3 / LoRA / LoRA on 8-bit
#   opt-1.3b  batch 16: ours bf16 ZeRO-2 / ZeRO-3 (model FLOPs utilisation at a useful batch)
#   opt-2.7b  ours bf16 ZeRO-2 (all weights + reference) and ZeRO-3 with CPU offload (< 40 GB goal)
#   opt-6.7b  ours LoRA and LoRA on an 8-bit base (< 24 GB goal)
# Usage: bash slurm/bench_gpu.sh | make bench-gpu | sbatch slurm/bench_gpu.sh  (about 7 minutes)
# Writes runs/bench/<name>.json (every measurement) and .log; prints one table per run.
#SBATCH --job-name=unlearn-bench
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=16
#SBATCH --time=00:15:00
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
mkdir -p runs/bench

bench() {  # name, then launch/bench.py arguments
    local name=$1; shift
    "$PY" launch/bench.py --steps "${STEPS:-5}" --warmup "${WARMUP:-2}" --json "runs/bench/$name.json" "$@" \
        > "runs/bench/$name.log" 2>&1 || { tail -n 20 "runs/bench/$name.log"; return 1; }
    sed -n '/^opt-[0-9.]*b (x1/,$p' "runs/bench/$name.log"
}

bench opt-1.3b --preset opt-1.3b
bench opt-1.3b-batch16 --preset opt-1.3b --batch 16 --variants ours-bf16,ours-zero3
bench opt-2.7b --preset opt-2.7b
bench opt-6.7b --preset opt-6.7b
