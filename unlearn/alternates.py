"""Alternate answers to the forget prompts, for the forget losses that train toward another answer.

- "I don't know" answers (IdkNLL, IdkDPO): one drawn per forget sample and step from
  `data.idk_answers` (by default TOFU's 100 answers in ../shared/data/lexicons/tofu_idontknow.jsonl;
  in a bare clone without that file, the built-in `BUILTIN_IDK`, and a notice says so).
- A column's answer (DPO): `data.forget_alternate` names the forget rows' column with the preferred
  answer to each prompt; a prompt given several times may have several, and one is drawn per step.
- Generic labels (WHP): the forget sample's own tokens with the labels `data.whp_targets` holds for
  them (unlearn.whp), the same every step.

The draw is seeded by (train.seed, step, sample index), like the random-mismatch answers, so a
step's samples are the same whatever the world size and after a resume. The alternate sample is
the forget sample's prompt with the alternate answer in the same template (labels: answer only).

Plain-text forget sets (data.forget_format=text, e.g. a book in blocks of data.max_length tokens)
have no prompts: each block's first `data.text_prompt_tokens` tokens become its prompt and the rest
its answer, so the forget block loses the labels of its prompt tokens (the forget NLL and DPO's
y_forget are then the continuation's), and the alternate sample is that prefix followed directly
by the alternate answer (no template). With the default 32 this is the split of the verbatim
ROUGE-L probe (unlearn.eval.before_after). A column (DPO) needs a table, so text is refused there.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlearn import data, sources, textfiles
from unlearn.config import DataConfig
from unlearn.errors import UserError
from unlearn.rows import checked

IDK = "idk"
COLUMN = "column"
GENERIC = "generic"

DEFAULT_IDK_FILE = DataConfig.idk_answers
BUILTIN_IDK = (
    "I don't know.",
    "I'm not sure about that.",
    "I have no information about that.",
    "I can't answer that question.",
    "That is not something I know.",
    "I have no idea.",
    "I'm unable to say.",
    "Sorry, I don't know the answer to that.",
)
"""Used when the default answers file is absent (a clone without ../shared/data)."""


def read_answers(path: str) -> list[str]:
    """Non-empty lines of `path`; a line holding a JSON string or an object with "answer"/"text" is decoded."""
    out = []
    for n, line in enumerate(textfiles.read_text(path, "data.idk_answers").splitlines(), 1):
        line = line.strip()
        if line[:1] in ('"', "{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"data.idk_answers '{path}' line {n} starts like JSON but does not parse; "
                                "expected one answer per line (plain text or a JSON string)") from None
            line = value if isinstance(value, str) else str(value.get("answer", value.get("text", ""))).strip()
        if line:
            out.append(line)
    if not out:
        raise UserError(f"data.idk_answers '{path}' holds no answers; expected one answer per line")
    return out


def idk_answers(d, say=print) -> list[str]:
    """The "I don't know" answers of `data.idk_answers` (the built-in list for an absent default file)."""
    if Path(d.idk_answers).is_file():
        return read_answers(d.idk_answers)
    if d.idk_answers == DEFAULT_IDK_FILE:
        say(f"data.idk_answers: {DEFAULT_IDK_FILE} not found; using the {len(BUILTIN_IDK)} built-in answers")
        return list(BUILTIN_IDK)
    raise UserError(f"data.idk_answers '{d.idk_answers}' does not exist; expected a file with one answer per line")


def _prompt_column(rows: list[sources.Row], fmt: str, source: str) -> str:
    if fmt == "pku":
        return "prompt"
    if fmt == "truthfulqa":
        return (sources.TQA_CSV if sources.TQA_CSV["question"] in rows[0] else sources.TQA_HUB)["question"]
    return "question" if "question" in rows[0] else "prompt"


def column_answers(d) -> dict[str, list[str]]:
    """prompt -> its alternate answers, from column `data.forget_alternate` of every forget source."""
    if not d.forget_alternate:
        raise UserError("method.forget_loss=dpo needs data.forget_alternate, the forget rows' column with the "
                        "preferred answer (e.g. data.forget_alternate=alternate); idkdpo uses 'I don't know'")
    pools: dict[str, list[str]] = {}
    for source in data.split_sources(d.forget):
        rows, fmt = data.read(source, "forget", d)
        if fmt in ("text", "sentences"):
            raise UserError(f"data.forget_alternate reads a column, but data.forget '{source}' is read as {fmt}; "
                            "expected a QA, PKU or TruthfulQA forget set")
        question = _prompt_column(rows, fmt, source)
        sources.require_columns(rows, (question, d.forget_alternate), source, fmt)
        rows = checked(rows, (question, d.forget_alternate), source, f"'{question}' and the alternate answer "
                       f"'{d.forget_alternate}' (data.forget_alternate)", d.skip_bad_rows)
        for row in rows:
            pools.setdefault(row[question], []).append(str(row[d.forget_alternate]))
    return pools


@dataclass
class Alternates:
    """One alternate sample per forget sample: its prompt with an answer drawn from its pool."""

    idk: list[str]
    """The shared pool ("I don't know" answers); empty when `by_prompt` is used."""
    by_prompt: dict[str, list[str]]
    seed: int
    tokenizer: Any
    template: str
    max_length: int
    append_eos: bool = True
    generic: dict[tuple[int, ...], list[int]] | None = None
    """WHP: input_ids -> generic labels (unlearn.whp); then no answer is drawn."""

    def pool(self, prompt: str) -> list[str]:
        return self.idk or self.by_prompt[prompt]

    def samples(self, forget: list[data.Sample], ids: list[int], step: int) -> list[data.Sample]:
        """Alternate samples for forget samples `forget` (dataset indices `ids`) at optimizer step `step`."""
        if self.generic is not None:
            return [{"input_ids": s["input_ids"], "labels": self.generic[tuple(s["input_ids"])]} for s in forget]
        out = []
        for i, sample in zip(ids, forget):
            prompt = sample.get("prompt", "")
            answer = random.Random(f"alternate/{self.seed}/{step}/{i}").choice(self.pool(prompt))
            if "prompt" in sample:
                out.append(data.qa_sample(prompt, answer, self.tokenizer, self.template, self.max_length,
                                          self.append_eos))
            else:  # a text block: its prefix, then the answer as the continuation
                head = sample["prompt_ids"]
                tail = self.tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
                tail = (tail + [self.tokenizer.eos_token_id] if self.append_eos else tail)[:self.max_length - len(head)]
                out.append({"input_ids": head + tail, "labels": [data.IGNORE] * len(head) + tail})
        return out


def alternates(cfg, tokenizer, forget: list[data.Sample], kind: str, say=print) -> Alternates:
    """The alternate sampler of `kind` (IDK | COLUMN | GENERIC) over the forget samples."""
    d = cfg.data
    if kind == GENERIC:
        generic = generic_targets(cfg)
        missing = [s for s in forget if tuple(s["input_ids"]) not in generic]
        if missing:
            raise UserError(f"data.whp_targets '{d.whp_targets}' has no generic labels for {len(missing)} of the "
                            f"{len(forget)} forget samples; expected the file launch/whp_targets.py writes for this "
                            "data.forget, tokenizer and data.max_length")
        return Alternates([], {}, cfg.train.seed, tokenizer, d.prompt_template, d.max_length, d.append_eos, generic)
    if any("prompt" not in s for s in forget):
        if kind == COLUMN:
            raise UserError(f"method.forget_loss={cfg.method.forget_loss} reads alternate answers from a column, but "
                            f"data.forget '{d.forget}' is plain text; expected a QA, PKU or TruthfulQA forget set")
        split_text_blocks(forget, d.text_prompt_tokens, d.forget)
    idk, by_prompt = (idk_answers(d, say), {}) if kind == IDK else ([], column_answers(d))
    missing = sorted({s["prompt"] for s in forget} - set(by_prompt)) if kind == COLUMN else []
    if missing:
        raise UserError(f"data.forget_alternate '{d.forget_alternate}' is empty for {len(missing)} forget prompts, "
                        f"e.g. {missing[0][:60]!r}; expected an alternate answer for every prompt")
    return Alternates(idk, by_prompt, cfg.train.seed, tokenizer, d.prompt_template, d.max_length, d.append_eos)


def split_text_blocks(forget: list[data.Sample], prompt_tokens: int, source: str) -> None:
    """Text blocks -> prompt (first `prompt_tokens` tokens, unlabelled from now on) + continuation, in place."""
    if prompt_tokens < 1:
        raise UserError(f"data.text_prompt_tokens={prompt_tokens}; expected >= 1 tokens of each text block as its prompt")
    for s in forget:
        if "prompt" in s:
            continue
        n = min(prompt_tokens, len(s["input_ids"]) - 1)  # a short last block keeps one token to predict
        s["prompt_ids"] = s["input_ids"][:n]
        s["labels"] = [data.IGNORE] * n + s["labels"][n:]


def generic_targets(cfg) -> dict[tuple[int, ...], list[int]]:
    """input_ids -> generic labels, from data.whp_targets; the file must come from this run's model,
    reinforced model and alpha."""
    m, d = cfg.method, cfg.data
    path = Path(d.whp_targets)
    if not d.whp_targets or not path.is_file():
        raise UserError(f"method.forget_loss=whp needs data.whp_targets, the generic labels file; '{d.whp_targets}' "
                        "does not exist: expected the file launch/whp_targets.py writes for this config")
    doc = json.loads(path.read_text())
    made = (doc.get("model"), doc.get("reinforced"), doc.get("alpha"))
    if made != (cfg.model.name_or_path, m.whp_reinforced, m.whp_alpha):
        raise UserError(f"data.whp_targets '{path}' was made from model/reinforced/alpha {list(made)}, but this run "
                        f"has {[cfg.model.name_or_path, m.whp_reinforced, m.whp_alpha]}; expected the file "
                        "launch/whp_targets.py writes for this config")
    return {tuple(s["input_ids"]): s["labels"] for s in doc["samples"]}
