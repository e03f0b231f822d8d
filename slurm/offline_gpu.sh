#!/bin/bash
# The GPU benchmark (slurm/bench_gpu.sh) on a GPU machine that cannot reach a package index, with the
# Python that machine has (its own torch): the packages it lacks or has in other versions come as wheels
# made beforehand on a machine that can, in the checkout's ignored .wheels/:
#   make gpu-wheels                      # here: DeepSpeed, transformers, peft, datasets, submitit, ... (20 MB)
#   make gpu-wheels GPU_WHEELS_8BIT=1    # also bitsandbytes (+43 MB: the 8-bit variants)
#   bash slurm/offline_gpu.sh [PARTS]    # there: install them (no index), build the demo data, run
# PARTS: bench_gpu.sh's parts (default "trace table"); OUT (default runs/offline-gpu) gets bench.tar.gz
# (every JSON and log, no profiler traces) and the printed tables; WHEELS (default .wheels) the wheels.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-runs/offline-gpu}
WHEELS=${WHEELS:-.wheels}
if ! ls "$WHEELS"/*.whl > /dev/null 2>&1; then
    echo "error: no wheels in $WHEELS/; expected the output of 'make gpu-wheels' (made where an index is reachable)" >&2
    exit 2
fi
"$PY" -m pip install -q --no-index --no-deps "$WHEELS"/*.whl || exit 2
mkdir -p "$OUT"
"$PY" -c "import deepspeed, datasets, submitit" || exit 2
[ -f .cache/demo/harmful.jsonl ] || "$PY" -m unlearn.demo .cache/demo || exit 2
PYTHON="$PY" BENCH_OUT="$OUT/bench" PARTS="${1:-trace table}" bash slurm/bench_gpu.sh | tee "$OUT/tables.txt"
rc=${PIPESTATUS[0]}
tar -czf "$OUT/bench.tar.gz" --exclude=traces -C "$OUT" bench
exit "$rc"
