"""`make tofu-mini`: the TOFU pipeline at CPU scale, on the demo's tiny OPT architecture.

    python -m unlearn.tofu_mini .cache/tofu-mini --tofu ../shared/data/tofu      # data + init model
    python -m unlearn.tofu_mini --table .cache/tofu-mini runs/tofu-mini-ga ...      # the README table

Writes into the folder:
  forget.json   forget01 (40 questions about 2 fictitious authors)
  retain.json   the first ROWS questions of retain99 (the retain subset)
  world.json    the first ROWS questions of real_authors_perturbed and of world_facts_perturbed with their
                true answers: a
                random tiny model knows nothing of the world, so stage 1 teaches it these answers in
                place of the pretraining a real model brings (without them model utility's real-author
                and world-fact numbers are 0 and so is their harmonic mean, whatever unlearning does)
  init/         the demo's tiny OPT (unlearn.demo.tiny_opt: 4 layers, hidden 128, same seed) with a
                byte-level BPE tokenizer trained on these TOFU texts and 512 positions (the demo's
                tokenizer, fit to the demo book, cuts a TOFU question + answer into ~190 tokens; this
                one into ~60, so 200 generated tokens fit)
The evaluation runs with `--limit 40` (ROWS), so every split it scores is one the tiny model was taught
(or, for forget01, the whole split).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROWS = 40
VOCAB = 2048
POSITIONS = 512


def _rows(path: Path) -> list[dict]:
    text = path.read_text()
    return json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines() if line]


def build(out_dir: str | Path, tofu_dir: str | Path, seed: int = 0) -> Path:
    from unlearn import demo

    out, tofu = Path(out_dir), Path(tofu_dir)
    out.mkdir(parents=True, exist_ok=True)
    forget = _rows(tofu / "forget01.json")
    retain = _rows(tofu / "retain99.json")[:ROWS]
    world = _rows(tofu / "real_authors_perturbed.json")[:ROWS] + _rows(tofu / "world_facts_perturbed.json")[:ROWS]
    qa = lambda rows: [{"question": r["question"], "answer": r["answer"]} for r in rows]  # noqa: E731
    for name, rows in (("forget", forget), ("retain", retain), ("world", world)):
        (out / f"{name}.json").write_text(json.dumps(qa(rows), indent=1) + "\n")
    texts = []  # everything the evaluation scores, so no answer is cut into bytes
    for r in forget + retain + world:
        texts += [r["question"], r["answer"], r.get("paraphrased_answer", ""), *r.get("perturbed_answer", [])]
    tok = demo.train_tokenizer([t for t in texts if t], out / "init", vocab_size=VOCAB)
    tok.model_max_length = POSITIONS
    tok.save_pretrained(out / "init")
    demo.tiny_opt(len(tok), seed, max_positions=POSITIONS).save_pretrained(out / "init")
    return out


TABLE_ROWS = (("forget_quality", "forget quality (KS p; higher = closer to the retain model)"),
        ("model_utility", "model utility (harmonic mean of 9)"),
        ("model_utility_8", "model utility (harmonic mean of 8)"),
        ("forget_truth_ratio", "forget truth ratio (closer_to_1_better)"),
        ("forget_Q_A_Prob", "forget answer probability"),
        ("forget_Q_A_ROUGE", "forget ROUGE-L recall"),
        ("extraction_strength", "forget extraction strength"))


def _summary(path: Path) -> dict:
    return json.loads(path.read_text())["suites"]["tofu"]["info"]["summary"] if path.is_file() else {}


def table(mini_dir: Path, runs: list[Path]) -> str:
    """Markdown: the fine-tuned model, each unlearning run's last checkpoint, the retain model."""
    def last_eval(run: Path) -> Path:
        return sorted((run / "checkpoints").glob("step-*/eval.json"))[-1]

    cols = [("fine-tuned", _summary(mini_dir / "full" / "eval.json"))]
    cols += [(run.name.rsplit("-", 1)[-1], _summary(last_eval(run))) for run in runs]
    cols.append(("retain model", _summary(mini_dir / "retain" / "eval.json")))
    lines = ["| metric | " + " | ".join(name for name, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for key, label in TABLE_ROWS:
        cells = [f"{s[key]:.3g}" if key in s else "-" for _, s in cols]
        if key.startswith("model_utility") and set(cells) == {"-"}:
            continue  # the 9-number row with TOFU's retain_perturbed, else the 8-number one
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", nargs="?", default=".cache/tofu-mini")
    parser.add_argument("--tofu", default="../shared/data/tofu", help="folder of the TOFU JSON files")
    parser.add_argument("--table", nargs="+", metavar="DIR", help="the tofu-mini folder, then unlearning runs: "
                        "print the before/after table")
    args = parser.parse_args(argv)
    if args.table:
        print(table(Path(args.table[0]), [Path(r) for r in args.table[1:]]))
    else:
        print(f"tofu-mini assets written to {build(args.out_dir, args.tofu)}")


if __name__ == "__main__":
    main()
