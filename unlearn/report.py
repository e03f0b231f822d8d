"""End-of-run report (rank 0): before/after table on the run's own forget and retain data."""

from __future__ import annotations

import json
from pathlib import Path

from unlearn import checkpoint, summary
from unlearn.config import Config
from unlearn.distributed import env_from_os
from unlearn.model import load_for_eval
from unlearn.sets import load_sets


def final_report(cfg: Config, run_dir: Path) -> dict | None:
    env = env_from_os()
    if not env.is_main:
        return None
    done = checkpoint.complete_checkpoints(run_dir)
    if not done:
        return None
    final = done[-1]
    before_model, tok = load_for_eval(cfg.model.name_or_path)
    sets = load_sets(cfg, tok, env)
    forget = sets.forget or sets.retain  # fine-tuning: how well the model has learnt the text
    before = summary.measure(before_model, tok, forget, sets.retain)
    after_model, _ = load_for_eval(str(final))
    after = summary.measure(after_model, tok, forget, sets.retain)
    print("\n" + summary.table(before, after) + "\n", flush=True)
    result = {"checkpoint": str(final), "before": before, "after": after}
    (run_dir / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
