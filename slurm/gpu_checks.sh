#!/bin/bash
# The GPU paths on one GPU, end to end (about 6 minutes on an H200):
#   demo        `make demo`'s recipe: demo assets, stage 1, then the README's main command on ZeRO-2 and
#               ZeRO-3 (bf16, the default where the GPU has it)
#   lora-8bit   stage 2 with LoRA adapters on a frozen 8-bit (bitsandbytes) base, then its evaluation
#   judge       train_judge.py on the GPU, then evaluate.py --run judging lora-8bit's checkpoints with it
#   tests       the fast suite (-m "not slow and not slurm and not multirank"): every path that picks CUDA
#               when it is there (packed step's 4D mask under sdpa, generative judge, RMU in bf16, ...)
#   bench       OPT-1.3b shape, batch 2: the reference loop vs ours in bf16 and LoRA on an 8-bit base
# Usage: bash slurm/gpu_checks.sh | sbatch slurm/gpu_checks.sh | bash slurm/gpu_checks.sh --dry-run (print the
#   commands, run nothing: tests/test_docs.py checks each one through its launcher's parser)
# Environment: GPU_OUT (logs, default runs/gpu-checks), CHECKS (space list, default all of the above),
#   FORGET / RETAIN (bench data, default the demo's), PYTEST_WORKERS (default 8, where pytest-xdist is installed).
# Each check writes GPU_OUT/<name>.log and prints one line; a check that fails prints its log's tail and
# the next one still runs; the exit status says whether any failed.
#SBATCH --job-name=unlearn-gpu-checks
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=16
#SBATCH --time=00:15:00
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PATH="$(dirname "$(command -v "$PY")"):$PATH"
OUT_DIR=${GPU_OUT:-runs/gpu-checks}
DEMO=.cache/demo
DS2=ds_configs/zero2.json
failed=0
DRY=0
[ "${1:-}" = --dry-run ] && DRY=1
if [ $DRY = 0 ] && ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    echo "error: slurm/gpu_checks.sh needs a CUDA GPU; expected torch under $PY to see one" >&2; exit 2
fi
[ $DRY = 1 ] || mkdir -p "$OUT_DIR"

check() {  # name, timeout in seconds, command...
    local name=$1 limit=$2; shift 2
    if [ $DRY = 1 ]; then echo "$*"; return; fi
    local t0=$SECONDS
    if timeout "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1; then
        echo "$name: ok ($((SECONDS - t0)) s)"
    else
        echo "$name: FAILED (exit $?, $((SECONDS - t0)) s)"; tail -n 25 "$OUT_DIR/$name.log"; failed=1
    fi
}

show() {  # a check's log lines worth reading: sed arguments, then the check's name
    [ $DRY = 1 ] || sed -n "$1" "$OUT_DIR/$2.log"
}

wanted() { [[ " ${CHECKS:-demo lora-8bit judge tests bench} " == *" $1 "* ]]; }

check env 60 "$PY" -c "import torch, deepspeed, transformers, peft, bitsandbytes
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0),
      'bf16', torch.cuda.is_bf16_supported(), 'deepspeed', deepspeed.__version__,
      'transformers', transformers.__version__, 'peft', peft.__version__, 'bitsandbytes', bitsandbytes.__version__)"
show p env
check demo-assets 120 "$PY" -m unlearn.demo "$DEMO"

if wanted demo; then
    check demo-finetune 300 deepspeed launch/finetune.py --ds_config "$DS2" --config configs/demo_finetune.yaml \
        --overwrite --no_report
    check demo-unlearn-zero2 300 deepspeed launch/unlearn.py --ds_config "$DS2"   # the README's main command
    show '/^metric/,/^$/p' demo-unlearn-zero2
    check demo-unlearn-zero3 300 deepspeed launch/unlearn.py --ds_config ds_configs/zero3.json \
        run.name=demo-zero3 --overwrite --no_report
fi

if wanted lora-8bit; then  # on the demo base (stage 1 of `demo`)
    check lora-8bit 300 deepspeed launch/unlearn.py --ds_config "$DS2" run.name=gpu-lora-8bit model.lora=true \
        model.load_in_8bit=true model.name_or_path="$DEMO/base" optim.lr=1e-3 train.max_steps=20 --overwrite
fi

if wanted judge; then
    check judge-train 300 "$PY" launch/train_judge.py --data "$DEMO/harm_labels.csv" --base "$DEMO/init" \
        --out "$OUT_DIR/judge" --epochs 2 --batch_size 8 --lr 1e-3 --heldout_fraction 0.2
    check judge-eval 300 "$PY" launch/evaluate.py --run runs/gpu-lora-8bit --suite harmful,utility --judge "$OUT_DIR/judge" \
        --judge_labels none --harmful_prompts "$DEMO/harmful_heldout.jsonl" --truthfulqa none --force
fi

if wanted tests; then
    WORKERS=()  # pytest-xdist where it is installed (not one of our dependencies)
    "$PY" -c "import xdist" 2>/dev/null && WORKERS=(-n "${PYTEST_WORKERS:-8}")
    check tests 240 "$PY" -m pytest -q -p no:cacheprovider -m "not slow and not slurm and not multirank" \
        "${WORKERS[@]}" --timeout 240 -rfE
    show '/short test summary/,$p' tests
fi

if wanted bench; then
    DATA=()
    [ -n "${FORGET:-}" ] && DATA+=(--forget "$FORGET")
    [ -n "${RETAIN:-}" ] && DATA+=(--retain "$RETAIN")
    check bench 240 "$PY" launch/bench.py --preset opt-1.3b --variants baseline,ours-bf16,ours-lora-8bit \
        --steps 3 --warmup 1 "${DATA[@]}" --json "$OUT_DIR/bench.json"
    show '/^opt-[0-9.]*b (x1\//,$p' bench
fi
exit $failed
