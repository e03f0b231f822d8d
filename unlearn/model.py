"""Policy and reference models: any Hugging Face causal LM, optional LoRA and 8-bit base.

Reference model (KL, NPO): with LoRA it is the policy itself with adapters switched off (no copy,
see `reference_logits`); without LoRA a frozen copy loaded from the same weights.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from pathlib import Path

import torch

from unlearn import manifest
from unlearn.config import ModelConfig
from unlearn.errors import UserError

# Two notices between our pinned libraries that no user can act on: bitsandbytes' CPU backend looks for a
# 4-bit kernel on the hub when imported (we use 8-bit only, offline), and peft 0.21 reads a property that
# transformers 5.24 deprecated.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def _hub_kwargs(cfg: ModelConfig) -> dict:
    return {"revision": cfg.revision} if cfg.revision else {}


def _looks_local(name: str) -> bool:
    """A path, not a hub id: starts with . / ~, has more than one '/', or its first part is a folder here."""
    parts = Path(name).parts
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (len(parts) > 1 and Path(parts[0]).is_dir())


def require_local_exists(what: str, name: str) -> None:
    """A mistyped local path is named as such (not looked up on the hub, not called a bad hub id)."""
    if _looks_local(name) and not Path(name).expanduser().exists():
        if name.startswith(".cache/demo"):
            raise UserError(f"{what} '{name}' does not exist; run `make demo` first to build the demo model")
        parent = next((p for p in Path(name).expanduser().parents if p.exists()), Path("."))
        raise UserError(f"{what} '{name}' does not exist (no such folder; '{parent}' exists); expected a local "
                        "Hugging Face folder (config.json + weights, or an adapter) or a hub id such as "
                        "facebook/opt-1.3b")


def _explain_load_error(what: str, name: str, exc: Exception) -> UserError:
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    local = Path(name).exists() or name.startswith((".", "/"))
    hint = ("expected a Hugging Face model folder (config.json + weights)" if local else
            "expected a local folder or a hub id that is in the local cache (no network here?)")
    if name.startswith(".cache/demo"):
        hint = "run `make demo` first to build the demo model"
    return UserError(f"{what} '{name}' could not be loaded ({first}); {hint}")


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    name = cfg.tokenizer or cfg.name_or_path
    require_local_exists("model.tokenizer" if cfg.tokenizer else "model.name_or_path", name)
    try:
        tok = AutoTokenizer.from_pretrained(name, **_hub_kwargs(cfg))
    except Exception as exc:  # OSError, ValueError, HFValidationError...: all mean "cannot load"
        raise _explain_load_error("tokenizer", name, exc) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # padding is masked by position (data.collate), so this is safe
    tok.model_max_length = 10**9  # whole documents are tokenised, then cut to data.max_length (no warning)
    return tok


def _load_causal_lm(cfg: ModelConfig, dtype: torch.dtype, quantized: bool):
    """The model at cfg.name_or_path; a LoRA adapter folder (a LoRA fine-tune's export, or a stage-2
    checkpoint on one) is loaded onto its base chain and merged, so training starts from those
    weights as one plain model."""
    kwargs = dict(_hub_kwargs(cfg), dtype=dtype)
    if quantized:
        from transformers import BitsAndBytesConfig  # bitsandbytes: only for 8-bit runs

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        if torch.cuda.is_available():  # quantized as loaded onto this rank's GPU (8-bit models refuse .to)
            kwargs["device_map"] = {"": torch.cuda.current_device()}
    return _merged(cfg.name_or_path, kwargs)


def is_adapter(name: str) -> bool:
    return (Path(name) / "adapter_config.json").is_file()


def _merged(name: str, kwargs: dict):
    """A plain model: `name` itself, or an adapter merged onto its base (recursively: the base of a
    stage-2 adapter is the stage-1 adapter it was trained on)."""
    from transformers import AutoModelForCausalLM

    manifest.verify(Path(name), engine=False)  # a checkpoint folder: its files as saved
    if not is_adapter(name):
        try:
            return AutoModelForCausalLM.from_pretrained(name, **kwargs)
        except Exception as exc:
            raise _explain_load_error("model", name, exc) from None
    from peft import PeftModel  # peft: merging a LoRA adapter

    base = _merged(_adapter_base(Path(name)), kwargs)
    return PeftModel.from_pretrained(base, name).merge_and_unload()


def _root_base(name: str) -> str:
    """The plain model at the bottom of an adapter chain (for its config)."""
    while is_adapter(name):
        name = _adapter_base(Path(name))
    return name


def check_model(what: str, name: str, **hub_kwargs):
    """The Hugging Face config (no weights) of a model folder, LoRA adapter chain or hub id named by `what`:
    a missing or mistyped model is named before any work."""
    from transformers import AutoConfig

    require_local_exists(what, name)
    root = _root_base(name)
    try:
        return AutoConfig.from_pretrained(root, **hub_kwargs)
    except Exception as exc:  # OSError, ValueError, HFValidationError...: all mean "cannot load"
        raise _explain_load_error(what, root, exc) from None


def load_model_config(cfg: ModelConfig):
    """The model's Hugging Face config only (no weights): checks the path and its positions early."""
    return check_model("model.name_or_path", cfg.name_or_path, **_hub_kwargs(cfg))


def _adapter_base(folder: Path) -> str:
    config = json.loads((folder / "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path") or ""
    if not base:
        raise UserError(f"LoRA adapter '{folder}' names no base_model_name_or_path; expected the "
                        "adapter of a LoRA fine-tune (or a full Hugging Face model folder)")
    return base


def check_lora_targets(cfg: ModelConfig, model_config) -> None:
    """LoRA target names against the model's module names, from its config alone (the model built on
    the meta device: no weights), before anything is written."""
    if not cfg.lora:
        return
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        modules = dict(AutoModelForCausalLM.from_config(model_config).named_modules())
    missing = [t for t in cfg.lora_target_modules if not any(n == t or n.endswith("." + t) for n in modules)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in modules.items() if isinstance(m, torch.nn.Linear)})
        raise UserError(f"model.lora_target_modules {missing} match no module of {cfg.name_or_path}; expected "
                        f"names of its linear layers: {', '.join(linear)}")


def validate(cfg: ModelConfig, zero_stage: int) -> None:
    if cfg.load_in_8bit and not cfg.lora:
        raise UserError("model.load_in_8bit=true needs model.lora=true (8-bit weights cannot be trained); "
                        "expected LoRA adapters on an 8-bit base")
    if cfg.load_in_8bit and zero_stage == 3:
        raise UserError("model.load_in_8bit=true cannot be sharded by ZeRO-3; expected a ZeRO stage 0-2 "
                        "DeepSpeed config (e.g. ds_configs/zero2.json)")


def load_policy(cfg: ModelConfig, dtype: torch.dtype = torch.float32):
    """The model to train: full weights, or LoRA adapters on a (possibly 8-bit) frozen base."""
    model = _load_causal_lm(cfg, dtype, quantized=cfg.load_in_8bit)
    if cfg.lora:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training  # peft: LoRA runs

        if cfg.load_in_8bit:
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=cfg.gradient_checkpointing)
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM")
        try:
            model = get_peft_model(model, lora)
        except ValueError as exc:
            raise UserError(f"model.lora_target_modules {list(cfg.lora_target_modules)} do not match "
                            f"the model's modules ({str(exc).splitlines()[0][:120]})") from None
        if is_adapter(cfg.name_or_path):
            # The weights under these adapters are the merged stage-1 model: the saved adapters name
            # that adapter folder as their base (peft would write the raw model at the chain's bottom).
            model.peft_config["default"].base_model_name_or_path = str(Path(cfg.name_or_path).resolve())
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lora:
            model.enable_input_require_grads()
    model.config.use_cache = False
    if not cfg.dropout:
        zero_dropout(model)
    # Always in training mode: transformers recomputes activations (gradient checkpointing) only
    # there. With model.dropout=false every dropout probability is 0, so the passes are as in eval
    # mode: the policy equals its reference at step 0 (KL = 0, NPO = (2/beta) log 2 exactly).
    model.train()
    return model


DROPOUT_ATTRIBUTES = ("dropout", "attention_dropout", "activation_dropout", "layerdrop", "attn_dropout",
                      "hidden_dropout", "resid_dropout", "attn_pdrop", "resid_pdrop", "embd_pdrop")
"""Float attributes through which Hugging Face modules apply functional dropout (OPT: `dropout`,
`layerdrop`; its attention: `dropout` = config.attention_dropout)."""


def zero_dropout(model) -> int:
    """Set every dropout probability in `model` to 0 (nn.Dropout modules, LoRA's included, and the
    float attributes above), leaving model.config alone so a saved checkpoint keeps its own values.
    Returns how many were non-zero."""
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            changed += module.p > 0
            module.p = 0.0
        for name in DROPOUT_ATTRIBUTES:
            value = module.__dict__.get(name)
            if isinstance(value, float):
                changed += value > 0
                setattr(module, name, 0.0)
    return changed


def load_reference(cfg: ModelConfig, dtype: torch.dtype = torch.float32):
    """A frozen copy of the starting weights (only for full-parameter runs that need a reference)."""
    model = _load_causal_lm(cfg, dtype, quantized=False)
    model.requires_grad_(False)
    model.config.use_cache = False  # it only scores: no KV cache of every layer per pass
    model.eval()
    return model


@contextlib.contextmanager
def adapters_disabled(model, eval_mode: bool = True):
    """Run the LoRA policy as its own base model (the reference) inside this block. `eval_mode`: in eval
    mode (needed when the policy's dropout is active: the reference is a fixed function); False keeps
    the policy's mode, so a dropout-free policy and its reference compute the same function (an
    8-bit base computes slightly differently in training and eval mode)."""
    peft_model = getattr(model, "module", model)
    was_training = peft_model.training
    if eval_mode:
        peft_model.eval()
    try:
        with peft_model.disable_adapter():
            yield
    finally:
        peft_model.train(was_training)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; under ZeRO-3 uses the full (unsharded) sizes."""
    def numel(p):
        return getattr(p, "ds_numel", p.numel())
    params = list(model.parameters())
    return sum(numel(p) for p in params if p.requires_grad), sum(numel(p) for p in params)


def is_peft(model) -> bool:
    return hasattr(getattr(model, "module", model), "peft_config")


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "deepspeed", "transformers", "peft", "bitsandbytes", "datasets"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def threads_hint() -> None:
    """On a CPU, one intra-op thread per process unless OMP_NUM_THREADS says otherwise (torchrun's default).

    Ranks, SLURM tasks and eval jobs that share cores then never oversubscribe them: on a 2-core machine
    under load (load average ~10) a 40-step fine-tune of the demo took 42-96 s with 2 threads, 6-7 s with
    one. And a CPU run is bit-reproducible: three builds of `make demo`'s base with 2 threads gave three
    different models (MKL's reproducibility modes did not help), five with one thread were bit-equal.
    The count is recorded in each checkpoint's meta.json (`cpu_threads`)."""
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def load_for_eval(path: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """(model, tokenizer) of a checkpoint folder: full weights, or a LoRA adapter on its base."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path)
    manifest.verify(folder, engine=False)  # a checkpoint folder: its files as saved
    try:
        if is_adapter(path):
            from peft import PeftModel  # peft: LoRA checkpoints only

            # the base chain merged (stage 1 under a stage-2 adapter), then this adapter on top
            model = PeftModel.from_pretrained(_merged(_adapter_base(folder), {"dtype": dtype}), str(folder))
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise _explain_load_error("checkpoint model", str(path), exc) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.model_max_length = 10**9  # texts are cut by the caller (no "longer than" warnings)
    model.config.use_cache = True
    return model.to(device).eval(), tok
