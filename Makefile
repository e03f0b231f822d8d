# Two commands on a fresh machine with Python 3.11:  `make demo`  and  `make test`.
# pip, not uv: only pip finds the torch 2.13.0 CPU wheel on this disk.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   := .cache/demo
DS     ?= ds_configs/zero2.json
export PATH := $(abspath $(BIN)):$(PATH)
# The ranks' rendezvous port: a free one, picked anew for each deepspeed command (DeepSpeed's own
# default, 29500, may be held by another program or run); PORT=N to choose it.
PORT ?= $(shell $(PYTHON) -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
# DeepSpeed's launcher at warning level: its INFO lines (world info, spawn, kill) would bury the job's own
# output and its one-line errors.
DEEPSPEED ?= deepspeed --log_level warning --master_port $(PORT)

.PHONY: setup demo demo-base copyright-demo harmful-demo tofu-mini test test-fast clean-demo bench bench-gpu gpu-wheels slurm-up slurm-down

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Demo assets: generated text, offline-trained tokenizer, random tiny OPT (seconds).
$(DEMO)/init/config.json: $(VENV)/.installed unlearn/demo.py
	$(BIN)/python -m unlearn.demo $(DEMO)

# Stage 1: fine-tune the tiny OPT until it reproduces the demo book; cached as $(DEMO)/base.
$(DEMO)/base/COMPLETE: $(DEMO)/init/config.json configs/demo_finetune.yaml
	$(DEEPSPEED) launch/finetune.py --ds_config $(DS) --config configs/demo_finetune.yaml --overwrite --no_report

# The oracle: the same stage 1 on the retain text only, a model that never saw the book (its row in
# the demo's table is what unlearning aims at); cached as $(DEMO)/oracle.
$(DEMO)/oracle/COMPLETE: $(DEMO)/init/config.json configs/demo_finetune.yaml
	$(DEEPSPEED) launch/finetune.py --ds_config $(DS) --config configs/demo_finetune.yaml \
	    data.retain=$(DEMO)/retain.txt run.name=demo-oracle run.export_dir=$(DEMO)/oracle --overwrite --no_report

demo-base: $(DEMO)/base/COMPLETE $(DEMO)/oracle/COMPLETE

# The main job on the embedded default: unlearn the book, print the before/after/oracle table.
demo: $(DEMO)/base/COMPLETE $(DEMO)/oracle/COMPLETE
	$(DEEPSPEED) launch/unlearn.py --ds_config $(DS) run.oracle=$(DEMO)/oracle

# The copyright pipeline at CPU scale: stage 1 teaches the tiny OPT a public-domain book excerpt,
# stage 2 unlearns it with LoRA while a retain excerpt keeps its perplexity; the oracle is stage 1 on the
# retain excerpt alone (~3 minutes).
BOOKS ?= ../shared/data/books
COPYRIGHT := .cache/copyright-demo
copyright-demo: $(DEMO)/init/config.json
	@test -f $(BOOKS)/alice_in_wonderland.txt || { echo "copyright-demo needs $(BOOKS) (public-domain books; BOOKS=...)"; exit 2; }
	mkdir -p $(COPYRIGHT)
	head -c 3000 $(BOOKS)/alice_in_wonderland.txt > $(COPYRIGHT)/book.txt
	head -c 3000 $(BOOKS)/pride_and_prejudice.txt > $(COPYRIGHT)/other.txt
	$(DEEPSPEED) launch/finetune.py --ds_config $(DS) --config configs/copyright_demo_finetune.yaml --overwrite
	$(DEEPSPEED) launch/finetune.py --ds_config $(DS) --config configs/copyright_demo_finetune.yaml \
	    data.retain=$(COPYRIGHT)/other.txt run.name=copyright-demo-oracle run.export_dir=$(COPYRIGHT)/oracle \
	    --overwrite --no_report
	$(DEEPSPEED) launch/unlearn.py --ds_config $(DS) --config configs/copyright_demo.yaml --overwrite

# The paper's harmful experiment at CPU scale: stage 1 teaches the tiny OPT the demo's harmful answers
# and normal QA, a tiny harm judge learns the demo's safety labels (response only), stage 2 runs the
# paper's objective on 16 harmful prompts, and every checkpoint is judged on those and on the 8 held out,
# beside the oracle: stage 1 on the normal QA alone (never taught a harmful answer).
HARMFUL := .cache/harmful-demo
harmful-demo: $(DEMO)/init/config.json
	$(DEEPSPEED) launch/finetune.py --ds_config $(DS) --config configs/harmful_demo_finetune.yaml --overwrite --no_report
	$(DEEPSPEED) launch/finetune.py --ds_config $(DS) --config configs/harmful_demo_finetune.yaml \
	    data.retain=$(DEMO)/normal.jsonl run.name=harmful-demo-oracle run.export_dir=$(HARMFUL)/oracle \
	    --overwrite --no_report
	$(BIN)/python launch/train_judge.py --data $(DEMO)/harm_labels.csv --base $(DEMO)/init --out $(HARMFUL)/judge \
	    --epochs 5 --batch_size 8 --lr 1e-3 --heldout_fraction 0.2
	$(DEEPSPEED) launch/unlearn.py --ds_config $(DS) --config configs/demo_harmful.yaml --overwrite --no_report
	$(BIN)/python launch/evaluate.py --run runs/demo-harmful --suite harmful,utility --judge $(HARMFUL)/judge \
	    --judge_labels none --harmful_prompts $(DEMO)/harmful_heldout.jsonl --truthfulqa none
# TOFU at CPU scale (unlearn/tofu_mini.py): the tiny OPT learns forget01 + a retain subset, a retain model
# learns the subset alone, then GA, NPO, SimNPO, AltPO, WHP and Task Vector unlearn forget01 (presets in
# configs/methods/); each eval.json carries forget_quality and model utility (model_utility_8 without
# retain_perturbed), and the last line prints the README table. Scaled down here only: --limit 40 in TOFU_EVAL.
TOFU ?= ../shared/data/tofu
TOFU_MINI := .cache/tofu-mini
TOFU_EVAL = --suite tofu --tofu_forget forget01 --tofu_data $(TOFU) --limit 40 --force
TOFU_STAGE2 = --ds_config $(DS) --config configs/tofu/mini_unlearn.yaml
tofu-mini: $(VENV)/.installed
	@test -f $(TOFU)/forget01.json || { echo "tofu-mini needs $(TOFU) (the TOFU JSON files; TOFU=...)"; exit 2; }
	$(BIN)/python -m unlearn.tofu_mini $(TOFU_MINI) --tofu $(TOFU)
	$(DEEPSPEED) launch/finetune.py --ds_config $(DS) --config configs/tofu/mini_finetune.yaml --overwrite --no_report
	$(DEEPSPEED) launch/finetune.py --ds_config $(DS) --config configs/tofu/mini_finetune.yaml \
	    --config configs/tofu/mini_retain.yaml --overwrite --no_report
	$(BIN)/python launch/evaluate.py $(TOFU_MINI)/retain $(TOFU_EVAL)
	$(BIN)/python launch/evaluate.py $(TOFU_MINI)/full $(TOFU_EVAL) --retain_model $(TOFU_MINI)/retain
	for m in ga npo simnpo; do \
	  $(DEEPSPEED) launch/unlearn.py $(TOFU_STAGE2) --config configs/methods/$$m.yaml run.name=tofu-mini-$$m \
	    --overwrite --no_report || exit 1; done
	$(BIN)/python launch/generate_alternates.py --config configs/tofu/mini_unlearn.yaml --out $(TOFU_MINI)/alternates.jsonl
	$(DEEPSPEED) launch/unlearn.py $(TOFU_STAGE2) --config configs/methods/altpo.yaml \
	    data.forget=$(TOFU_MINI)/alternates.jsonl run.name=tofu-mini-altpo --overwrite --no_report
	$(DEEPSPEED) launch/finetune.py $(TOFU_STAGE2) --config configs/tofu/mini_reinforce.yaml --overwrite --no_report
	$(BIN)/python launch/whp_targets.py --config configs/tofu/mini_unlearn.yaml --config configs/methods/whp.yaml \
	    --config configs/tofu/mini_whp.yaml
	$(DEEPSPEED) launch/unlearn.py $(TOFU_STAGE2) --config configs/methods/whp.yaml --config configs/tofu/mini_whp.yaml \
	    run.name=tofu-mini-whp --overwrite --no_report
	$(DEEPSPEED) launch/task_vector.py $(TOFU_STAGE2) --config configs/methods/task_vector.yaml \
	    run.name=tofu-mini-tv --overwrite --no_report
	for m in ga npo simnpo altpo whp tv; do \
	  $(BIN)/python launch/evaluate.py $$(ls -d runs/tofu-mini-$$m/checkpoints/step-* | tail -1) $(TOFU_EVAL) \
	    --retain_model $(TOFU_MINI)/retain || exit 1; done
	$(BIN)/python -m unlearn.tofu_mini --table $(TOFU_MINI) $(foreach m,ga npo simnpo altpo whp tv,runs/tofu-mini-$(m))

# tests/test_slurm.py needs a local SLURM cluster: started here when we are root (daemons without systemd;
# the script apt-installs SLURM if missing). Elsewhere those tests skip; in CI (CI=true) they fail instead.
test: $(VENV)/.installed slurm-up
	$(BIN)/python -m pytest -q

slurm-up:
	@if [ "$$(id -u)" != 0 ]; then echo "not root: no local SLURM cluster, tests marked slurm will skip"; \
	elif ! slurm/local-cluster.sh start; then \
	  if [ "$${CI:-}" = true ]; then exit 1; fi; echo "local SLURM did not start: tests marked slurm will skip"; fi

slurm-down:
	slurm/local-cluster.sh stop

test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m "not slow and not slurm"

# Our unlearning step vs the paper's reference loop on this machine (JSON + table; see launch/bench.py).
bench: $(VENV)/.installed
	$(BIN)/python launch/bench.py --json runs/bench/$(or $(PRESET),tiny).json $(if $(PRESET),--preset $(PRESET))

# One GPU: OPT-1.3b/2.7b/6.7b shapes with random weights: trace, table, MFU by batch, K runs per GPU
# (about 15 minutes in all; PARTS="trace table" picks parts, see slurm/bench_gpu.sh).
bench-gpu: $(VENV)/.installed
	bash slurm/bench_gpu.sh

# Wheels for a GPU machine without a package index (slurm/offline_gpu.sh): what its Python lacks, or has in
# another version than pinned here (its torch is kept), for GPU_PYTHON on x86_64 Linux; GPU_WHEELS_8BIT=1
# adds bitsandbytes.
GPU_PYTHON ?= 3.12
GPU_WHEELS := transformers==5.24.0 peft==0.21.2 datasets==5.2.0 submitit==1.5.4 pydantic==2.14.4 \
	pydantic-core==2.50.5 annotated-types typing-inspection hjson multiprocess dill \
	$(if $(GPU_WHEELS_8BIT),bitsandbytes==0.50.2)
gpu-wheels: $(VENV)/.installed
	rm -rf .wheels && mkdir -p .wheels
	$(BIN)/pip download -q -d .wheels --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) \
	    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64 \
	    --platform manylinux_2_28_x86_64 $(GPU_WHEELS)
	$(BIN)/pip wheel -q -w .wheels --no-deps deepspeed==0.19.8
	@du -sh .wheels

clean-demo:
	rm -rf $(DEMO) runs/demo-base
