"""Evaluation data named on the command line: a local file, or a hub dataset id with its configuration.

    data.jsonl | data.csv | data.parquet        a local file (builder by extension)
    cais/wmdp:wmdp-bio                           hub id : configuration (the suite picks the split)
"""

from __future__ import annotations

from pathlib import Path

from unlearn import sources


def split_spec(text: str) -> tuple[str, str]:
    """(source, configuration) of `ID:CONFIG`; a local path (or anything without ':') has no configuration."""
    if Path(text).exists() or ":" not in text:
        return text, ""
    source, _, config = text.partition(":")
    return source, config


def load(text: str, hub_split: str) -> list[sources.Row]:
    """Rows of a local file, or of split `hub_split` of a hub dataset `ID[:CONFIG]` (loaded through
    `datasets` on a user's machine, from its cache offline)."""
    source, config = split_spec(text)
    if Path(source).suffix.lower() in sources.LOCAL_BUILDERS or Path(source).exists():
        return sources.load_rows(source)
    return sources.load_rows(source, hub_split, "", config)
