"""Model shapes, benchmark variants and random-weight model folders.

Speed does not depend on weight values, so every preset is an `OPTConfig` of the real shape with
random weights, saved beside the demo tokenizer (its ids are a subset of any preset's vocabulary).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from unlearn.errors import UserError

# (hidden, layers, heads, ffn): the published OPT shapes; vocabulary 50272, 2048 positions.
OPT_SHAPES = {
    "opt-125m": (768, 12, 12, 3072),
    "opt-1.3b": (2048, 24, 32, 8192),
    "opt-2.7b": (2560, 32, 32, 10240),
    "opt-6.7b": (4096, 32, 32, 16384),
}
PRESETS = ("tiny", *OPT_SHAPES)
"""tiny = the demo's own random OPT (unlearn.demo.tiny_opt); the rest as in OPT_SHAPES."""

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class Variant:
    loop: str
    """baseline (the reference loop, unlearn.bench.baseline) | ours (unlearn.train.step.Loop on DeepSpeed)."""
    padding: str = "max"
    """baseline only: max (every batch padded to data.max_length) | longest (to the batch's longest)."""
    ds_config: str = "ds_configs/zero2.json"
    """ours only: the DeepSpeed JSON (ZeRO stage, offload)."""
    bf16: bool = False
    """ours only: ds.bf16.enabled (weights, activations and logits in bf16; fp32 master weights)."""
    lora: bool = False
    """ours only: model.lora (reference = the same model with adapters off)."""
    load_in_8bit: bool = False
    """ours only: model.load_in_8bit (bitsandbytes 8-bit frozen base under LoRA)."""
    gradient_checkpointing: bool = False
    """ours only: model.gradient_checkpointing."""
    optimizer: str = "adamw"
    """ours only: optim.name (adamw8bit: bitsandbytes' 8-bit moments, 6 bytes per parameter fewer)."""
    pack: bool = True
    """ours only: train.pack (false: the unpacked step, one padded pass per term, the packed one's reference)."""
    one_sync_step: bool = True
    """ours only: train.one_sync_step (false: DeepSpeed's own ZeRO optimizer step, 3-4 syncs)."""
    compile: bool = False
    """ours only: train.compile (each decoder layer through torch.compile; ZeRO-0/1/2)."""


VARIANTS = {
    "baseline": Variant("baseline"),
    "baseline-dynpad": Variant("baseline", padding="longest"),
    "ours-fp32": Variant("ours"),
    "ours-fp32-unpacked": Variant("ours", pack=False),
    "ours-bf16": Variant("ours", bf16=True),
    "ours-fp32-dsstep": Variant("ours", one_sync_step=False),
    "ours-bf16-dsstep": Variant("ours", bf16=True, one_sync_step=False),
    "ours-fp32-compile": Variant("ours", compile=True),
    "ours-bf16-compile": Variant("ours", bf16=True, compile=True),
    "ours-bf16-ckpt": Variant("ours", bf16=True, gradient_checkpointing=True),
    "ours-fp32-ckpt": Variant("ours", gradient_checkpointing=True),
    "ours-zero3": Variant("ours", ds_config="ds_configs/zero3.json", bf16=True),
    "ours-zero3-offload": Variant("ours", ds_config="ds_configs/zero3_offload.json", bf16=True),
    "ours-fp32-adam8bit": Variant("ours", optimizer="adamw8bit"),
    "ours-bf16-adam8bit": Variant("ours", bf16=True, optimizer="adamw8bit"),
    "ours-zero3-adam8bit": Variant("ours", ds_config="ds_configs/zero3.json", bf16=True, optimizer="adamw8bit"),
    "ours-lora": Variant("ours", bf16=True, lora=True),
    "ours-lora-8bit": Variant("ours", bf16=True, lora=True, load_in_8bit=True),
}

CPU_DEFAULT = ("baseline", "baseline-dynpad", "ours-fp32-unpacked", "ours-fp32", "ours-bf16")
GPU_DEFAULT = {
    "tiny": ("baseline", "ours-bf16", "ours-zero3", "ours-lora", "ours-lora-8bit"),
    "opt-125m": ("baseline", "ours-bf16", "ours-zero3", "ours-lora", "ours-lora-8bit"),
    "opt-1.3b": ("baseline", "ours-bf16", "ours-zero3", "ours-lora", "ours-lora-8bit"),
    # full parameters + reference under 40 GB: 8-bit AdamW moments, or the optimizer state off the GPU
    "opt-2.7b": ("ours-bf16", "ours-bf16-adam8bit", "ours-zero3-adam8bit", "ours-zero3-offload"),
    "opt-6.7b": ("ours-lora", "ours-lora-8bit"),
}
"""Per preset, what one GPU measures within the 8-minute budget (each variant: a fresh process)."""

BF16_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
"""Dense bf16 tensor-core peak (FLOP/s) by GPU name fragment (SXM parts)."""


def variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise UserError(f"benchmark variant '{name}' is unknown; expected one of: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def default_variants(preset: str, cuda: bool) -> tuple[str, ...]:
    return GPU_DEFAULT[preset] if cuda else CPU_DEFAULT


def shape(preset: str, scale_down: int = 1, keep_depth: bool = False) -> dict[str, int]:
    """OPTConfig keyword arguments of a preset; `scale_down` k divides width, heads and depth by k
    (`keep_depth`: not the depth, so a CPU sees the preset's launches per step: they scale with depth)."""
    if preset not in OPT_SHAPES:
        raise UserError(f"preset '{preset}' has no OPT shape; expected one of: {', '.join(OPT_SHAPES)}")
    if scale_down < 1:
        raise UserError(f"--scale-down {scale_down} must be >= 1")
    hidden, layers, heads, ffn = OPT_SHAPES[preset]
    heads_k = max(1, heads // scale_down)
    head_dim = hidden // heads                       # kept, so attention stays a realistic shape
    return {"hidden_size": heads_k * head_dim, "num_hidden_layers": layers if keep_depth else max(2, layers // scale_down),
            "num_attention_heads": heads_k, "ffn_dim": max(4 * head_dim, ffn // scale_down),
            "vocab_size": 50272, "max_position_embeddings": 2048}


def build_model_dir(preset: str, out: Path, tokenizer_dir: Path, scale_down: int = 1,
                    on_gpu: bool = False, keep_depth: bool = False) -> Path:
    """A Hugging Face folder with a random-weight OPT of the preset's shape and the demo tokenizer."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    out = Path(out)
    if (out / "config.json").is_file():
        return out
    kw = shape(preset, scale_down, keep_depth)
    config = OPTConfig(**kw, word_embed_proj_dim=kw["hidden_size"], pad_token_id=1, bos_token_id=2,
                       eos_token_id=2, dropout=0.1, attention_dropout=0.0, activation_dropout=0.0)
    torch.manual_seed(0)
    # random init of billions of weights is minutes on CPU and seconds on a GPU
    with torch.device("cuda" if on_gpu else "cpu"):
        model = OPTForCausalLM(config)
    if on_gpu:
        model = model.to(torch.bfloat16)   # half the bytes to write and read; loaders cast as needed
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    del model
    if on_gpu:
        torch.cuda.empty_cache()  # this (parent) process must not keep GPU memory from the workers
    for name in TOKENIZER_FILES:
        shutil.copy(Path(tokenizer_dir) / name, tmp / name)
    tmp.rename(out)
    return out


def parameter_count(model_dir: Path) -> int:
    """Parameters of the model in `model_dir` from its config (tied embeddings counted once)."""
    import json

    c = json.loads((Path(model_dir) / "config.json").read_text())
    h, L, f, v, p = (c["hidden_size"], c["num_hidden_layers"], c["ffn_dim"], c["vocab_size"],
                     c["max_position_embeddings"])
    per_layer = 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h   # attention, MLP, two layer norms
    return v * h + (p + 2) * h + L * per_layer + 2 * h           # embeddings, positions, final norm


def peak_flops(device_name: str) -> float | None:
    for fragment, flops in BF16_PEAK_FLOPS.items():
        if fragment in device_name:
            return flops
    return None
