"""Registry of forget and retain objectives: small functions over one batch's forward passes.

A method is a forget loss + a retain loss (+ the random-mismatch term) with weights, chosen by
name in `MethodConfig`. Adding one = one decorated function + one test; the loop does not change.
Losses are written to be *minimised*: gradient ascent is `ga = -nll`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from unlearn import losses, rmu
from unlearn.errors import UserError


@dataclass
class Forward:
    """Logits of one micro-batch with its labels; `ref_logits` only when the method needs them;
    `alt`: the same prompts with alternate answers (methods with an `alternate`, unlearn.alternates);
    `hidden` (a decoder layer's activations) only for an objective registered with needs_hidden;
    `tokens` (B, T), the mask of real (non-pad) tokens, only for a loss set to read every position
    (`Objective.reads_all`); its logits then cover every position."""

    logits: torch.Tensor
    labels: torch.Tensor
    ref_logits: torch.Tensor | None = None
    alt: Forward | None = None
    hidden: rmu.Hidden | None = None
    tokens: torch.Tensor | None = None

    _nll: torch.Tensor | None = field(default=None, repr=False)

    def nll(self) -> torch.Tensor:
        """Mean answer-token NLL, computed once (the loss and the logged metric share it)."""
        stale = self._nll is None or (torch.is_grad_enabled() and self.logits.requires_grad
                                      and not self._nll.requires_grad)  # first computed under no_grad
        if stale:
            self._nll = losses.nll(self.logits, self.labels)
        return self._nll


LossFn = Callable[[Forward, object], torch.Tensor]


@dataclass(frozen=True)
class Objective:
    name: str
    fn: LossFn
    needs_reference: bool
    alternate: str = ""
    """"" | idk | column: the loss also reads `Forward.alt` (unlearn.alternates builds its samples)."""
    forget_grad: bool = True
    """False: the loss reads only `alt`, so the forget batch's pass runs without a graph (its NLL is logged)."""
    needs_hidden: bool = False
    """The loss reads `Forward.hidden` (RMU)."""
    positions: str = ""
    """The MethodConfig field (answer | all) naming where the loss averages; "" = answer positions only."""

    def reads_all(self, cfg) -> bool:
        """Whether the loss reads every position under `cfg` (MethodConfig): the loop then computes logits
        at all of them, passes `Forward.tokens` and runs the unpacked step."""
        return bool(self.positions) and getattr(cfg, self.positions) == ALL


ANSWER, ALL = "answer", "all"
POSITIONS = (ANSWER, ALL)
"""Values of the `*_positions` fields of MethodConfig."""

FORGET: dict[str, Objective] = {}
RETAIN: dict[str, Objective] = {}


def _register(table: dict[str, Objective], name: str, needs_reference: bool, **kw):
    def wrap(fn: LossFn) -> LossFn:
        table[name] = Objective(name, fn, needs_reference, **kw)
        return fn
    return wrap


def register_forget(name: str, needs_reference: bool = False, alternate: str = "", forget_grad: bool = True,
                    needs_hidden: bool = False, positions: str = ""):
    return _register(FORGET, name, needs_reference, alternate=alternate, forget_grad=forget_grad,
                     needs_hidden=needs_hidden, positions=positions)


def register_retain(name: str, needs_reference: bool = False, needs_hidden: bool = False, positions: str = ""):
    return _register(RETAIN, name, needs_reference, needs_hidden=needs_hidden, positions=positions)


# ----------------------------------------------------------------------------- forget

@register_forget("ga")
def ga(fwd: Forward, cfg) -> torch.Tensor:
    """Gradient ascent (Jang et al. 2023, "Knowledge Unlearning for Mitigating Privacy Risks in Language
    Models"; Yao et al. 2023, "Large Language Model Unlearning"; open-unlearning's GradAscent): minimise
    the negative NLL of the forget answers (mean over answer tokens, as HF's model loss). GradAscent has
    no retain term (configs/methods/ga.yaml); with retain NLL it is GradDiff (configs/methods/graddiff.yaml)."""
    return -fwd.nll()


@register_forget("npo", needs_reference=True)
def npo(fwd: Forward, cfg) -> torch.Tensor:
    """NPO (Zhang et al. 2024, "Negative Preference Optimization"; open-unlearning's NPO trainer):
    ascent that saturates once the policy's answer log-prob is below the reference's. Beta: method.beta."""
    with torch.no_grad():
        ref = losses.sequence_logp(fwd.ref_logits, fwd.labels)
    return losses.npo(losses.sequence_logp(fwd.logits, fwd.labels), ref, cfg.beta)


@register_forget("simnpo")
def simnpo(fwd: Forward, cfg) -> torch.Tensor:
    """SimNPO (Fan et al. 2024, "Simplicity Prevails"; open-unlearning's SimNPO trainer): NPO without a
    reference, on the length-normalised answer log-prob. Its own beta (method.simnpo_beta, 4.5) and the
    paper's margin gamma (method.simnpo_gamma = open-unlearning's delta x beta). Their SimNPO.yaml weighs
    this term 0.125 (gamma) against retain NLL 1; our method.forget_weight defaults to 1:
    configs/methods/simnpo.yaml sets 0.125."""
    return losses.simnpo(losses.sequence_mean_logp(fwd.logits, fwd.labels), cfg.simnpo_beta, cfg.simnpo_gamma)


@register_forget("wga")
def wga(fwd: Forward, cfg) -> torch.Tensor:
    """WGA (Wang et al. 2025; open-unlearning's WGA, beta 1.0): ascent weighted per token by its own
    probability p^beta (detached), so tokens already forgotten stop pulling."""
    return losses.weighted_ascent(fwd.logits, fwd.labels, cfg.wga_beta)


@register_forget("satimp")
def satimp(fwd: Forward, cfg) -> torch.Tensor:
    """SatImp (Yang et al. 2025, "Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning";
    open-unlearning's SatImp and compute_satimp_loss, beta1 5.0, beta2 1.0): ascent weighted per token
    by p^beta1 (1 - p)^beta2 (detached): saturation and importance. Their SatImp.yaml weighs this term
    0.1 (gamma) against retain NLL 1; our method.forget_weight defaults to 1: configs/methods/satimp.yaml
    sets 0.1."""
    return losses.weighted_ascent(fwd.logits, fwd.labels, cfg.satimp_beta1, cfg.satimp_beta2)


@register_forget("undial", needs_reference=True, positions="undial_positions")
def undial(fwd: Forward, cfg) -> torch.Tensor:
    """UNDIAL (Dong et al. 2024, "UNDIAL: Self-Distillation with Adjusted Logits"; open-unlearning's
    UNDIAL and compute_undial_loss, beta 10.0): cross-entropy to softmax(z_ref - beta onehot(y)), the
    reference's distribution with the answer token's logit lowered. Minimised, not ascended; bounded.

    Our default averages over answer positions (method.undial_positions=answer) and keeps the run's
    retain term (NLL, weight 1). open-unlearning averages over every position (prompt positions are
    distilled to the reference unchanged) and has no retain term (alpha 0): configs/methods/undial.yaml
    (undial_positions=all, retain_loss=none) reproduces it, with two differences in padding: its mean
    counts pad positions too (so it depends on how a batch is padded), and at a position without a
    label it lowers vocabulary entry V-100 (the label -100 used as an index); ours lowers nothing there."""
    target = losses.label_shifted(fwd.ref_logits, fwd.labels, -cfg.undial_beta)
    tokens = fwd.tokens if cfg.undial_positions == ALL else None
    return losses.soft_target_ce(fwd.logits, target, fwd.labels, tokens=tokens)


@register_forget("ceu")
def ceu(fwd: Forward, cfg) -> torch.Tensor:
    """CE-U (Yang 2025, "CE-U: Cross Entropy Unlearning"; open-unlearning's CEU): cross-entropy to the
    policy's own distribution with the answer token removed (its logit -inf, detached), skipping each
    answer's first token as open-unlearning does. Their CEU trainer has no retain term: ours adds the
    run's (NLL, weight 1 by default); configs/methods/ceu.yaml (retain_loss=none) is theirs."""
    target = losses.label_shifted(fwd.logits, fwd.labels, float("-inf"))
    return losses.soft_target_ce(fwd.logits, target, fwd.labels, skip_first=True)


@register_forget("idknll", alternate="idk", forget_grad=False)
def idknll(fwd: Forward, cfg) -> torch.Tensor:
    """IdkNLL (Maini et al. 2024, TOFU's "idk" loss in its dataloader.py; Yuan et al. 2025 name it
    IdkNLL): NLL of an "I don't know" answer to each forget prompt, mean over its answer tokens. TOFU
    sums idk and retain tokens into one mean; here the retain term is the method's own (retain_loss)."""
    return fwd.alt.nll()


@register_forget("whp", alternate="generic", forget_grad=False)
def whp(fwd: Forward, cfg) -> torch.Tensor:
    """WHP (Eldan & Russinovich 2023, "Who's Harry Potter? Approximate Unlearning in LLMs"; the generic
    logits v_base - alpha ReLU(v_reinforced - v_base) as MUSE's baselines/whos_harry_potter.py): NLL of the
    generic labels (argmax of those logits, teacher-forced on the forget text; unlearn.whp writes them to
    data.whp_targets), mean over the forget sample's labelled tokens. The paper fine-tunes on these alone
    (configs/methods/whp.yaml: no retain term); MUSE evaluates the combined logits without fine-tuning."""
    return fwd.alt.nll()


def _dpo(fwd: Forward, cfg) -> torch.Tensor:
    with torch.no_grad():
        win_ref = losses.sequence_logp(fwd.alt.ref_logits, fwd.alt.labels)
        lose_ref = losses.sequence_logp(fwd.ref_logits, fwd.labels)
    return losses.dpo(losses.sequence_logp(fwd.alt.logits, fwd.alt.labels), win_ref,
                      losses.sequence_logp(fwd.logits, fwd.labels), lose_ref, cfg.dpo_beta)


@register_forget("dpo", needs_reference=True, alternate="column")
def dpo(fwd: Forward, cfg) -> torch.Tensor:
    """DPO (Rafailov et al. 2023; open-unlearning's DPO trainer, beta 0.1): the alternate answer in
    column data.forget_alternate preferred over the forget answer, against the reference model. With
    alternates the model wrote itself (launch/generate_alternates.py) this is AltPO (Mekala et al. 2024,
    "Alternate Preference Optimization for Unlearning Factual Knowledge"; open-unlearning's
    community/methods/AltPO: DPO on its generate.py's file; configs/methods/altpo.yaml)."""
    return _dpo(fwd, cfg)


@register_forget("idkdpo", needs_reference=True, alternate="idk")
def idkdpo(fwd: Forward, cfg) -> torch.Tensor:
    """IdkDPO (Maini et al. 2024, TOFU; open-unlearning's DPO trainer on TOFU_QA_forget_idk, beta 0.1):
    DPO with an "I don't know" answer preferred over the forget answer."""
    return _dpo(fwd, cfg)


@register_forget("pdu")
def pdu(fwd: Forward, cfg) -> torch.Tensor:
    """PDU's forget term (Entesari et al. 2025, "Constrained Entropic Unlearning: A Primal-Dual
    Framework"; open-unlearning's PDU): logit-margin flattening (max_v z - mean_v z)^2 at answer
    positions. open-unlearning masks by each position's own label (one position later than the ones
    predicting answer tokens); we use the predicting positions, as every other loss here. The retain
    weight is PDU's dual variable (unlearn.train.dual): by default it moves once per optimizer step,
    theirs after every micro-batch (method.pdu_update=micro_batch, set in configs/methods/pdu.yaml)."""
    return losses.logit_margin_flatness(fwd.logits, fwd.labels)


@register_forget("rmu", needs_hidden=True)
def rmu_forget(fwd: Forward, cfg) -> torch.Tensor:
    """RMU's forget term (Li et al. 2024, "The WMDP Benchmark"; open-unlearning's RMU): the mean squared
    distance of decoder layer l's activations on forget tokens to c u, a fixed random unit vector
    scaled by method.rmu_steering_coeff (2.0). See unlearn.rmu for the reduction."""
    h = fwd.hidden
    return rmu.activation_loss(h.policy, h.target, h.mask)


# ----------------------------------------------------------------------------- retain

@register_retain("nll")
def nll(fwd: Forward, cfg) -> torch.Tensor:
    """GradDiff's retain term (Liu et al. 2022, "Continual Learning and Private Unlearning"; open-unlearning's
    GradDiff, retain_loss_type NLL): ordinary NLL on normal data, mean over answer tokens."""
    return fwd.nll()


@register_retain("kl", needs_reference=True, positions="kl_positions")
def kl(fwd: Forward, cfg) -> torch.Tensor:
    """KL(reference || policy) over the vocabulary, in fp32 (0 at step 0): open-unlearning's
    retain_loss_type KL (compute_kl_divergence; MUSE's KL retain term, Shi et al. 2024). Ours averages
    over answer positions (method.kl_positions=answer); theirs over every position of the batch, prompt
    and padding included: kl_positions=all (set in configs/methods/*.yaml) averages over every real
    token, which is theirs for a batch without padding (theirs also counts the pad positions)."""
    tokens = fwd.tokens if cfg.kl_positions == ALL else None
    return losses.kl_to_reference(fwd.logits, fwd.ref_logits, fwd.labels, tokens=tokens)


@register_retain("rmu", needs_reference=True, needs_hidden=True)
def rmu_retain(fwd: Forward, cfg) -> torch.Tensor:
    """RMU's retain term (open-unlearning's EMBED_DIFF): the mean squared distance of layer l's
    activations on retain tokens to the frozen reference's. Its weight, RMU's alpha, is retain_weight."""
    h = fwd.hidden
    return rmu.activation_loss(h.policy, h.reference, h.mask)


@register_retain("random_mismatch")
def random_mismatch(fwd: Forward, cfg) -> torch.Tensor:
    """The random-mismatch term (Yao et al. 2023, "Large Language Model Unlearning", and its code):
    NLL of random normal answers given forget prompts; labels cover answer tokens only."""
    return fwd.nll()


NONE = "none"


def forget_objective(name: str) -> Objective | None:
    if name == NONE:
        return None
    if name not in FORGET:
        raise UserError(f"unknown method.forget_loss '{name}'; expected one of: {', '.join([*FORGET, NONE])}")
    return FORGET[name]


def retain_objective(name: str) -> Objective | None:
    if name == NONE:
        return None
    if name not in RETAIN or name == "random_mismatch":
        choices = [n for n in RETAIN if n != "random_mismatch"] + [NONE]
        hint = " (random_mismatch is set by method.mismatch_weight)" if name == "random_mismatch" else ""
        raise UserError(f"unknown method.retain_loss '{name}'{hint}; expected one of: {', '.join(choices)}")
    return RETAIN[name]


def needs_reference(cfg) -> bool:
    objs = [forget_objective(cfg.forget_loss), retain_objective(cfg.retain_loss)]
    return any(o is not None and o.needs_reference for o in objs)
