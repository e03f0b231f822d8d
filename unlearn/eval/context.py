"""What every eval suite needs: the checkpoint's model and run config, options, data, and a
lazily loaded reference model whose results are cached per run (computed once, not per checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

from unlearn import sources
from unlearn.config import Config
from unlearn.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
"""Public data beside the checkout (../shared/data); defaults that point here are used only if present."""


@dataclass(frozen=True)
class EvalOptions:
    suites: tuple[str, ...] = ()
    """Suites to run; empty = every suite whose inputs the run provides."""
    force: bool = False
    """Re-run suites already recorded in eval.json."""
    harmful_prompts: str = ""
    """Harmful prompts file (AdvBench/HarmBench/HarmfulQA/XSTest/PKU/jsonl); empty = AdvBench or the forget prompts."""
    judge: str = "keyword"
    """keyword (offline refusal judge), a sequence-classification model folder / hub id, or generative:PATH
    (a causal LM safety judge, Llama-Guard style)."""
    judge_threshold: float = 0.5
    """Probability above which a judge label counts as harmful."""
    judge_label: str = ""
    """A classifier judge's harmful class by name; empty = read from the label names (refused if unclear)."""
    judge_template: str = "llama-guard"
    """A generative judge's prompt: chat (its tokenizer's chat template) | llama-guard | simple."""
    judge_labels: str = ""
    """Human-labelled completions (XSTest CSV: prompt, completion, final_label; comma list) on whose held-out
    half the judge's accuracy is measured for eval.json; empty = ../shared/data/xstest/xstest_v2_completions_*.csv
    when present; none = not measured."""
    reference: str = ""
    """Original model for similarity, effectiveness and PrivLeak; empty = the run's model.name_or_path; none = off."""
    reference_auc: float = -1.0
    """Min-k% AUC (MUSE orientation: held-out positive) of a model retrained without the forget set, for
    PrivLeak; < 0 = none given (then --retrained, else no PrivLeak)."""
    retrained: str = ""
    """A model retrained without the forget set (folder or hub id): its Min-k% AUC is PrivLeak's reference."""
    qa: str = ""
    """Knowledge QA file (question/answer, TOFU format); empty = the forget set when it is QA."""
    truthfulqa: str = ""
    """TruthfulQA: a CSV, a file in the hub's multiple_choice schema, or a hub id as ID:CONFIG (e.g.
    truthful_qa:multiple_choice); empty = ../shared/data/truthfulqa/TruthfulQA.csv when present; none = skip."""
    truthfulqa_variant: str = "auto"
    """TruthfulQA MC scoring: standard (lm-evaluation-harness truthfulqa_mc1/mc2: QA primer, mc1/mc2_targets),
    template (the run's QA template over Best/Correct/Incorrect answers), auto (standard when the data has
    mc1_targets/mc2_targets, else template)."""
    loglik_bos: str = "tokenizer"
    """Special tokens in multiple-choice log-likelihoods (mc suite, standard TruthfulQA): tokenizer (its own
    BOS before the context, as lm-evaluation-harness >= 0.4.9.2) | none (no special tokens, as the harness
    <= 0.4.9.1)."""
    mc: tuple[str, ...] = ()
    """Multiple-choice set for the mc suite, [forget=|retain=]SOURCE (repeatable; no side = forget): a
    local CSV/JSONL/JSON/parquet with question, choices, answer, or a hub id as ID:CONFIG (cais/wmdp:wmdp-bio,
    cais/mmlu:college_biology; test split)."""
    muse: str = ""
    """MUSE data for the muse suite: a hub id (muse-bench/MUSE-News, muse-bench/MUSE-Books) or a folder in
    its layout (knowmem/{forget,retain}_qa[_icl].json, verbmem/forget.json); empty = the run's own data."""
    muse_stemmer: bool = False
    """MUSE suite: Porter-stem words before ROUGE-L, as open-unlearning's MUSE metrics score; off = unstemmed,
    as MUSE's own code, whose published tables the numbers sit beside."""
    normal_prompts: str = ""
    """Normal prompts for similarity/degeneration (QA or text file); empty = the run's retain data."""
    holdout: str = ""
    """Held-out text never trained on (non-members) for the privacy suite."""
    forget: str = ""
    """Forget data for every suite (file or hub id, format detected); empty = the run's data.forget. A
    stage-1 model, say, is measured on the text a later stage will unlearn."""
    retain: str = ""
    """Retain data for every suite (file or hub id, format detected); empty = the run's data.retain."""
    skip_bad_rows: bool = False
    """Leave out data rows that cannot be used (a field their format needs is null, absent or blank) and
    count them, as data.skip_bad_rows=true; off = such a row is an error naming its file, line and field."""
    tofu_forget: str = "forget10"
    """TOFU suite: the forget split (forget01 | forget05 | forget10) whose forget quality is measured."""
    retain_model: str = ""
    """TOFU suite: a retain model (never trained on the forget split) for forget quality: its checkpoint or
    model folder, its eval.json, or a TOFU_EVAL.json (ours or open-unlearning's); empty = no forget quality."""
    tofu_data: str = ""
    """TOFU suite: a folder of <split>.json files or a hub id; empty = ../shared/data/tofu when present, else
    locuslab/TOFU (at the pinned revision)."""
    tofu_max_new_tokens: int = 200
    """TOFU suite: greedy tokens per answer for ROUGE (open-unlearning's generation default: 200)."""
    max_new_tokens: int = 64
    """Greedy tokens generated per response (harmful, knowledge, normal prompts)."""
    prefix_tokens: int = 32
    """Verbatim memorisation: tokens of a forget passage given as the prompt."""
    continuation_tokens: int = 32
    """Verbatim memorisation: tokens generated and compared with the true continuation."""
    privacy_unit: str = "document"
    """Privacy suite, text data: what one Min-k% sample is. document: each document whole (its first
    model-window tokens), as MUSE scores its privleak rows; block: data.max_length-token blocks of the
    documents concatenated, as the run trained on them (for a single long text, e.g. one .txt book)."""
    min_k: float = 0.4
    """Min-k% prob: share of lowest-probability tokens averaged per sample (MUSE: 0.4, floor of k x T)."""
    limit: int = 1000
    """Items per metric (prompts, passages, questions), in file order; 0 = all (a PKU forget set
    holds tens of thousands: all of them would make one eval job take hours)."""
    batch_size: int = 16
    """Sequences per forward/generate call."""
    device: str = ""
    """cpu | cuda | cuda:N; empty = cuda when available."""
    dtype: str = "float32"
    """Weights dtype for evaluation: float32 | bfloat16 | float16."""


def add_option_flags(parser) -> None:
    """One `--name` flag per EvalOptions field except `suites`; its help is the field's docstring."""
    for f in fields(EvalOptions):
        if f.name == "suites":
            continue
        doc = _field_doc(f.name)
        if f.type in ("bool", bool):
            parser.add_argument(f"--{f.name}", action="store_true", help=doc)
        elif str(f.type).startswith("tuple"):  # repeatable: --mc A --mc B
            parser.add_argument(f"--{f.name}", action="append", default=[], help=doc)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(f"--{f.name}", type=kind, default=f.default, help=f"{doc} (default: {f.default!r})")


def options_from_flags(args, suites: tuple[str, ...]) -> EvalOptions:
    """EvalOptions from the flags `add_option_flags` made (parsed into `args`)."""
    values = {f.name: getattr(args, f.name) for f in fields(EvalOptions) if f.name != "suites"}
    return EvalOptions(suites=suites, **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _field_doc(name: str) -> str:
    import ast
    import inspect

    body = ast.parse(inspect.getsource(EvalOptions)).body[0].body
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and node.target.id == name and isinstance(nxt, ast.Expr):
            return nxt.value.value.replace("%", "%%")  # argparse formats help with %
    return ""


def _dtype(name: str):
    import torch

    if name not in ("float32", "bfloat16", "float16"):
        raise UserError(f"--dtype '{name}' is unknown; expected float32, bfloat16 or float16")
    return getattr(torch, name)


def device_of(opts: EvalOptions) -> str:
    import torch

    return opts.device or ("cuda" if torch.cuda.is_available() else "cpu")


class Context:
    """The model is loaded on first use, so the suites' inputs are checked (unlearn.eval.inputs) first."""

    def __init__(self, checkpoint: Path, cfg: Config, opts: EvalOptions, cache_dir: Path):
        self.checkpoint, self.cfg, self.opts, self.cache_dir = checkpoint, cfg, opts, cache_dir
        self._loaded = None
        self._reference = None

    @property
    def model(self):
        return self._load()[0]

    @property
    def tokenizer(self):
        return self._load()[1]

    def _load(self):
        from unlearn.model import load_for_eval

        if self._loaded is None:
            self._loaded = load_for_eval(str(self.checkpoint), _dtype(self.opts.dtype), device_of(self.opts))
        return self._loaded

    @property
    def reference_name(self) -> str:
        name = self.opts.reference or self.cfg.model.name_or_path
        return "" if name.lower() == "none" else name

    def reference(self):
        """(model, tokenizer) of the original model, loaded on first use."""
        from unlearn.model import load_for_eval

        if not self.reference_name:
            raise UserError("this metric needs a reference model; expected --reference MODEL (not none)")
        if self._reference is None:
            self._reference = load_for_eval(self.reference_name, _dtype(self.opts.dtype), device_of(self.opts))
        return self._reference

    def cached(self, key: dict[str, Any], compute: Callable[[], Any]) -> Any:
        """Result of `compute()` (JSON-able) stored under a hash of `key` in the run's eval cache."""
        full = {**key, "reference": self.reference_name, "reference_version": _folder_version(self.reference_name),
                "options": _cache_options(self.opts)}
        digest = hashlib.sha1(json.dumps(full, sort_keys=True).encode()).hexdigest()[:16]
        path = self.cache_dir / f"reference-{digest}.json"
        if path.is_file():
            return json.loads(path.read_text())["value"]
        value = compute()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"key": full, "value": value}) + "\n")
        os.replace(tmp, path)  # concurrent eval jobs of one run may race; both write the same value
        return value

    def limited(self, items: list) -> list:
        return items[:self.opts.limit] if self.opts.limit else items

    def samples(self, role: str, source_csv: str = "") -> list[dict]:
        """Tokenised samples of the run's `role` data ("forget" | "retain"), as the run built them,
        or of `source_csv` read with that role's settings; capped by --limit."""
        from unlearn import data  # torch: kept out of `launch/evaluate.py --help`

        out: list[dict] = []
        for source in data.split_sources(source_csv or getattr(self.cfg.data, role)):
            out += data.build_samples(source, role, self.tokenizer, self.cfg.data)
        return self.limited(out)

    def file_samples(self, source: str) -> list[dict]:
        """Samples of a file given on the command line, its format detected from its columns."""
        from unlearn import data

        d = self.cfg.data
        rows = sources.load_rows(source)
        fmt = sources.detect_format(rows, source)
        if fmt == "text":
            samples = data.text_samples(sources.texts_of(rows, source, fmt, d.skip_bad_rows), self.tokenizer,
                                        d.max_length)
        else:
            samples = [data.qa_sample(p, a, self.tokenizer, d.prompt_template, d.max_length, d.append_eos)
                       for p, a in sources.qa_pairs(rows, fmt, source, d.skip_bad_rows)]
        return self.limited(samples)

    def documents(self, role: str, source: str = "") -> list[str] | None:
        """Whole documents of the run's `role` data (or of the file `source`) in file order, when they are
        text ("text" format; a .txt file is one document); None for other formats. Capped by --limit."""
        from unlearn import data

        if source:
            rows = sources.load_rows(source)
            return self.limited(sources.texts_of(rows, source, "text", self.cfg.data.skip_bad_rows)) \
                if sources.detect_format(rows, source) == "text" else None
        if role_format(self.cfg, role) != "text":
            return None
        d, texts = self.cfg.data, []
        for src in data.split_sources(getattr(d, role)):
            rows = sources.load_rows(src, getattr(d, f"{role}_split"), getattr(d, f"{role}_revision"),
                                     getattr(d, f"{role}_subset"))
            texts += sources.texts_of(rows, src, "text", d.skip_bad_rows)
        return self.limited(texts)

    def qa_pairs(self, source: str) -> list[tuple[str, str]]:
        """(question, answer) pairs of a QA-like file (format by columns), capped by --limit."""
        rows = sources.load_rows(source)
        return self.limited(sources.qa_pairs(rows, sources.detect_format(rows, source), source,
                                             self.cfg.data.skip_bad_rows))

    def prompt(self, question: str) -> str:
        """`question` in the run's template up to the answer, as data.qa_sample cuts it."""
        return self.cfg.data.prompt_template.partition("{response}")[0].replace("{prompt}", question).rstrip()


def role_format(cfg: Config, role: str) -> str:
    """The format of the run's first `role` source (auto-detected as the run did)."""
    from unlearn import data

    fmt = getattr(cfg.data, f"{role}_format")
    if fmt != "auto":  # stated: no need to load (maybe from the hub) just to look at columns
        return fmt
    first = data.split_sources(getattr(cfg.data, role))[0]
    if Path(first).suffix.lower() == ".txt":  # a .txt file is always a text corpus
        return "text"
    return data.read(first, role, cfg.data)[1]


def _folder_version(name: str) -> float:
    """Newest modification time of a local model folder's files (0 for a hub id): a reference
    rewritten in place (e.g. a re-exported base) must not reuse results cached for the old one."""
    folder = Path(name)
    return max((p.stat().st_mtime for p in folder.iterdir() if p.is_file()), default=0.0) if folder.is_dir() else 0.0


def _cache_options(opts: EvalOptions) -> dict[str, Any]:
    keep = ("judge", "judge_threshold", "max_new_tokens", "prefix_tokens", "continuation_tokens", "min_k",
            "privacy_unit", "limit", "dtype", "tofu_forget", "tofu_data")
    return {k: v for k, v in asdict(opts).items() if k in keep}
