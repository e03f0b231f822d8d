"""Benchmark the unlearning step: ours vs the paper's reference loop, side by side.

  python launch/bench.py                                 # CPU: tiny demo model
  python launch/bench.py --preset opt-125m --repeats 3   # CPU: OPT-125m's shape, random weights
  python launch/bench.py --preset opt-1.3b               # one GPU: baseline, ZeRO-2/3, LoRA, 8-bit
  python launch/bench.py --smoke                         # CI: every variant, one step, in-process

Prints the JSON report, then a table (tokens/s, s/step, peak memory, x baseline, MFU on GPUs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from unlearn.errors import guarded  # noqa: E402


def parse(argv: list[str] | None):
    from unlearn.bench import presets

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=presets.PRESETS)
    p.add_argument("--scale-down", type=int, default=1, help="divide width, heads and depth by this (CPU runs)")
    p.add_argument("--keep-depth", action="store_true", help="with --scale-down: the preset's layers kept")
    p.add_argument("--variants", default="", help=f"comma list or 'all' of: {', '.join(presets.VARIANTS)}")
    p.add_argument("--batch", type=int, default=2, help="samples per term per step (paper: 2)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per sample (baseline pads to this)")
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    p.add_argument("--repeats", type=int, default=1, help="rounds over all variants (median reported)")
    p.add_argument("--no-group-by-length", action="store_true", help="data.group_by_length=false")
    p.add_argument("--mismatch-pass-cost", type=int, default=256, help="data.mismatch_pass_cost (a huge value = "
                   "one pass over the random-mismatch batch, as the baseline)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per worker (0 = all cores)")
    p.add_argument("--forget", default="", help="harmful QA file (default: the demo's harmful.jsonl)")
    p.add_argument("--retain", default="", help="normal QA file (default: the demo's normal.jsonl)")
    p.add_argument("--work-dir", default=".cache/bench", help="demo data and random-weight models")
    p.add_argument("--in-process", action="store_true", help="all variants in this process (no memory isolation)")
    p.add_argument("--interleave", action="store_true", help="all variants in this process, taking turns step "
                   "by step; ratios per step (precise on a shared machine; peak memory is then cumulative)")
    p.add_argument("--smoke", action="store_true", help="CI: all variants, 1 step, no warm-up, in-process")
    p.add_argument("--checksums", action="store_true", help="GB/s of checkpoint checksums vs a save (--preset)")
    p.add_argument("--trace-steps", type=int, default=0, help="profile N steps after the timed ones: kernels, gaps")
    p.add_argument("--trace-dir", default="", help="profiler traces (default: WORK_DIR/traces/PRESET)")
    p.add_argument("--json", default="", help="also write the report here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)

    def job() -> None:
        from unlearn.bench import runner

        runner.main(args)

    guarded(job)


if __name__ == "__main__":
    main()
