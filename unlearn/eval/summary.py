"""Summary of a run's evaluations across checkpoints: CSV, PNG (forget vs utility by step), table."""

from __future__ import annotations

import csv
import math
from pathlib import Path

CSV_FILE, PNG_FILE = "eval_summary.csv", "eval_summary.png"

# (scalar key, short label, direction) in plotting/printing order; forget metrics first
HEADLINE = [
    ("eval/harmful/forget_harmful_rate", "harmful forget", "lower = forgotten (the forget set's prompts)"),
    ("eval/harmful/harmful_rate", "harmful", "lower = forgotten (--harmful_prompts)"),
    ("eval/harmful/effectiveness", "E", "higher = forgotten"),
    ("eval/copyright/verbatim_rouge_l", "verbatim R-L", "lower = forgotten"),
    ("eval/copyright/knowledge_rouge_l", "knowledge R-L", "lower = forgotten"),
    ("eval/privacy/privleak", "PrivLeak %", "0 = like a retrained model"),
    ("eval/muse/knowmem_forget", "KnowMem f", "lower = forgotten"),
    ("eval/muse/verbmem_forget", "VerbMem f", "lower = forgotten"),
    ("eval/mc/forget_acc", "MC forget", "chance = forgotten"),
    ("eval/utility/retain_ppl", "retain PPL", "lower = kept"),
    ("eval/utility/truthfulqa_mc1", "TQA MC1", "higher = kept"),
    ("eval/muse/knowmem_retain", "KnowMem r", "higher = kept"),
    ("eval/mc/retain_acc", "MC retain", "higher = kept"),
    ("eval/utility/similarity_to_reference_rouge_l", "sim. R-L", "higher = kept"),
    ("eval/utility/degeneration_rate", "degenerate", "lower = kept"),
]
FORGET_PREFIXES = ("eval/harmful/", "eval/copyright/", "eval/privacy/", "eval/muse/knowmem_forget",
                   "eval/muse/verbmem_forget", "eval/mc/forget_")


ORACLE = "oracle"
"""The `step` of the oracle's row (a model that never saw the forget data: the goal, no point of the run)."""


def rows(results: list[dict], oracle: dict | None = None) -> tuple[list[str], list[dict]]:
    """(columns, one row per checkpoint sorted by step, then the oracle's): step, checkpoint, every
    eval scalar."""
    keys = sorted({k for r in [*results, *([oracle] if oracle else [])] for k in r.get("scalars", {})})
    table = [{"step": r["step"], "checkpoint": r["checkpoint"], **r.get("scalars", {})}
             for r in sorted(results, key=lambda r: r["step"])]
    if oracle:
        table.append({"step": ORACLE, "checkpoint": oracle["checkpoint"], **oracle.get("scalars", {})})
    return ["step", "checkpoint", *keys], table


def write(run_dir: Path, results: list[dict], oracle: dict | None = None) -> str:
    """Write RUN_DIR/eval_summary.csv and .png; print and return the terminal table. `oracle`: the
    evaluation of a model that never saw the forget data, its own last row (dotted lines in the plot)."""
    columns, table = rows(results, oracle)
    with open(run_dir / CSV_FILE, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(table)
    plot(run_dir / PNG_FILE, columns, table)
    text = format_table(columns, table)
    print(text, flush=True)
    return text


def format_table(columns: list[str], table: list[dict]) -> str:
    shown = [(k, label, note) for k, label, note in HEADLINE if k in columns]
    head = f"{'step':>8}" + "".join(f"{label:>15}" for _, label, _ in shown)
    lines = [head, "-" * len(head)]
    for row in table:
        cells = "".join(f"{row[k]:>15.4g}" if isinstance(row.get(k), float) else f"{'':>15}"
                        for k, _, _ in shown)
        lines.append(f"{row['step']:>8}" + cells)
    lines.append("; ".join(f"{label}: {note}" for _, label, note in shown))
    if table and table[-1]["step"] == ORACLE:
        lines.append("oracle: a model that never saw the forget data (run.oracle): what unlearning aims at")
    return "\n".join(lines)


def plot(path: Path, columns: list[str], table: list[dict]) -> None:
    """Two panels by step: forget metrics (left) and utility metrics (right)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: eval jobs run without a display
    import matplotlib.pyplot as plt

    metrics = [c for c in columns if c.startswith("eval/")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    oracle = table[-1] if table and table[-1]["step"] == ORACLE else None
    table = table[:-1] if oracle else table
    steps = [r["step"] for r in table]
    for ax, forget in zip(axes, (True, False)):
        for key in metrics:
            if key.startswith(FORGET_PREFIXES) != forget or key.endswith("retain_ppl"):
                continue
            ys = [r.get(key, math.nan) for r in table]
            line, = ax.plot(steps, ys, marker="o", label=key.removeprefix("eval/"))
            if oracle and isinstance(oracle.get(key), float):
                ax.axhline(oracle[key], color=line.get_color(), linestyle=":", linewidth=1)
        ax.set_xlabel("step")
        ax.set_title(("forget metrics" if forget else "utility metrics") + (" (dotted: oracle)" if oracle else ""))
        if ax.lines:
            ax.legend(fontsize=7)
    if "eval/utility/retain_ppl" in metrics:  # perplexity has its own scale: right axis
        twin = axes[1].twinx()
        twin.plot(steps, [r.get("eval/utility/retain_ppl", math.nan) for r in table], "k--", marker="s")
        if oracle and isinstance(oracle.get("eval/utility/retain_ppl"), float):
            twin.axhline(oracle["eval/utility/retain_ppl"], color="k", linestyle=":", linewidth=1)
        twin.set_ylabel("retain perplexity (dashed)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
