"""Trains several tiny methods in one DeepSpeed launch and writes their loss trajectories.

    deepspeed --num_gpus N tests/parity_driver.py --ds_config F --demo DIR --out OUT.json

Run by tests/test_parity.py under ZeRO-2/3 with 1 and 2 ranks: one process start (~15 s) covers
every method, and the trajectories are read back from the runs' real TensorBoard files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# name -> overrides on top of COMMON; every method of the registry should appear here.
METHODS: dict[str, list[str]] = {
    "ga+nll": ["method.forget_loss=ga", "method.retain_loss=nll"],
    "npo+kl/joint": ["method.forget_loss=npo", "method.retain_loss=kl", "method.schedule=joint"],
    "simnpo+nll": ["method.forget_loss=simnpo", "method.retain_loss=nll"],
    # NPO's gradient sums over answer tokens (grad norm ~100 on a random model): short QA answers
    # and weight 0.1 keep its float noise well under an absolute tolerance of 1e-5
    "npo+kl": ["method.forget_loss=npo", "method.forget_weight=0.1", "method.retain_loss=kl",
               "data.forget={demo}/harmful.jsonl", "data.retain={demo}/normal.jsonl"],
    # the paper's objective on QA data: random answers drawn per step for the forget batch's prompts
    "ga+kl+mismatch/joint": ["method.forget_loss=ga", "method.forget_weight=0.5", "method.retain_loss=kl",
                             "method.mismatch_weight=1", "method.schedule=joint", "data.num_random_answers=3",
                             "data.forget={demo}/harmful.jsonl", "data.retain={demo}/normal.jsonl"],
    "wga+nll": ["method.forget_loss=wga", "method.retain_loss=nll"],
    "satimp+nll/joint": ["method.forget_loss=satimp", "method.retain_loss=nll", "method.schedule=joint"],
    "undial+nll": ["method.forget_loss=undial", "method.retain_loss=nll"],
    "ceu+nll/joint": ["method.forget_loss=ceu", "method.retain_loss=nll", "method.schedule=joint"],
    # alternate answers to the forget prompts: "I don't know" (idk) or a column's (dpo; written by the driver)
    "idknll+nll": ["method.forget_loss=idknll", "data.forget={demo}/harmful.jsonl", "data.retain={demo}/normal.jsonl"],
    # IdkDPO's gradient is a near-cancelling difference of two answers' gradients, scaled by 2/beta = 20:
    # it amplifies fused AdamW's last-bit differences between layouts (the kernel's vector/tail split
    # follows each rank's partition; the unfused optimizer gives identical ZeRO-2 x1/x2 trajectories)
    # to 3e-5 by step 6 at lr 1e-3 and 4e-5 (grad norm) at step 5 at 3e-4; 4 steps at 3e-4 stay under 5e-7
    "idkdpo+nll/joint": ["method.forget_loss=idkdpo", "method.schedule=joint", "method.forget_weight=0.1",
                         "optim.lr=3e-4", "train.max_steps=4", "data.forget={demo}/harmful.jsonl",
                         "data.retain={demo}/normal.jsonl"],
    "dpo+kl": ["method.forget_loss=dpo", "method.forget_weight=0.1", "method.retain_loss=kl",
               "data.forget={out}/dpo.jsonl", "data.forget_alternate=alternate", "data.retain={demo}/normal.jsonl"],
    # PDU: lambda moves every step (eps below the retain NLL), joint as in the paper
    "pdu+nll/joint": ["method.forget_loss=pdu", "method.pdu_eps=3.0", "method.pdu_warmup_epochs=0",
                      "method.schedule=joint"],
    # RMU on the 4-layer model: steer layer 2, train fc2 of layers 1-2; its ZeRO-3 reference is an engine
    "rmu+rmu/joint": ["method.forget_loss=rmu", "method.retain_loss=rmu", "method.schedule=joint",
                      "method.rmu_layer=2", "method.rmu_train_layers=[1,2]"],
    "lora/rmu+rmu": ["model.lora=true", "model.lora_target_modules=[q_proj,fc2]", "method.forget_loss=rmu",
                     "method.retain_loss=rmu", "method.rmu_layer=2", "method.rmu_train_layers=[1,2]"],
    # lr 3e-3: at 1e-2 Adam amplifies the layouts' float noise to 1e-4 within 6 steps on some CPUs
    "lora/npo+kl/joint": ["model.lora=true", "method.forget_loss=npo", "method.retain_loss=kl",
                          "method.schedule=joint", "optim.lr=3e-3"],
}
# the unpacked step (train.pack=false), which the packed default must equal in every layout
UNPACKED = ("ga+kl+mismatch/joint", "lora/npo+kl/joint")
METHODS.update({f"unpacked/{name}": [*METHODS[name], "train.pack=false"] for name in UNPACKED})
# DeepSpeed's own ZeRO optimizer step, which the one-sync step (the default) must equal exactly
METHODS["deepspeed-step/ga+kl+mismatch/joint"] = [*METHODS["ga+kl+mismatch/joint"], "train.one_sync_step=false"]
# each decoder layer through torch.compile (ZeRO-0/1/2 only: the driver leaves it out under ZeRO-3)
COMPILED = "compiled/ga+kl+mismatch/joint"
ZERO2_ONLY = {COMPILED: [*METHODS["ga+kl+mismatch/joint"], "train.compile=true"]}
TAGS = ("forget/loss", "retain/loss", "mismatch/loss", "grad_norm", "pdu/lambda", "skipped")
# runs with an injected fault (not compared across layouts): the last rank's logits are NaN in the
# first micro-batch of step 3, so only that rank's loss is non-finite
FAULTS: dict[str, list[str]] = {"nan-on-last-rank": ["method.forget_loss=ga", "method.retain_loss=nll",
                                                     "method.schedule=joint", "train.max_steps=4"]}


def common(demo: Path, out_dir: Path) -> list[str]:
    return [f"model.name_or_path={demo / 'init'}", f"data.forget={demo / 'forget.txt'}",
            f"data.retain={demo / 'retain.txt'}", "data.max_length=64", "train.max_steps=6",
            "train.micro_batch_size=2", "train.global_batch_size=4", "train.log_every_n_steps=1",
            "train.save_engine_state=false", "optim.lr=1e-3", "optim.grad_clip=1.0",
            f"run.output_dir={out_dir}"]


def scalars(tb_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in TAGS if tag in acc.Tags()["scalars"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ds_config", required=True)
    parser.add_argument("--demo", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--methods", default=",".join([*METHODS, *ZERO2_ONLY, *FAULTS]))
    parser.add_argument("--local_rank", type=int, default=-1)
    args = parser.parse_args()

    from tests.unlearn_runs import dpo_forget_file
    from unlearn.config_io import load_config
    from unlearn.distributed import barrier, env_from_os
    from unlearn.runs import complete_checkpoints
    from unlearn.train import engine as engines
    from unlearn.train.loop import train

    # every rank writes the same table and renames it into place (atomic: no rank reads a partial file)
    own = dpo_forget_file(args.demo, args.out.parent / f".dpo.rank{env_from_os().rank}.jsonl")
    own.replace(args.out.parent / "dpo.jsonl")
    result = {}
    zero3 = engines.zero_stage(engines.read_ds_config(args.ds_config)) == 3
    for i, name in enumerate(args.methods.split(",")):
        if zero3 and name in ZERO2_ONLY:  # train.compile refuses ZeRO-3 (tests/test_compile.py)
            continue
        cfg, patch = load_config(overrides=[*common(args.demo, args.out.parent / "runs"),
                                            f"run.name=m{i}",
                                            *(o.format(demo=args.demo, out=args.out.parent)
                                              for o in {**METHODS, **ZERO2_ONLY, **FAULTS}[name])])
        restore = _nan_on_last_rank(cfg) if name in FAULTS else None
        run_dir = train(cfg, args.ds_config, patch, overwrite=True)
        if restore:
            restore()
        barrier()
        if env_from_os().is_main:
            result[name] = scalars(run_dir / "tb")
            if name in ZERO2_ONLY:  # the final checkpoint says how many layers ran compiled
                meta = json.loads((complete_checkpoints(run_dir)[-1] / "meta.json").read_text())
                result[name]["compiled_layers"] = [meta["compiled_layers"]]
    if env_from_os().is_main:
        args.out.write_text(json.dumps(result, indent=1))


def _nan_on_last_rank(cfg):
    """Policies that train() loads get NaN logits on the last rank in step 3's first micro-batch;
    returns the undo."""
    from unlearn import model as models
    from unlearn.distributed import env_from_os

    env, real = env_from_os(), models.load_policy
    accum = cfg.train.global_batch_size // (cfg.train.micro_batch_size * env.world_size)

    def load(model_cfg, dtype):
        policy = real(model_cfg, dtype)
        calls = {"n": 0}

        def hook(module, inputs, output):
            if env.rank == env.world_size - 1 and calls["n"] == 2 * accum:
                output.logits = output.logits * float("nan")
            calls["n"] += 1
            return output
        policy.register_forward_hook(hook)
        return policy
    models.load_policy = load
    return lambda: setattr(models, "load_policy", real)


if __name__ == "__main__":
    main()
