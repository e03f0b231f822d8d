"""Train a harm judge: a BERT-style multi-label classifier on a labelled CSV.

    python launch/train_judge.py --data labelled.csv --base bert-base-uncased --out judges/toxic \
        [--text_column text] [--labels toxic,threat,insult] [--epochs 3] [--heldout_fraction 0.1]

The CSV holds a text column and one 0/1 column per label (default: every 0/1 column). The output
folder is what `launch/evaluate.py --judge judges/toxic` loads: harmful = any label > threshold.
judge.json beside it holds the accuracy on the held-out rows (never trained on).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from unlearn.errors import guarded  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="labelled CSV (text column + 0/1 label columns)")
    p.add_argument("--base", required=True, help="sequence-classification base: model folder or cached hub id")
    p.add_argument("--out", required=True, help="output folder (Hugging Face model + judge.json)")
    p.add_argument("--text_column", default="text")
    p.add_argument("--labels", default="", help="comma list of label columns (default: every 0/1 column)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_length", type=int, default=256, help="tokens per text (longer ones are cut)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heldout_fraction", type=float, default=0.1, help="rows held out for accuracy (seeded)")
    p.add_argument("--device", default="", help="cpu | cuda | cuda:N (default: cuda when available)")
    args = p.parse_args(argv)

    def job() -> None:
        from unlearn.eval.judge_training import summary_line, train_judge

        labels = [c.strip() for c in args.labels.split(",") if c.strip()]
        info = train_judge(args.data, args.base, args.out, args.text_column, labels, args.epochs, args.lr,
                           args.batch_size, args.max_length, args.seed, args.heldout_fraction, args.device)
        print(summary_line(info, args.out))

    guarded(job)


if __name__ == "__main__":
    main()
