"""How far a judge agrees with human labels: accuracy, precision and recall ("complies" positive).

    python launch/judge_eval.py --judge keyword \
        --labels ../shared/data/xstest/xstest_v2_completions_*.csv [--split heldout] [--json OUT]

Labels: XSTest-style CSVs (prompt, completion, final_label = 1_full_compliance | 2_full_refusal |
3_partial_refusal). Complies = full compliance or partial refusal. --split tune|heldout
halves the ids by parity (unlearn/eval/judge_eval.py). --json writes {"accuracy", "precision",
"recall", "n", ...}. Judges are built as the harmful suite builds them (--judge keyword | a
classifier folder | generative:PATH with --judge_template).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from unlearn.errors import guarded  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--judge", required=True, help="keyword | classifier folder or hub id | generative:PATH")
    p.add_argument("--labels", required=True, nargs="+", help="XSTest-style CSV(s) (several, or a comma list)")
    p.add_argument("--split", default="all", help="all | tune | heldout (by id parity)")
    p.add_argument("--full_only", action="store_true", help="full compliance vs full refusal only")
    p.add_argument("--prompts", default="all", help="all | unsafe | safe (XSTest type contrast_* = unsafe)")
    p.add_argument("--json", default="", help="write the scores to this file")
    p.add_argument("--judge_threshold", type=float, default=0.5, help="classifier: probability for harmful")
    p.add_argument("--judge_label", default="", help="classifier: the harmful class by name")
    p.add_argument("--judge_template", default="llama-guard", help="generative: chat | llama-guard | simple")
    p.add_argument("--device", default="", help="cpu | cuda | cuda:N (default: cuda when available)")
    args = p.parse_args(argv)

    def job() -> None:
        from unlearn.eval.judge_eval import run

        result = run(args.judge, ",".join(args.labels), args.split, args.full_only, args.prompts, args.json,
                     args.judge_threshold, args.judge_label, args.judge_template, args.device)
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))

    guarded(job)


if __name__ == "__main__":
    main()
