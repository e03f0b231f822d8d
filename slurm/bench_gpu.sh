#!/bin/bash
# GPU benchmark on one GPU, OPT shapes with random weights (speed does not depend on the values), in parts:
#   trace    opt-1.3b batch 2, ours bf16 ZeRO-2, eager and with compiled decoder layers (train.compile):
#            torch.profiler over 3 steps, printed as tables (device time by kernel family, host gaps
#            between kernels, each package's share: ours, transformers, autograd, DeepSpeed), plus
#            operators and host-device syncs per step (eager)                           (~2.5 min)
#   table    opt-1.3b batch 2 (the paper's): reference loop vs ours bf16 ZeRO-2 (one-sync, DeepSpeed's
#            optimizer step, compiled layers) / ZeRO-3 / LoRA / LoRA on 8-bit; opt-2.7b batch 2: ours
#            bf16 ZeRO-2 (all weights + reference; eager and compiled), with 8-bit AdamW under ZeRO-2
#            and ZeRO-3, and ZeRO-3 with CPU offload (< 40 GB goal); opt-6.7b LoRA (< 24 GB)  (~7.5 min)
#   batches  opt-1.3b ours bf16 at batch 2 .. 64: MFU by batch, the smallest arithmetic-bound batch   (~4 min)
#   shared   opt-1.3b ours bf16, K = 1, 2, 4 benchmark processes on the GPU at once (runs_per_gpu: K):
#            grid points per GPU-hour for runs of STEPS_PER_RUN steps; K=4 may not fit (reported)  (~3 min)
# Usage: bash slurm/bench_gpu.sh | make bench-gpu | sbatch slurm/bench_gpu.sh; PARTS="trace batches" picks parts
# Environment: PARTS (default: trace table batches shared), FORGET / RETAIN (data files; default the demo's),
#   MAX_LENGTH (default 256), STEPS / WARMUP (timed / untimed steps, default 5 / 2), BENCH_OUT (default
#   runs/bench), SCALE_DOWN (divide the shapes by this: a rehearsal on a CPU, e.g. 32), BATCHES (default
#   "2 4 8 16 32 64"), SHARED_K (default "1 2 4"), SHARED_VARIANT (default ours-bf16), STEPS_PER_RUN (steps of
#   one grid point, default 1000: configs/harmful_opt1.3b.yaml).
# Writes BENCH_OUT/<name>.json (every measurement) and .log; prints one table per run. A run that
# fails is reported and the next one still runs; the exit status says whether any failed.
#SBATCH --job-name=unlearn-bench
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=16
#SBATCH --time=00:20:00
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT_DIR=${BENCH_OUT:-runs/bench}
mkdir -p "$OUT_DIR"
DATA=()
[ -n "${FORGET:-}" ] && DATA+=(--forget "$FORGET")
[ -n "${RETAIN:-}" ] && DATA+=(--retain "$RETAIN")
COMMON=(--steps "${STEPS:-5}" --warmup "${WARMUP:-2}" --max-length "${MAX_LENGTH:-256}" --scale-down "${SCALE_DOWN:-1}")
failed=0

wanted() { [[ " ${PARTS:-trace table batches shared} " == *" $1 "* ]]; }

bench() {  # name, then launch/bench.py arguments
    local name=$1; shift
    local t0=$SECONDS
    if "$PY" launch/bench.py "${COMMON[@]}" "${DATA[@]}" --json "$OUT_DIR/$name.json" "$@" > "$OUT_DIR/$name.log" 2>&1; then
        sed -n '/^opt-[0-9.]*b (x1\//,$p' "$OUT_DIR/$name.log"
    else
        echo "$name: FAILED"; tail -n 20 "$OUT_DIR/$name.log"; failed=1
    fi
    echo "($name: $((SECONDS - t0)) s)"
}

if wanted trace; then
    bench opt-1.3b-trace --preset opt-1.3b --variants ours-bf16,ours-bf16-compile --trace-steps 3 \
        --trace-dir "$OUT_DIR/traces"
    "$PY" -c "import json, sys; r = json.load(open(sys.argv[1]))['results'][0]['host_cost']
print('host cost per step:', r['ops'], 'operators', r['ops_by_owner'], '|', r['syncs'], 'syncs', r['syncs_by_site'])" \
        "$OUT_DIR/opt-1.3b-trace.json" || failed=1
fi

if wanted table; then
    bench opt-1.3b --preset opt-1.3b \
        --variants baseline,ours-bf16,ours-bf16-dsstep,ours-bf16-compile,ours-zero3,ours-lora,ours-lora-8bit
    bench opt-2.7b --preset opt-2.7b \
        --variants ours-bf16,ours-bf16-compile,ours-bf16-adam8bit,ours-zero3-adam8bit,ours-zero3-offload
    bench opt-6.7b --preset opt-6.7b --variants ours-lora,ours-lora-8bit
fi

if wanted batches; then
    files=()
    for b in ${BATCHES:-2 4 8 16 32 64}; do
        bench "opt-1.3b-batch$b" --preset opt-1.3b --batch "$b" --variants ours-bf16 --in-process
        files+=("$OUT_DIR/opt-1.3b-batch$b.json")
    done
    "$PY" -m unlearn.bench.scaling batches ours-bf16 "${files[@]}" || failed=1
fi

if wanted shared; then
    variant=${SHARED_VARIANT:-ours-bf16}
    bench opt-1.3b-model --preset opt-1.3b --variants "$variant" --steps 1 --warmup 0 > /dev/null  # build it once
    groups=()
    for k in ${SHARED_K:-1 2 4}; do
        pids=(); files=()
        for i in $(seq "$k"); do   # K processes at once on the one GPU
            f="$OUT_DIR/opt-1.3b-shared$k-$i.json"; files+=("$f")
            "$PY" launch/bench.py "${COMMON[@]}" "${DATA[@]}" --preset opt-1.3b --variants "$variant" --in-process \
                --json "$f" > "${f%.json}.log" 2>&1 & pids+=($!)
        done
        for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
        groups+=("$k=$(IFS=,; echo "${files[*]}")")
    done
    "$PY" -m unlearn.bench.scaling shared "$variant" "${STEPS_PER_RUN:-1000}" "${groups[@]}" || failed=1
fi
exit $failed
