"""RMU, Representation Misdirection for Unlearning (Li et al. 2024, "The WMDP Benchmark", sec. 5;
open-unlearning src/trainer/unlearn/rmu.py and configs/trainer/RMU.yaml, after the WMDP authors'
rmu/unlearn.py).

At one decoder layer l, the forget term pulls the policy's activations h_l(x_forget) toward c u (u a
fixed random unit vector, c `method.rmu_steering_coeff`), and the retain term holds h_l(x_retain) to
the frozen reference's. Only chosen parameters of chosen layers train (`restrict_trainable`).

Shapes: activations (B, T, D) = the output of decoder layer l (0-based; open-unlearning hooks
`model.layers.7`), mask (B, T) = labelled positions (labels != -100 at the activation's own
position, unshifted, as the reference). Activations are taken with a forward hook on the layer
module (`tap`): under ZeRO-3 the layer's parameters are sharded but its output is an ordinary
activation; with gradient checkpointing (non-reentrant) the hooked output is the tensor the
checkpoint returns, and the hook is gone before backward recomputes the layer.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from unlearn.config import Config, MethodConfig
from unlearn.errors import UserError

IGNORE = -100
NAME = "rmu"


def selected(cfg: MethodConfig) -> bool:
    """Whether the run has an RMU term (then layers are taken and parameters restricted)."""
    return NAME in (cfg.forget_loss, cfg.retain_loss)


def activation_loss(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean_b [ (1/n_b) sum_t m_bt mean_d (h - target)^2 ] in fp32: per labelled token the mean
    squared difference over the D dimensions, averaged over a sample's n_b labelled tokens, then
    over the samples (0 for a sample with none). `target` (B, T, D) or (D,) (broadcast).

    open-unlearning's compute_activation_loss means the same, but divides a (B,) tensor of
    per-sample sums by a (B, 1) tensor of counts, which broadcasts to (B, B): it returns
    mean_b(sum_b) * mean_b(1 / n_b). That equals ours when every sample has the same number of
    labelled tokens (always at batch size 1, as in its WMDP experiment); with uneven lengths we keep
    the per-sample mean it intends, so the loss does not depend on how samples are grouped into
    micro-batches (ZeRO layouts and rank counts agree)."""
    mask = mask.to(h.device)
    per_token = (h.float() - target.float()).pow(2).mean(-1) * mask     # (B, T)
    counts = mask.sum(-1)
    return (per_token.sum(-1) / counts.clamp(min=1)).mean()


def control_vector(dim: int, seed: int) -> torch.Tensor:
    """u: (D,) fp32 of unit length, entries uniform in [0, 1) before normalising (torch.rand, as
    the WMDP code and open-unlearning draw it), from its own generator seeded with `seed`: the same
    on every rank and independent of the global RNG."""
    u = torch.rand(dim, generator=torch.Generator().manual_seed(seed))
    return u / u.norm()


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's stack of decoder layers (OPT model.decoder.layers, Llama model.layers, GPT-2
    transformer.h; under peft the base model's): the ModuleList as long as config.num_hidden_layers."""
    model = getattr(model, "module", model)  # a DeepSpeed engine's model
    n = model.config.num_hidden_layers
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n]
    if len(found) > 1:
        found = [(name, m) for name, m in found if name.rsplit(".", 1)[-1] in ("layers", "h", "blocks")]
    if len(found) != 1:
        raise UserError(f"method.forget_loss/retain_loss=rmu: cannot tell which module list of "
                        f"{type(model).__name__} holds its {n} decoder layers; expected exactly one")
    return found[0][1]


def _trains(name: str, modules: tuple[str, ...]) -> bool:
    """A parameter named `name` inside a layer (e.g. fc2.weight, fc2.lora_A.default.weight) belongs to
    one of `modules` (module names as in model.lora_target_modules); () = every parameter."""
    return not modules or any(part in modules for part in name.split(".")[:-1])


def check(run: Config, model_config) -> None:
    """Layer numbers and module names against the model (its config alone), before anything is written."""
    cfg = run.method
    if not selected(cfg):
        return
    if cfg.rmu_steering_coeff <= 0:
        raise UserError(f"method.rmu_steering_coeff={cfg.rmu_steering_coeff}; expected a positive length c of "
                        "the steering target c u (open-unlearning: 2)")
    n = model_config.num_hidden_layers
    bad = [i for i in (cfg.rmu_layer, *cfg.rmu_train_layers) if not 0 <= i < n]
    if bad:
        raise UserError(f"method.rmu_layer={cfg.rmu_layer} / rmu_train_layers={list(cfg.rmu_train_layers)}: layer "
                        f"{bad[0]} does not exist; expected 0-based layer numbers below the model's {n} layers")
    if cfg.rmu_train_layers and cfg.rmu_train_modules:
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model_config)
        names = [name for name, _ in decoder_layers(model)[cfg.rmu_train_layers[0]].named_parameters()]
        if not any(_trains(name, cfg.rmu_train_modules) for name in names):
            inside = sorted({part for name in names for part in name.split(".")[:-1]})
            raise UserError(f"method.rmu_train_modules {list(cfg.rmu_train_modules)} name no module of a "
                            f"decoder layer; expected some of: {', '.join(inside)} (empty = the whole layer)")
        adapted = {t.rsplit(".", 1)[-1] for t in run.model.lora_target_modules}
        if run.model.lora and not adapted & set(cfg.rmu_train_modules):
            raise UserError(f"model.lora=true adapts {sorted(adapted)} but method.rmu_train_modules is "
                            f"{list(cfg.rmu_train_modules)}: no adapter would train; expected "
                            "model.lora_target_modules to include one of them (or rmu_train_modules=[])")


def restrict_trainable(model, cfg: MethodConfig) -> int:
    """Freeze every parameter but those of `cfg.rmu_train_modules` in `cfg.rmu_train_layers` that
    were trainable (all, or LoRA's adapters); call before the engine is built, so ZeRO's optimizer
    partitions hold only these. Returns how many tensors train. No-op without an RMU term or with
    rmu_train_layers empty (then everything trainable trains, as open-unlearning's RMU.yaml)."""
    if not selected(cfg) or not cfg.rmu_train_layers:
        return sum(p.requires_grad for p in model.parameters())
    layers = decoder_layers(model)
    keep = {id(p) for i in cfg.rmu_train_layers for name, p in layers[i].named_parameters()
            if p.requires_grad and _trains(name, cfg.rmu_train_modules)}
    if not keep:
        raise UserError(f"method.rmu_train_layers {list(cfg.rmu_train_layers)} x rmu_train_modules "
                        f"{list(cfg.rmu_train_modules)} select no trainable parameter; with model.lora=true "
                        "expected model.lora_target_modules to include one of rmu_train_modules")
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return len(keep)


class Tap:
    """The output of one module's first forward call inside a `tap` block (None if it ran none)."""

    def __init__(self) -> None:
        self.output: torch.Tensor | None = None

    def __call__(self, module, args, output) -> None:
        if self.output is None:
            self.output = output[0] if isinstance(output, tuple) else output


@contextlib.contextmanager
def tap(module: torch.nn.Module | None):
    """Capture `module`'s output during the block (a no-op Tap for None)."""
    t = Tap()
    handle = module.register_forward_hook(t) if module is not None else None
    try:
        yield t
    finally:
        if handle is not None:
            handle.remove()


@dataclass
class Hidden:
    """The layer-l activations one RMU term reads."""

    policy: torch.Tensor                  # (B, T, D), with the graph back to the trainable layers
    mask: torch.Tensor                    # (B, T) bool: labelled positions
    reference: torch.Tensor | None        # (B, T, D) of the reference (no grad), for the retain term
    target: torch.Tensor                  # (D,) c u, for the forget term


class Steering:
    """A run's RMU state: the layer-l modules of policy and reference and the fixed vector u.

    u is drawn once from train.seed and saved with every checkpoint (`state_dict`); a resumed run
    uses the saved u, whatever the generator would draw now."""

    def __init__(self, cfg: Config, policy, reference=None):
        self.coeff = cfg.method.rmu_steering_coeff
        self.policy_layer = decoder_layers(policy)[cfg.method.rmu_layer]
        self.reference_layer = decoder_layers(reference)[cfg.method.rmu_layer] if reference is not None else None
        hidden_size = getattr(policy, "module", policy).config.hidden_size
        self.u = control_vector(hidden_size, cfg.train.seed)

    def hidden(self, policy: Tap, reference: Tap, labels: torch.Tensor) -> Hidden:
        assert policy.output is not None, "the policy's forward did not run decoder layer rmu_layer"
        target = self.coeff * self.u.to(policy.output.device)
        return Hidden(policy.output, labels != IGNORE, reference.output, target)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"u": self.u.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "u" in state:
            self.u = state["u"].float().cpu()
