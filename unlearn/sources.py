"""Data sources as rows (through `datasets`) and the formats that turn rows into text or QA pairs.

A source is a local .txt/.jsonl/.json/.csv/.parquet file or a hub dataset id (with an optional
configuration name and a pinned revision). Formats:
  text        documents, later chunked to the model length
  sentences   a book cut into consecutive sentence pairs (prompt = sentence i, answer = i + 1)
  qa          question/answer or prompt/response columns
  pku         PKU-SafeRLHF columns: one pair per unsafe response (either slot, row by row)
  truthfulqa  question + best answer, on one part of a seeded 70/10/20 partition
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any, Sequence

from unlearn import textfiles
from unlearn.errors import UserError
from unlearn.rows import checked, filled, missing

LOCAL_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
PKU_COLUMNS = ("prompt", "response_0", "response_1", "is_response_0_safe", "is_response_1_safe")
FORMATS = ("auto", "text", "sentences", "qa", "pku", "truthfulqa")
PARTS = ("train", "val", "test")
# TruthfulQA column names: the CSV's (upstream repo) and the hub dataset's (generation config).
TQA_CSV = {"question": "Question", "best": "Best Answer", "correct": "Correct Answers",
           "incorrect": "Incorrect Answers"}
TQA_HUB = {"question": "question", "best": "best_answer", "correct": "correct_answers",
           "incorrect": "incorrect_answers"}
Row = dict[str, Any]


def load_rows(source: str, split: str = "train", revision: str = "", subset: str = "") -> list[Row]:
    """Rows of a local file (builder by extension) or a hub dataset, as plain dicts in file order."""
    import datasets  # heavy: only when data is loaded

    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in LOCAL_BUILDERS:
        if not path.is_file():
            raise UserError(f"data file '{source}' not found; expected an existing "
                            f"{'/'.join(LOCAL_BUILDERS)} file or a hub dataset id")
        builder = LOCAL_BUILDERS[suffix]
        kwargs: dict[str, Any] = {"sample_by": "document"} if builder == "text" else {}
        if builder == "csv":
            kwargs["encoding"] = "utf-8-sig"  # TruthfulQA.csv starts with a byte-order mark
        if builder != "parquet":  # a byte that is not UTF-8: named here, not as a builder's traceback
            textfiles.check_utf8(path, "data file")
        try:
            rows = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs).to_list()
        except Exception as exc:  # the builders raise many types (DatasetGenerationError, ArrowInvalid, ...)
            raise UserError(f"data file '{source}' could not be read as {suffix[1:]}: {_reason(path, exc)}; "
                            f"expected a valid {suffix[1:]} file") from None
        return _text_cells(rows, source) if builder == "parquet" else rows
    if path.exists():
        raise UserError(f"data path '{source}' has an unsupported type; expected one of "
                        f"{', '.join(LOCAL_BUILDERS)} or a hub dataset id")
    try:
        ds = datasets.load_dataset(source, subset or None, split=split, revision=revision or None)
    except Exception as exc:  # the hub client raises many types; the message is what matters
        raise UserError(f"dataset '{source}' (subset '{subset or 'default'}', split '{split}') could not "
                        f"be loaded: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc!r}; "
                        "expected a local file or a hub id reachable (or cached) here") from None
    return ds.to_list()


def _reason(path: Path, exc: Exception) -> str:
    """Why a local file did not load: the first JSON line that does not parse, else the builder's words."""
    if path.suffix.lower() in (".jsonl", ".json"):
        text = textfiles.read_text(path)
        lines = text.split("\n") if path.suffix.lower() == ".jsonl" else [text]
        for n, line in enumerate(lines, 1):
            try:
                if line.strip():
                    json.loads(line)
            except json.JSONDecodeError as err:
                return f"line {n if len(lines) > 1 else err.lineno}: {err.msg}"
    cause = exc.__cause__ or exc
    return " ".join(str(cause).split())[:200].rstrip(".") or type(cause).__name__


def _text_cells(rows: list[Row], source: str) -> list[Row]:
    """Parquet rows with byte-string cells decoded as UTF-8 (a cell that is not: named, with its offset)."""
    for i, row in enumerate(rows):
        for key, value in row.items():
            if isinstance(value, bytes):
                try:
                    row[key] = value.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise UserError(f"data file '{source}' row {i + 1} column '{key}' is not UTF-8 text: byte "
                                    f"0x{value[exc.start]:02x} at offset {exc.start} of the cell does not decode; "
                                    "expected UTF-8 strings") from None
    return rows


def detect_format(rows: list[Row], source: str) -> str:
    if not rows:
        raise UserError(f"data '{source}' is empty; expected at least one row")
    cols = set(rows[0])
    if cols == {"text"}:
        return "text"
    if set(PKU_COLUMNS) <= cols:
        return "pku"
    if {TQA_CSV["question"], TQA_CSV["best"]} <= cols or {TQA_HUB["question"], TQA_HUB["best"]} <= cols:
        return "truthfulqa"
    if {"question", "answer"} <= cols or {"prompt", "response"} <= cols:
        return "qa"
    if "text" in cols:
        return "text"
    raise UserError(f"data '{source}' has columns {sorted(cols)}; expected 'text', question/answer, "
                    f"prompt/response, TruthfulQA columns or PKU-SafeRLHF columns {list(PKU_COLUMNS)}")


def require_columns(rows: list[Row], columns: Sequence[str], source: str, fmt: str) -> None:
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise UserError(f"data '{source}' lacks columns {missing} needed by format '{fmt}'; "
                        f"it has {sorted(rows[0])}")


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


# ----------------------------------------------------------------------------- formats

def _pku_unusable(row: Row) -> str | None:
    """A PKU row's first field that is missing: prompt, a safety flag, or the response of an unsafe slot."""
    for key in ("prompt", "is_response_0_safe", "is_response_1_safe"):
        if not filled(row.get(key)):
            return missing(key)
    return next((missing(f"response_{slot}") for slot in (0, 1)
                 if not _truthy(row[f"is_response_{slot}_safe"]) and not filled(row[f"response_{slot}"])), None)


def pku_pairs(rows: list[Row], source: str, skip: bool = False) -> list[tuple[str, str]]:
    """(prompt, unsafe response) for every unsafe response; the unsafe slot varies row by row (a row with
    two safe responses gives none)."""
    require_columns(rows, PKU_COLUMNS, source, "pku")
    rows = checked(rows, _pku_unusable, source, "a prompt, both is_response_*_safe flags and the response of "
                   "each unsafe slot (PKU-SafeRLHF format)", skip)
    pairs = []
    for row in rows:  # a plain loop: one row may give 0, 1 or 2 samples
        for slot in (0, 1):
            if not _truthy(row[f"is_response_{slot}_safe"]):
                pairs.append((row["prompt"], row[f"response_{slot}"]))
    if not pairs:
        raise UserError(f"harmful data '{source}' has no unsafe responses (every is_response_*_safe is "
                        "true); expected some unsafe answers to forget")
    return pairs


def partition(n: int, fractions: Sequence[float], seed: int) -> dict[str, list[int]]:
    """Seeded split of range(n) into train/val/test index lists (sizes floor(f * n), test = rest)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise UserError(f"data.truthfulqa_fractions={list(fractions)}; expected three non-negative "
                        "fractions (train, val, test) that sum to 1")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_train, n_val = int(fractions[0] * n), int(fractions[1] * n)
    return {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}


def truthfulqa_rows(rows: list[Row], part: str, fractions: Sequence[float], seed: int) -> list[Row]:
    """The rows of one part of the seeded partition (by question), in file order; `all` = every row."""
    if part == "all":
        return rows
    if part not in PARTS:
        raise UserError(f"data.truthfulqa_part '{part}' is unknown; expected train, val, test or all")
    keep = sorted(partition(len(rows), fractions, seed)[part])
    return [rows[i] for i in keep]


def _tqa_rows(rows: list[Row], source: str, skip: bool, full: list[Row] | None = None) -> tuple[dict[str, str], list[Row]]:
    """(column names, the rows that hold a question and a best answer) of TruthfulQA rows (a part of `full`)."""
    names = TQA_CSV if TQA_CSV["question"] in rows[0] else TQA_HUB
    q, best = names["question"], names["best"]
    require_columns(rows, (q, best), source, "truthfulqa")
    return names, checked(rows, (q, best), source, f"'{q}' and '{best}' (format 'truthfulqa')", skip, full=full)


def truthfulqa_part(rows: list[Row], part: str, fractions: Sequence[float], seed: int, source: str,
                    skip: bool = False) -> list[Row]:
    """`truthfulqa_rows`, each holding a question and a best answer (a bad row named by its line in the file)."""
    return _tqa_rows(truthfulqa_rows(rows, part, fractions, seed), source, skip, full=rows)[1]


def qa_pairs(rows: list[Row], fmt: str, source: str, skip: bool = False) -> list[tuple[str, str]]:
    """(prompt, answer) pairs of a QA-like table; a row without either is an error (`skip`: left out)."""
    if fmt == "pku":
        return pku_pairs(rows, source, skip)
    if fmt == "truthfulqa":
        names, rows = _tqa_rows(rows, source, skip)
        return [(r[names["question"]], r[names["best"]]) for r in rows]
    if fmt != "qa":
        raise UserError(f"format '{fmt}' is not a QA format; expected pku, truthfulqa or qa")
    q, a = ("question", "answer") if "question" in rows[0] else ("prompt", "response")
    require_columns(rows, (q, a), source, fmt)
    return [(r[q], r[a]) for r in checked(rows, (q, a), source, f"'{q}' and '{a}' (format 'qa')", skip)]


def answer_pool(rows: list[Row], fmt: str, source: str, skip: bool = False) -> list[str]:
    """Normal answers to draw random ones from; TruthfulQA: best + correct + incorrect (';'-split)."""
    if fmt != "truthfulqa":
        return [a for _, a in qa_pairs(rows, fmt, source, skip)]
    names, rows = _tqa_rows(rows, source, skip)
    pool: list[str] = []
    for row in rows:
        for key in ("best", "correct", "incorrect"):
            value = row.get(names[key])
            items = value if isinstance(value, list) else str(value or "").split(";")  # hub: lists
            pool += [str(a).strip() for a in items if filled(a)]
    return pool


# A sentence: up to . ! ? (with any closing quotes/brackets) before whitespace, or the text's end.
_SENTENCE = re.compile(r"\S.*?(?:[.!?][\"'\u201d\u2019)\]]*(?=\s)|$)")


def sentences(text: str) -> list[str]:
    """Sentences of a text with line wrapping undone (abbreviations like 'Mr.' also end one)."""
    flat = re.sub(r"\s+", " ", text).strip()
    return [m.group(0).strip() for m in _SENTENCE.finditer(flat) if m.group(0).strip()]


def sentence_pairs(texts: list[str]) -> list[tuple[str, str]]:
    """(sentence i, sentence i+1) within each document: every sentence but a first is a target once."""
    pairs = []
    for text in texts:
        sents = sentences(text)
        pairs += [(a, b) for a, b in zip(sents, sents[1:])]
    return pairs


def texts_of(rows: list[Row], source: str, fmt: str, skip: bool = False) -> list[str]:
    """The documents of text rows; a row without `text` is an error (`skip`: left out), an empty one
    holds nothing to train on and is passed over (hub corpora hold empty lines)."""
    require_columns(rows, ("text",), source, fmt)
    rows = checked(rows, lambda row: missing("text") if row.get("text") is None else None, source,
                   f"'text' (format '{fmt}')", skip)
    return [str(r["text"]) for r in rows if filled(r["text"])]
