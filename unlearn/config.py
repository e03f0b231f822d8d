"""Run configuration: frozen dataclasses, one docstring per field (units included).

The defaults are the embedded demo: a tiny OPT fine-tuned on a generated "book" (see
`unlearn.demo`), so `deepspeed launch/unlearn.py --ds_config ds_configs/zero2.json` runs with no
config file. Real runs start from a YAML in `configs/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEMO_DIR = ".cache/demo"
"""Where `make demo` builds the demo assets (tokenizer, random tiny OPT, data, fine-tuned base)."""


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = f"{DEMO_DIR}/base"
    """A local Hugging Face model folder or a hub id (e.g. facebook/opt-1.3b)."""
    tokenizer: str = ""
    """Tokenizer folder or hub id; empty = the model's own."""
    revision: str = ""
    """Hub revision (commit or tag) to pin; empty = the default branch."""
    lora: bool = False
    """Train LoRA adapters (peft) instead of all weights."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA input."""
    lora_target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    """Module names that get adapters (OPT: q_proj, k_proj, v_proj, out_proj, fc1, fc2)."""
    load_in_8bit: bool = False
    """Load the frozen base in 8-bit through bitsandbytes (requires lora; not with ZeRO-3)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in backward: less activation memory, one more
    forward pass of compute (works with dropout on or off, full or LoRA, every ZeRO stage)."""
    dropout: bool = False
    """Train with the model's (and LoRA's) dropout probabilities, as the paper's reference code did
    (model.train() on OPT: dropout 0.1; the harmful presets turn it on). Off = every dropout
    probability 0: deterministic passes, so the KL/NPO terms compare policy and reference without
    noise and runs on different layouts agree exactly."""


@dataclass(frozen=True)
class DataConfig:
    forget: str = f"{DEMO_DIR}/forget.txt"
    """Forget set: a local .txt/.jsonl/.json/.csv/.parquet file or a hub dataset id."""
    retain: str = f"{DEMO_DIR}/retain.txt"
    """Retain (normal) set, same forms as `forget`."""
    forget_format: str = "auto"
    """How to read `forget`: auto | text (chunked) | sentences (consecutive sentences as
    prompt/continuation pairs) | qa | pku (PKU-SafeRLHF columns, one sample per unsafe response) |
    truthfulqa. auto picks by columns (never `sentences`)."""
    retain_format: str = "auto"
    """How to read `retain`: same choices as `forget_format`."""
    forget_split: str = "train"
    """Split of a hub dataset used for the forget set (local files have only `train`)."""
    retain_split: str = "train"
    """Split of a hub dataset used for the retain set (truthfulqa/truthful_qa has only `validation`)."""
    forget_subset: str = ""
    """Hub dataset configuration name of `forget` (datasets' `name`); empty = the default."""
    retain_subset: str = ""
    """Hub dataset configuration name of `retain` (e.g. generation for truthfulqa/truthful_qa)."""
    forget_revision: str = ""
    """Hub revision (commit sha or tag) of `forget` to pin; empty = the default branch."""
    retain_revision: str = ""
    """Hub revision (commit sha or tag) of `retain` to pin; empty = the default branch."""
    truthfulqa_part: str = "train"
    """Part of the seeded TruthfulQA partition used for training: train | val | test | all."""
    truthfulqa_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    """Train/val/test fractions of the TruthfulQA partition (by question; the paper's 70/10/20)."""
    truthfulqa_seed: int = 8888
    """Seed of the TruthfulQA partition (fixed, so eval can hold out the same test questions)."""
    max_length: int = 128
    """Tokens per sample (text corpora are chunked to this; QA samples are truncated)."""
    prompt_template: str = "### Question: {prompt}\n ### Answer: {response}"
    """Template for QA samples; labels cover the `{response}` tokens only (a book's continuation:
    "{prompt} {response}")."""
    group_by_length: bool = True
    """Length-grouped batches: samples of similar length share a batch, so dynamic padding pads
    little (order stays random; see data.BatchStream). false = a plain shuffle."""
    append_eos: bool = True
    """End each QA answer with EOS (trained: the model learns to stop); the paper's code did not."""
    num_random_answers: int = 5
    """Random normal answers drawn per forget prompt and step for the random-mismatch term (the
    pool: retain answers; for TruthfulQA best + correct + incorrect answers of `truthfulqa_part`)."""
    mismatch_pass_cost: int = 256
    """Tokens one forward pass is worth: the random-mismatch batch (micro_batch_size x
    num_random_answers samples, prompts and answers of mixed lengths) is sorted by length and cut
    into the chunks that minimise padded tokens + this per pass (same loss, less padding). 0 = no
    padding at all; a value above the batch's padded tokens = always one pass."""
    idk_answers: str = "../shared/data/lexicons/tofu_idontknow.jsonl"
    """IdkNLL / IdkDPO: file of "I don't know" answers, one per line (a JSON string or {"answer": ...}
    line also works); one is drawn per forget sample and step. When this default file is absent (a bare
    clone), a built-in list of 8 is used and said so; any other missing file is an error."""
    text_prompt_tokens: int = 32
    """IdkNLL / IdkDPO on a plain-text forget set: each block's first this many tokens are its prompt,
    the rest the answer the "I don't know" replaces (32 = the verbatim ROUGE-L probe's prefix)."""
    whp_targets: str = ""
    """WHP: the JSON file of generic labels for this forget set that launch/whp_targets.py writes (from
    method.whp_reinforced and method.whp_alpha); required with forget_loss=whp. See unlearn.whp."""
    forget_alternate: str = ""
    """DPO: the forget set's column holding the preferred (alternate) answer to each prompt; required
    with forget_loss=dpo (QA, PKU or TruthfulQA forget sets)."""
    max_forget_samples: int = 0
    """Cap on forget samples (0 = all)."""
    max_retain_samples: int = 0
    """Cap on retain samples (0 = all)."""
    skip_bad_rows: bool = False
    """A data row that cannot be used (a field its format needs is null, absent or blank): false = an
    error naming the file, the row's line and the field; true = such rows are left out and a line counts them."""


@dataclass(frozen=True)
class MethodConfig:
    forget_loss: str = "ga"
    """Forget objective: ga | npo | simnpo | wga | satimp | undial | ceu | idknll | dpo | idkdpo | pdu |
    rmu | whp (see unlearn.methods; configs/methods/ holds open-unlearning's settings of each)."""
    forget_weight: float = 1.0
    """Weight of the forget objective."""
    retain_loss: str = "nll"
    """Retain objective: nll (GradDiff) | kl (to the reference model) | rmu (layer activations held
    to the reference's; RMU's alpha is retain_weight) | none."""
    retain_weight: float = 1.0
    """Weight of the retain objective (forget_loss=pdu: the starting value of its dual variable lambda)."""
    mismatch_weight: float = 0.0
    """Weight of the random-mismatch term (forget prompts -> random normal answers); 0 = off."""
    beta: float = 0.1
    """NPO's inverse temperature (Zhang et al. 2024 and open-unlearning's NPO: 0.1)."""
    simnpo_beta: float = 4.5
    """SimNPO's inverse temperature on the length-normalised log-prob (open-unlearning's SimNPO: 4.5;
    at NPO's 0.1 SimNPO's loss is nearly linear in the log-prob, i.e. almost plain gradient ascent)."""
    simnpo_gamma: float = 0.0
    """SimNPO's reward margin gamma as in the SimNPO paper, loss -(2/beta) log sigmoid(-beta/|y| log
    pi(y|x) - gamma). open-unlearning's `delta` is gamma / beta (it subtracts delta from NLL/|y|
    inside the sigmoid's beta); both default to 0."""
    wga_beta: float = 1.0
    """WGA: exponent of the token probability that weights each token's ascent (open-unlearning: 1.0)."""
    satimp_beta1: float = 5.0
    """SatImp: exponent of p in the token weight p^beta1 (1 - p)^beta2 (open-unlearning: 5.0)."""
    satimp_beta2: float = 1.0
    """SatImp: exponent of (1 - p) (open-unlearning: 1.0)."""
    undial_beta: float = 10.0
    """UNDIAL: how far the answer token's reference logit is lowered (open-unlearning: 10.0)."""
    undial_positions: str = "answer"
    """UNDIAL: positions its cross-entropy averages over: answer (those predicting answer tokens) | all
    (every position followed by a real token; at prompt positions the target is the reference's own
    distribution: open-unlearning's UNDIAL, configs/methods/undial.yaml). See unlearn.methods.undial."""
    kl_positions: str = "answer"
    """retain_loss=kl: positions KL(reference || policy) averages over: answer (those predicting answer
    tokens) | all (every real token's position, prompt and last token included: open-unlearning's
    compute_kl_divergence, which counts padding too). See unlearn.methods.kl."""
    dpo_beta: float = 0.1
    """DPO / IdkDPO inverse temperature (open-unlearning's configs/trainer/DPO.yaml: 0.1)."""
    pdu_eps: float | None = None
    """PDU: the retain-loss bound eps (nats for retain_loss=nll) of the dual update; required with
    forget_loss=pdu (open-unlearning leaves it unset too): a little above the model's retain loss at
    the start (their TOFU runs 0.3, MUSE Books 0.1, News 1.5)."""
    pdu_eta: float = 1.0
    """PDU: dual step size eta in lambda <- max(0, lambda + eta (L_retain - eps)) (open-unlearning's
    PDU.yaml: 1.0). lambda starts at method.retain_weight (their alpha; the paper's runs use 50-100)."""
    pdu_warmup_epochs: float = 5.0
    """PDU: forget-set epochs before lambda starts to move (open-unlearning's PDU.yaml: 5)."""
    pdu_update: str = "step"
    """PDU: when lambda moves: step (once per optimizer step, by the retain loss averaged over the
    step's micro-batches and ranks) | micro_batch (after every micro-batch, by its retain loss averaged
    over ranks: open-unlearning's PDU, whose lambda moves grad_accum times per step). See unlearn.train.dual."""
    whp_reinforced: str = ""
    """WHP: the reinforced model, i.e. the model fine-tuned further on the forget set (launch/finetune.py
    with data.retain = the forget set); launch/whp_targets.py reads its logits beside the run's model's."""
    whp_alpha: float = 1.0
    """WHP: alpha of the generic logits v_base - alpha ReLU(v_reinforced - v_base) (MUSE's WHP: 1.0)."""
    task_vector_alpha: float = 1.0
    """Task Vector (launch/task_vector.py): theta - alpha (theta_ft - theta) (MUSE's code default 1.0; its
    scripts run 5.0, configs/methods/task_vector.yaml)."""
    rmu_layer: int = 7
    """RMU: decoder layer l (0-based) whose output is steered (forget) and held to the reference's
    (retain) (open-unlearning and the WMDP code: 7 on 32-layer 7B models)."""
    rmu_steering_coeff: float = 2.0
    """RMU: c, the length of the target c u of the forget activations (open-unlearning RMU.yaml: 2;
    the WMDP paper used 6.5 on Zephyr-7B; it should grow with the layer's activation norm)."""
    rmu_train_layers: tuple[int, ...] = (5, 6, 7)
    """RMU: decoder layers whose parameters train, all others frozen (WMDP code and open-unlearning's
    WMDP experiment: 5, 6, 7 = l-2..l); empty = every trainable parameter (open-unlearning RMU.yaml)."""
    rmu_train_modules: tuple[str, ...] = ("down_proj", "fc2")
    """RMU: modules inside those layers that train (WMDP: the MLP's output projection, Llama/Mistral
    down_proj = OPT fc2; OPT's fc2 bias trains too); empty = the whole layers. With LoRA: the adapters
    on these modules (model.lora_target_modules must include one)."""
    schedule: str = "alternate"
    """alternate: separate forget and retain optimizer steps; joint: one step on the weighted sum."""
    forget_steps_per_cycle: int = 1
    """alternate: forget optimizer steps before each run of retain steps."""
    retain_steps_per_cycle: int = 1
    """alternate: retain optimizer steps after each run of forget steps."""
    max_forget_loss: float = 0.0
    """Stop when the forget NLL (mean over answer tokens, nats) exceeds this; 0 = never."""


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"
    """adamw (torch, fp32 moments: 8 bytes per trainable parameter) | adamw8bit (bitsandbytes,
    block-wise 8-bit moments: 2 bytes; the update still lands on fp32 master weights)."""
    lr: float = 2e-4
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup_steps: int = 0
    """Optimizer steps of linear warm-up from 0 to `lr`."""
    schedule: str = "linear"
    """LR after warm-up: linear (decay to 0 at max_steps) | constant."""
    grad_clip: float = 1.0
    """Max global gradient L2 norm (DeepSpeed gradient_clipping); 0 = off."""
    phase_state: str = "separate"
    """separate (forget and retain steps of the alternate schedule keep one AdamW state each; costs a
    second optimizer state in memory) | shared (one state for both). The joint schedule has one phase,
    so one state either way. Separate forgets more at equal retain perplexity on the demo (README);
    see unlearn.train.phase_state."""


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 60
    """Optimizer steps in total (forget and retain steps both count); exact."""
    epochs: float = 0.0
    """If > 0, max_steps = ceil(epochs * samples / global_batch_size) of the forget set (fine-tune)."""
    micro_batch_size: int = 0
    """Samples per rank per forward; 0 = global_batch_size / ranks (no gradient accumulation), so the
    same config runs on 1, 2, 4 or 8 ranks."""
    global_batch_size: int = 8
    """Samples per optimizer step over all ranks (= micro * grad_accum * world_size)."""
    seed: int = 0
    """Seeds weights-independent randomness: data order, dropout, random answers."""
    log_every_n_steps: int = 5
    """Optimizer steps between TensorBoard/console logs."""
    save_every_n_steps: int = 0
    """Optimizer steps between checkpoints (0 = only at the end)."""
    keep_last_n: int = 0
    """Checkpoints to keep (0 = all); the newest complete one is never deleted."""
    save_engine_state: bool = True
    """Store optimizer/LR/RNG/data position in checkpoints (needed for --resume; ~3x the weights)."""
    max_nonfinite_steps: int = 5
    """Consecutive non-finite losses/gradients (steps skipped) before the run stops."""
    pack: bool = True
    """One policy pass per micro-batch over every term, each shared prompt once, no padding, logits
    only where a loss reads them (unlearn.train.packing); false = one padded pass per term (the
    reference the packed step is tested against)."""
    one_sync_step: bool = True
    """ZeRO-1/2: DeepSpeed's optimizer step with the gradient norm read once (one host-device sync a
    step) and without its per-tensor overflow scan and re-pointing (unlearn.train.zero_step); false
    = DeepSpeed's own step, which gives the same weights. ZeRO-3 always runs DeepSpeed's."""
    compile: bool = False
    """torch.compile each decoder layer of the policy and of a frozen reference copy (inductor,
    dynamic shapes: a packed batch's rows and width change every step without recompiling), so a
    GPU runs a layer's elementwise work in fewer kernels (unlearn.train.engine.compile_layers). Off
    by default until slurm/bench_gpu.sh measures it on a GPU: on CPUs the first step compiles for
    ~15 s (tiny model) and later steps are no faster. ZeRO-0/1/2; not with RMU's layer taps."""


@dataclass(frozen=True)
class RunConfig:
    name: str = ""
    """Run folder name under output_dir; empty = a fresh timestamped name."""
    output_dir: str = "runs"
    """Parent folder of run folders."""
    export_dir: str = ""
    """Also write the final weights here as a plain Hugging Face folder (e.g. a base for unlearning)."""
    oracle: str = ""
    """A model made as the starting model was but that never saw the forget data (e.g. stage 1 on the
    retain data only): the end-of-run table and `evaluate.py --run` show its row beside before/after, so
    "after" reads against the goal of unlearning, not just against the start. Empty = no such row."""


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)


FINETUNE_DEFAULTS = {"method": {"forget_loss": "none", "retain_loss": "nll", "mismatch_weight": 0.0}}
"""What launch/finetune.py changes in the defaults: plain NLL on data.retain, nothing to forget."""
