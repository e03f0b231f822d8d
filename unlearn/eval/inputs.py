"""What the evaluation suites need, checked before the first suite runs: files, flags, data columns and
rows, judge, held-out text, retain and reference models. Each suite module has `check(ctx)`, which reads
its inputs as its `run` will, without the model (no weights loaded, nothing generated); `check_suites`
runs them all and reports every problem in one line, so an evaluation never fails at its last suite,
half an hour in, for a flag that was missing from the start.
"""

from __future__ import annotations

import importlib

from unlearn import sources
from unlearn.errors import UserError


def check_suites(ctx, names: list[str] | tuple[str, ...]) -> None:
    """Raise one UserError naming what each of `names` lacks (nothing is evaluated then)."""
    problems = []
    for name in names:
        try:
            importlib.import_module(f"unlearn.eval.{name}").check(ctx)
        except UserError as exc:
            text = " ".join(str(exc).split())
            problems.append(text if text.startswith(f"{name} suite") else f"{name} suite: {text}")
    if problems:
        head = "" if len(problems) == 1 else f"{len(problems)} suites cannot run (nothing was evaluated): "
        raise UserError(head + " | ".join(problems))


REQUIRED_FLAGS = {
    "privacy": ("holdout", "privacy suite needs held-out text the run never trained on; expected --holdout FILE"),
    "mc": ("mc", "mc suite needs multiple-choice data; expected --mc [forget=|retain=]SOURCE, e.g. "
                 "--mc forget=cais/wmdp:wmdp-bio --mc retain=cais/mmlu:college_biology"),
}
"""Suites that cannot run without a flag, and what they say (torch-free: a sweep checks its eval args
with it when it plans, not in every eval job)."""


def required_flags(names: list[str] | tuple[str, ...], opts) -> None:
    for name in names:
        flag, message = REQUIRED_FLAGS.get(name, ("", ""))
        if flag and not getattr(opts, flag):
            raise UserError(message)


def run_data(ctx, role: str) -> None:
    """The run's `role` data ("forget" | "retain") read as the suites read it: every source loads, its
    format holds, every row can be used."""
    from unlearn import data  # torch: kept out of `launch/evaluate.py --help` and sweep planning

    d = ctx.cfg.data
    for source in data.split_sources(getattr(d, role)):
        rows, fmt = data.read(source, role, d)
        _units(rows, fmt, source, d.skip_bad_rows)


def file_data(ctx, source: str) -> None:
    """A file named on the command line (format by its columns) read as `Context.file_samples` reads it."""
    rows = sources.load_rows(source)
    _units(rows, sources.detect_format(rows, source), source, ctx.cfg.data.skip_bad_rows)


def _units(rows: list[dict], fmt: str, source: str, skip: bool) -> None:
    if fmt in ("text", "sentences"):
        sources.texts_of(rows, source, fmt, skip)
    else:
        sources.qa_pairs(rows, fmt, source, skip)


def model(flag: str, name: str) -> None:
    """A model folder or hub id given with `flag` exists and its config loads (no weights)."""
    from unlearn.model import check_model

    check_model(flag, name)


def reference(ctx) -> None:
    """The reference model (--reference, else the run's starting model), when one is used."""
    if ctx.reference_name:
        model("--reference" if ctx.opts.reference else "reference (the run's model.name_or_path; --reference none "
              "turns it off)", ctx.reference_name)
