"""A checkpoint's manifest: each file's size and checksum, written at save before the COMPLETE marker
and checked by every reader (resume, evaluation, model loading, `--best`), so bytes damaged on disk
after the save are refused with the file's name instead of being trained on or evaluated.

    manifest.json   {"algorithm": "xxh3_128", "files": {"model.safetensors": {"size": N, "xxh3_128": HEX}, ...}}

xxh3_128 (the `xxhash` package, which `datasets` already needs): ~20 GB/s per core in memory, 20x
sha256 on the same CPU (`python launch/bench.py --checksums` measures both, and a save beside them).
It detects damage (flipped, lost or truncated bytes), not deliberate forgery. Files added after the
save (eval.json, eval.error) are not listed and not checked.

Checkpoints saved before manifests existed carry none: they are read as before, with a one-line
notice on stderr that their files are not verified.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from unlearn.errors import UserError
from unlearn.runs import COMPLETE

MANIFEST = "manifest.json"
ALGORITHM = "xxh3_128"
ENGINE_DIR = "engine"
"""The DeepSpeed state folder: needed to resume, not to evaluate (model-only checks skip it)."""
_UNLISTED = {MANIFEST, COMPLETE}
_CHUNK = 16 << 20  # bytes read per call


class Damaged(UserError):
    """A checkpoint file does not match its manifest (the message names the file)."""


def digest(path: Path) -> str:
    """xxh3_128 of a file's bytes, hex."""
    import xxhash  # C extension, installed with datasets

    h = xxhash.xxh3_128()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def write(folder: Path) -> int:
    """List every file under `folder` with its size and checksum in folder/manifest.json; returns
    the bytes listed."""
    folder = Path(folder)
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel not in _UNLISTED:
            files[rel] = {"size": path.stat().st_size, ALGORITHM: digest(path)}
    (folder / MANIFEST).write_text(json.dumps({"algorithm": ALGORITHM, "files": files}, indent=1) + "\n")
    return sum(f["size"] for f in files.values())


def has_manifest(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def damage(folder: Path, engine: bool = True) -> str:
    """Why `folder` does not match its manifest, naming the file ("" = it matches); `engine=False`
    leaves out the engine state (what evaluation does not read). The folder must have a manifest."""
    folder = Path(folder)
    try:
        saved = json.loads((folder / MANIFEST).read_text())
        algorithm, files = saved["algorithm"], saved["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{folder / MANIFEST} is unreadable ({type(exc).__name__})"
    if algorithm != ALGORITHM:
        return f"{folder / MANIFEST} lists {algorithm} checksums; this version checks {ALGORITHM}"
    for rel, want in files.items():
        if not engine and rel.split("/", 1)[0] == ENGINE_DIR:
            continue
        path = folder / rel
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != want["size"]:
            return f"{path} has {size} bytes, {want['size']} when saved (truncated or overwritten)"
        if digest(path) != want[ALGORITHM]:
            return f"{path} does not match its {ALGORITHM} checksum from the save (damaged bytes)"
    return ""


_verified: set[tuple] = set()
"""Folders (with their files' sizes and modification times) verified in this process: the model and
its reference, or a checkpoint and its evaluation's model load, are checked once."""


def verify(folder: Path, engine: bool = True) -> None:
    """Raise Damaged when `folder`'s files differ from its manifest; a complete checkpoint saved
    before manifests existed passes with a notice; a folder that is no checkpoint passes silently."""
    folder = Path(folder)
    if not has_manifest(folder):
        if (folder / COMPLETE).is_file():
            notice(folder)
        return
    try:
        key = (str(folder.resolve()), engine, tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns)
                                                    for p in sorted(folder.rglob("*")) if p.is_file()))
    except FileNotFoundError:  # an evaluation's temporary file renamed meanwhile: just check
        key = None
    if key in _verified:
        return
    why = damage(folder, engine)
    if why:
        raise Damaged(f"checkpoint {why}; expected the files as saved (use another checkpoint, "
                      "or re-create this one)")
    if key is not None:
        _verified.add(key)


_noticed: set[str] = set()


def notice(folder: Path) -> None:
    """Once per folder: this checkpoint predates manifests, so its files are read unverified."""
    if str(folder) not in _noticed:
        _noticed.add(str(folder))
        print(f"note: {folder} has no {MANIFEST} (saved before checkpoints carried checksums): its files "
              "are not verified", file=sys.stderr, flush=True)
