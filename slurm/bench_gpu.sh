#!/bin/bash
# GPU benchmark: the reference loop vs ours (bf16 ZeRO-2/3, ZeRO-3 offload, LoRA, LoRA on 8-bit)
# for OPT-1.3b, 2.7b and 6.7b shapes with random weights, on one GPU.
#   bash slurm/bench_gpu.sh          (or: sbatch slurm/bench_gpu.sh; or: make bench-gpu)
# Reports: runs/bench/<preset>.json and a table per preset on stdout.
#SBATCH --job-name=unlearn-bench
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=16
#SBATCH --time=00:15:00
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
mkdir -p runs/bench
for preset in opt-1.3b opt-2.7b opt-6.7b; do
    "$PY" launch/bench.py --preset "$preset" --steps "${STEPS:-5}" --warmup "${WARMUP:-2}" \
        --json "runs/bench/$preset.json" | tail -n 12
done
