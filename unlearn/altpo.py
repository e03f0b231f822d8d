"""AltPO's first step: the model writes its own alternate answers to the forget prompts.

Mekala et al. 2024, "Alternate Preference Optimization for Unlearning Factual Knowledge in Large Language
Models"; open-unlearning's community/methods/AltPO, whose generate.py writes the file its DPO trainer
reads. For each forget (prompt, answer) pair of the run's data.forget (QA-like formats; `sentences` for a
book) the model to be unlearned reads an instruction quoting both and asking for another answer with
other facts (`TEMPLATE`, or `template`: any text with {question} and {answer}; open-unlearning's own
prompts are Llama-2 / Llama-3 chat instructions), and writes `repeats` answers, sampled at temperature 1
with up to 200 new tokens as theirs (greedy: one answer). Each is cut at the first stop string
("Question:", as theirs) and stripped; an empty one is drawn again (up to `tries` times).

The file is JSON lines {"question", "answer", "alternate"}, one line per alternate, what a run reads as
data.forget with data.forget_alternate=alternate (configs/methods/altpo.yaml): each forget prompt then
appears `repeats` times, as in open-unlearning's dataset built from their file. `<file>.meta.json`
beside it records the model, the prompt and the sampling settings.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from unlearn.errors import UserError

TEMPLATE = ("Question: {question}\nAnswer: {answer}\n"
            "Write another answer to the question that changes its facts into different, plausible ones.\n"
            "Alternate answer:")


@dataclass(frozen=True)
class Sampling:
    repeats: int = 5
    """Alternates per forget prompt (open-unlearning's generate.yaml: 5)."""
    max_new_tokens: int = 200
    """Tokens generated per alternate at most (theirs: 200)."""
    temperature: float = 1.0
    """Sampling temperature (theirs: 1.0)."""
    greedy: bool = False
    """Greedy decoding: one deterministic alternate per prompt (repeats must be 1)."""
    stop: tuple[str, ...] = ("Question:",)
    """Each alternate is cut at the first of these strings."""
    template: str = TEMPLATE
    """The instruction the model reads, with {question} and {answer}."""
    batch_size: int = 8
    """Prompts per generate() call."""
    tries: int = 5
    """Extra draws for a prompt whose alternates came out empty, before giving up."""
    seed: int = 0


def forget_pairs(cfg) -> list[tuple[str, str]]:
    """(prompt, answer) of every data.forget source, in file order (data.max_forget_samples applies)."""
    # torch, datasets: imported when the job runs, so --help stays fast
    from unlearn import data

    d = cfg.data
    pairs: list[tuple[str, str]] = []
    for source in data.split_sources(d.forget):
        rows, fmt = data.read(source, "forget", d)
        if fmt == "text":
            raise UserError(f"AltPO writes alternate answers to forget prompts, but data.forget '{source}' is plain "
                            "text; expected a QA-like forget set (data.forget_format=qa, or sentences for a book)")
        pairs += data.prompt_pairs(rows, fmt, source)
    return pairs[:d.max_forget_samples] if d.max_forget_samples else pairs


def check(s: Sampling) -> None:
    if "{question}" not in s.template or "{answer}" not in s.template:
        raise UserError(f"--template {s.template!r} lacks {{question}} or {{answer}}; expected both")
    if s.greedy and s.repeats != 1:
        raise UserError(f"--greedy writes one alternate per prompt, but --repeats is {s.repeats}; expected --repeats 1")
    if s.repeats < 1 or s.max_new_tokens < 1 or s.batch_size < 1 or s.temperature <= 0:
        raise UserError("--repeats, --max_new_tokens and --batch_size must be >= 1 and --temperature > 0")


def _cut(text: str, stop: tuple[str, ...]) -> str:
    for s in stop:
        text = text.split(s, 1)[0]
    return text.strip()


def _draw(model, tok, prompts: list[str], s: Sampling, limit: int) -> list[str]:
    """One alternate per prompt (left-padded batch, prompts cut from the left to `limit` tokens)."""
    import torch

    enc = tok(prompts, return_tensors="pt", padding=True, truncation=True, max_length=limit)
    enc = {k: v.to(model.device) for k, v in enc.items()}
    sampling = {"do_sample": not s.greedy, **({} if s.greedy else {"temperature": s.temperature})}  # as their call
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=s.max_new_tokens, pad_token_id=tok.pad_token_id,
                             stop_strings=list(s.stop) or None, tokenizer=tok, **sampling)
    new = out[:, enc["input_ids"].size(1):]
    return [_cut(text, s.stop) for text in tok.batch_decode(new, skip_special_tokens=True)]


def generate(model, tok, pairs: list[tuple[str, str]], s: Sampling) -> list[dict[str, str]]:
    """Rows {question, answer, alternate}: `s.repeats` per pair, in pair order."""
    import torch

    check(s)
    torch.manual_seed(s.seed)
    tok.padding_side, tok.truncation_side = "left", "left"
    positions = getattr(model.config, "max_position_embeddings", 10**9)
    limit = positions - s.max_new_tokens
    prompts = [s.template.replace("{question}", q).replace("{answer}", a) for q, a in pairs]
    found: list[list[str]] = [[] for _ in pairs]
    for attempt in range(1 + s.tries):
        todo = [i for i, got in enumerate(found) if len(got) < s.repeats]
        if not todo or (attempt and s.greedy):
            break
        for start in range(0, len(todo), s.batch_size):
            idx = todo[start:start + s.batch_size]
            for _ in range(s.repeats if attempt == 0 else 1):
                for i, text in zip(idx, _draw(model, tok, [prompts[i] for i in idx], s, limit)):
                    if text and len(found[i]) < s.repeats:
                        found[i].append(text)
    empty = [pairs[i][0] for i, got in enumerate(found) if not got]
    if empty:
        raise UserError(f"the model wrote only empty alternates for {len(empty)} forget prompts, e.g. "
                        f"{empty[0][:60]!r}; expected text before a stop string {list(s.stop)} (try another "
                        "--template, more --max_new_tokens or --tries)")
    return [{"question": q, "answer": a, "alternate": alt} for (q, a), got in zip(pairs, found) for alt in got]


def write(rows: list[dict[str, str]], out: Path, meta: dict) -> None:
    """The JSON-lines file (written whole, then renamed into place) and its .meta.json."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(out)
    out.with_name(out.name + ".meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def run(cfg, out: str, s: Sampling, say=print) -> Path:
    """Generate the alternates of cfg's forget set with cfg's model and write them to `out`."""
    import torch

    from unlearn import model as models

    check(s)
    pairs = forget_pairs(cfg)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = models.load_for_eval(cfg.model.name_or_path, torch.bfloat16 if device == "cuda" else torch.float32,
                                      device)
    rows = generate(model, tok, pairs, s)
    path = Path(out)
    write(rows, path, {"model": cfg.model.name_or_path, "forget": cfg.data.forget, "prompts": len(pairs),
                       "rows": len(rows), **asdict(s)})
    say(f"{len(rows)} alternates to {len(pairs)} forget prompts -> {path}")
    return path
