"""Every row of a table checked before it is used: a row that cannot be used (a field a format needs is
null, absent or blank) is a UserError naming the file, the row's line and the field, never dropped
silently. With `skip` (data.skip_bad_rows=true, evaluate.py --skip_bad_rows) such rows are left out
and a line counts them.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable, Sequence

from unlearn import textfiles
from unlearn.errors import UserError

Row = dict[str, Any]
SKIP_HINT = "or skip such rows with data.skip_bad_rows=true (evaluate.py: --skip_bad_rows)"


def filled(value: Any) -> bool:
    return value is not None and bool(str(value).strip())


def place(source: str, index: int) -> str:
    """Where row `index` (from 0) of `source` is: `line N` of a JSONL or CSV file (blank lines skipped,
    as the loader skips them; a CSV cell may span lines), else `row N` (JSON lists, parquet, the hub)."""
    path = Path(source)
    suffix = path.suffix.lower()
    if path.is_file() and suffix == ".jsonl":
        lines = [n for n, line in enumerate(textfiles.read_text(path).split("\n"), 1) if line.strip()]
        if index < len(lines):
            return f"line {lines[index]}"
    if path.is_file() and suffix == ".csv":
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            next(reader, None)  # the header
            start, n = reader.line_num + 1, -1
            for record in reader:
                n += bool(record)  # a blank line is no record
                if record and n == index:
                    return f"line {start}"
                start = reader.line_num + 1
    return f"row {index + 1}"


def missing(field: str) -> str:
    """The words for a row without `field`, as `checked` reports them."""
    return f"no '{field}' (null or blank)"


def checked(rows: list[Row], needs: Sequence[str] | Callable[[Row], str | None], source: str, expected: str,
            skip: bool = False, hint: str = SKIP_HINT, full: list[Row] | None = None) -> list[Row]:
    """`rows` that can be used. `needs`: the fields every row must fill, or a function giving what is wrong
    with a row (e.g. `missing(field)`; None: usable). `expected` says what a usable row holds, `hint` how to
    skip such rows instead ("" where there is no way); `full`: the file's rows when `rows` are a part of
    them (TruthfulQA's seeded parts), so that a row's line is found in the file."""
    problem = needs if callable(needs) else \
        (lambda row: next((missing(f) for f in needs if not filled(row.get(f))), None))
    bad = {i: why for i, row in enumerate(rows) if (why := problem(row)) is not None}
    if not bad:
        return rows
    first, why = next(iter(bad.items()))
    if full is not None:
        first = next(i for i, row in enumerate(full) if row is rows[first])
    if not skip:
        raise UserError(f"data '{source}' {place(source, first)} has {why}; expected {expected} in every row"
                        + (f", {hint}" if hint else ""))
    from unlearn.distributed import env_from_os  # every rank reads the data: one line, from rank 0

    if env_from_os().is_main:
        print(f"data '{source}': skipped {len(bad)} of {len(rows)} rows that cannot be used (the first: "
              f"{place(source, first)}, {why}; data.skip_bad_rows)", flush=True)
    return [row for i, row in enumerate(rows) if i not in bad]
