"""DeepSpeed engine from a declarative JSON (ZeRO, precision, offload) plus our run config.

The JSON in ds_configs/ says *how* to shard and in which precision (unsaid: bf16 where the GPU
has it, else fp32; ZeRO's contiguous_gradients unsaid: on for GPUs, off for CPUs). Batch sizes,
gradient clipping, optimizer and LR schedule come from the run config (one source of truth): a JSON that
sets them too is an error, as is DeepSpeed's "auto" (only HF's Trainer resolves it), and so is a key
DeepSpeed would not read (unlearn.train.ds_keys).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from unlearn import rmu, textfiles
from unlearn.config import Config
from unlearn.config_io import deep_merge
from unlearn.distributed import DistEnv
from unlearn.errors import UserError
from unlearn.train import ds_keys

OWNED_BY_RUN_CONFIG = {
    "train_batch_size": "train.global_batch_size",
    "train_micro_batch_size_per_gpu": "train.micro_batch_size",
    "gradient_accumulation_steps": "train.global_batch_size / train.micro_batch_size",
    "gradient_clipping": "optim.grad_clip",
    "optimizer": "optim.*",
    "scheduler": "optim.warmup_steps / optim.schedule",
}


def _find_auto(tree: Any, path: str = "") -> str | None:
    if isinstance(tree, dict):
        for key, value in tree.items():
            hit = _find_auto(value, f"{path}.{key}" if path else key)
            if hit:
                return hit
    elif tree == "auto":
        return path
    return None


def read_ds_config(path: str | Path, patch: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load and check a DeepSpeed JSON; `patch` comes from `ds.*=...` command-line overrides."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"DeepSpeed config '{path}' not found; expected a JSON file such as ds_configs/zero2.json")
    try:
        ds = json.loads(textfiles.read_text(path, "DeepSpeed config"))
    except json.JSONDecodeError as exc:
        raise UserError(f"DeepSpeed config '{path}' is not valid JSON (line {exc.lineno}: {exc.msg}); "
                        "expected a JSON object such as ds_configs/zero2.json") from None
    if not isinstance(ds, dict):
        raise UserError(f"DeepSpeed config '{path}' holds a JSON {type(ds).__name__}; expected a JSON object")
    ds_keys.check(ds, f"DeepSpeed config '{path}'")  # a key DeepSpeed would not read (a typo) is refused
    ds_keys.check(patch or {}, f"a ds.* override on '{path}'", prefix="ds.")
    ds = deep_merge(ds, patch or {})
    if "bf16" not in ds and "fp16" not in ds:  # precision unsaid: bf16 where the hardware has it
        ds["bf16"] = {"enabled": bf16_supported()}
    zero = ds.get("zero_optimization")
    if isinstance(zero, dict) and "contiguous_gradients" not in zero:
        ds["zero_optimization"] = {**zero, "contiguous_gradients": contiguous_gradients_default()}
    for key, owner in OWNED_BY_RUN_CONFIG.items():
        if key in ds:
            raise UserError(f"DeepSpeed config '{path}' sets '{key}'; expected it unset: it comes from the "
                            f"run config ({owner})")
    auto = _find_auto(ds)
    if auto:
        raise UserError(f"DeepSpeed config '{path}' has \"auto\" at '{auto}'; expected a concrete value "
                        "(only Hugging Face's Trainer resolves \"auto\")")
    if zero_stage(ds) not in (1, 2, 3):
        zero = ds.get("zero_optimization", {})
        raw = zero.get("stage", 0) if isinstance(zero, dict) else zero
        raise UserError(f"DeepSpeed config '{path}' has zero_optimization.stage={raw!r}; expected 1, 2 "
                        "or 3 (skipping steps with non-finite gradients relies on ZeRO's overflow check)")
    if ds.get("bf16", {}).get("enabled") and ds["bf16"].get("check_grad_overflow") is False:
        raise UserError(f"DeepSpeed config '{path}' sets bf16.check_grad_overflow=false; expected true or "
                        "unset (skipping steps with non-finite gradients relies on it)")
    if ds.get("fp16", {}).get("enabled") and not torch.cuda.is_available():
        raise UserError(f"DeepSpeed config '{path}' enables fp16, which needs a GPU; expected bf16 or fp32 on CPU")
    return ds


def bf16_supported() -> bool:
    """A GPU with bf16 arithmetic (Ampere or later). CPUs without bf16 instructions run it ~7x
    slower than fp32 (measured on this project's CI machine), so the CPU default is fp32."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def contiguous_gradients_default() -> bool:
    """ZeRO's contiguous_gradients where the JSON leaves it out: DeepSpeed's own default (true) on a
    GPU, where copying each gradient into one buffer keeps the allocator from fragmenting; false on
    a CPU, where there is no such allocator to protect and the copies are pure work: the tiny step
    runs 1.05x (XSTest + TruthfulQA) and 1.08x (demo) faster without them, losses bit-equal
    (ZeRO-2, interleaved A/B, 40 and 60 steps)."""
    return torch.cuda.is_available()


def zero_stage(ds: dict[str, Any]) -> int:
    try:
        return int(ds.get("zero_optimization", {}).get("stage", 0))
    except (TypeError, ValueError, AttributeError):
        return -1  # not a number (or not a mapping): read_ds_config names it


def dtype_of(ds: dict[str, Any]) -> torch.dtype:
    if ds.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if ds.get("fp16", {}).get("enabled"):
        return torch.float16
    return torch.float32


OPTIMIZERS = ("adamw", "adamw8bit")


def check_run_config(cfg: Config, ds: dict[str, Any], world_size: int) -> None:
    """The run-config side of the engine (before any weights are loaded)."""
    if cfg.optim.schedule not in ("linear", "constant"):
        raise UserError(f"optim.schedule '{cfg.optim.schedule}' is unknown; expected linear or constant")
    if cfg.optim.name not in OPTIMIZERS:
        raise UserError(f"optim.name '{cfg.optim.name}' is unknown; expected one of: {', '.join(OPTIMIZERS)}")
    if cfg.optim.name == "adamw8bit" and not optimizer_on_device(ds):
        raise UserError("optim.name=adamw8bit with zero_optimization.offload_optimizer; expected optim.name=adamw "
                        "when the optimizer state lives in CPU memory (8-bit moments save GPU memory)")
    grad_accum_steps(cfg, world_size)


def resolve_micro_batch(cfg: Config, world_size: int) -> Config:
    """`cfg` with train.micro_batch_size set: as given, or (0) global_batch_size / world_size."""
    t = cfg.train
    if t.micro_batch_size:
        return cfg
    if t.global_batch_size <= 0 or t.global_batch_size % world_size:
        raise UserError(f"train.global_batch_size={t.global_batch_size} cannot be split over {world_size} ranks; "
                        f"expected a positive multiple of {world_size} (or set train.micro_batch_size)")
    return replace(cfg, train=replace(t, micro_batch_size=t.global_batch_size // world_size))


def grad_accum_steps(cfg: Config, world_size: int) -> int:
    cfg = resolve_micro_batch(cfg, world_size)
    per_step = cfg.train.micro_batch_size * world_size
    if per_step <= 0:
        raise UserError(f"train.micro_batch_size={cfg.train.micro_batch_size}; expected a positive integer")
    if cfg.train.global_batch_size % per_step:
        raise UserError(f"train.global_batch_size={cfg.train.global_batch_size} is not a multiple of "
                        f"train.micro_batch_size x world size = {cfg.train.micro_batch_size} x {world_size}; "
                        "expected global = micro x ranks x gradient accumulation steps")
    return cfg.train.global_batch_size // per_step


def full_ds_config(ds: dict[str, Any], cfg: Config, env: DistEnv) -> dict[str, Any]:
    """The JSON plus the fields our config owns (batch sizes, clipping, optimizer)."""
    full = dict(ds)
    full["train_micro_batch_size_per_gpu"] = resolve_micro_batch(cfg, env.world_size).train.micro_batch_size
    full["gradient_accumulation_steps"] = grad_accum_steps(cfg, env.world_size)
    full["train_batch_size"] = cfg.train.global_batch_size
    full["gradient_clipping"] = cfg.optim.grad_clip
    full.setdefault("steps_per_print", 10**9)  # we log ourselves
    if cfg.optim.name == "adamw8bit":  # passed to deepspeed.initialize as an instance (client_optimizer)
        full["zero_allow_untested_optimizer"] = True
        return full
    full["optimizer"] = {"type": "AdamW", "params": {
        **_adamw_args(cfg),
        # torch's AdamW: DeepSpeed's fused/CPU Adam need a ~100 s JIT build on first use; torch's
        # own fused kernel (one pass over the optimizer state, on GPUs and CPUs alike)
        "torch_adam": True, "fused": FUSED_ADAMW}}
    return full


def _adamw_args(cfg: Config) -> dict[str, Any]:
    o = cfg.optim
    return {"lr": o.lr, "betas": list(o.betas), "eps": o.eps, "weight_decay": o.weight_decay}


def client_optimizer(cfg: Config):
    """None (DeepSpeed builds AdamW from the JSON) or a factory of bitsandbytes' 8-bit AdamW, which
    ZeRO hands its flat fp32 master partitions: one set of block-wise quantised moments per rank."""
    if cfg.optim.name != "adamw8bit":
        return None
    import bitsandbytes as bnb  # only for 8-bit runs

    args = _adamw_args(cfg)
    return lambda params: bnb.optim.AdamW8bit(params, **{**args, "betas": tuple(args["betas"])})


def optimizer_on_device(ds: dict[str, Any]) -> bool:
    """Whether the optimizer state stays with the weights (no ZeRO offload_optimizer)."""
    offload = ds.get("zero_optimization", {}).get("offload_optimizer") or {}
    return offload.get("device", "none") in ("none", None)


FUSED_ADAMW = True
"""torch's fused AdamW: one pass over parameters, gradients and moments. The unfused one makes
full-size temporaries (sqrt, division) of the flat ZeRO partition: 0.76 s vs 0.09 s a step for
125M fp32 parameters on one CPU thread, the same update to rounding."""


def optimizer_on_gpu(ds: dict[str, Any]) -> bool:
    return torch.cuda.is_available() and optimizer_on_device(ds)


def lr_lambda(cfg: Config, max_steps: int):
    """Multiplier of optim.lr at optimizer step s: linear warm-up, then linear decay or constant."""
    warm = cfg.optim.warmup_steps

    def fn(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.optim.schedule == "constant":
            return 1.0
        return max(0.0, (max_steps - step) / max(1, max_steps - warm))
    return fn


def initialize(model, ds: dict[str, Any], cfg: Config, env: DistEnv, max_steps: int):
    """A DeepSpeed engine training the model's trainable parameters."""
    import deepspeed  # heavy: only when an engine is built

    check_run_config(cfg, ds, env.world_size)
    full = full_ds_config(ds, cfg, env)
    params = [p for p in model.parameters() if p.requires_grad]
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=params, config=full, optimizer=client_optimizer(cfg),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, max_steps)))
    if cfg.train.one_sync_step:
        from unlearn.train import zero_step

        why = zero_step.install(engine)
        engine.zero_step = f"deepspeed ({why})" if why else "one-sync"
    else:
        engine.zero_step = "deepspeed (train.one_sync_step=false)"
    return engine


def check_compile(cfg: Config, ds: dict[str, Any]) -> None:
    """train.compile's limits, before any weights load."""
    if not cfg.train.compile:
        return
    if zero_stage(ds) == 3:
        raise UserError("train.compile=true with ZeRO stage 3, whose parameter gathering runs inside the layers; "
                        "expected a ZeRO-0/1/2 ds_config (ds_configs/zero2.json) or train.compile=false")
    if rmu.selected(cfg.method):
        raise UserError("train.compile=true with an RMU term, whose layer taps change the compiled layer every "
                        "step; expected train.compile=false for method rmu")


def compile_layers(model) -> int:
    """torch.compile each decoder layer in place (train.compile); returns how many.

    Each layer is compiled, not the whole model: a layer is one clean function of its hidden states
    and attention mask, every layer shares one graph (parameters are graph inputs), and the model
    around it (embeddings, the packed batch's `logits_to_keep` gather, the LM head) stays eager.
    `dynamic=True`: shapes are symbolic from the first step, so packed batches of new widths and
    row counts reuse the graph. DeepSpeed's ZeRO-1/2 hooks sit on the parameters' gradient
    accumulation, outside the graph, and see the same gradients."""
    layers = rmu.decoder_layers(model)
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def reference_engine(model, ds: dict[str, Any]):
    """ZeRO-3 reference: the frozen copy sharded by an engine of its own, without an optimizer."""
    import deepspeed

    ref_ds = {k: v for k, v in ds.items() if k in ("zero_optimization", "bf16", "fp16")}
    ref_ds["zero_optimization"] = {k: v for k, v in ds["zero_optimization"].items()
                                   if k not in ("offload_optimizer",)}
    ref_ds["train_micro_batch_size_per_gpu"] = 1
    engine, *_ = deepspeed.initialize(model=model, config=ref_ds)
    engine.eval()
    return engine


def describe(engine) -> str:
    return f"ZeRO-{engine.zero_optimization_stage()} {engine.communication_data_type} x{engine.world_size}"
