"""User files read as UTF-8 text (data, configs, answer lists, saved evaluations).

A file that is not UTF-8 is one UserError naming the file, the first byte that does not decode, its
offset from the start of the file and its line, instead of a decoder's (or a dataset builder's) traceback.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from unlearn.errors import UserError

CHUNK = 1 << 24  # bytes decoded at a time: a multi-GB corpus is checked in bounded memory


def _not_utf8(path: Path, what: str, offset: int, byte: int) -> UserError:
    with open(path, "rb") as fh:
        line = fh.read(offset).count(b"\n") + 1
    return UserError(f"{what} '{path}' is not UTF-8 text: byte 0x{byte:02x} at offset {offset} (line {line}) does "
                     "not decode; expected a UTF-8 file (convert it, e.g. iconv -f LATIN1 -t UTF-8)")


def check_utf8(path: str | Path, what: str = "data file") -> None:
    """Raise UserError unless the whole file decodes as UTF-8 (a byte-order mark is allowed)."""
    path = Path(path)
    decoder = codecs.getincrementaldecoder("utf-8")()
    done = 0  # bytes of the file fed to the decoder so far
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(CHUNK)
            pending = len(decoder.getstate()[0])  # bytes of an unfinished character kept from the last chunk
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                # exc.object = the unfinished bytes kept from the last chunk + this chunk
                raise _not_utf8(path, what, done - pending + exc.start, exc.object[exc.start]) from None
            done += len(chunk)
            if not chunk:
                return


def read_text(path: str | Path, what: str = "file") -> str:
    """The file's text (UTF-8, a leading byte-order mark dropped), or a UserError naming the offending byte."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bom = 3 if raw.startswith(codecs.BOM_UTF8) else 0
        raise _not_utf8(path, what, exc.start + bom, raw[exc.start + bom]) from None


def read_json(path: str | Path, what: str = "file"):
    """The JSON value in a UTF-8 file, or a UserError naming the file and the line that does not parse."""
    import json

    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} '{path}' is not valid JSON (line {exc.lineno}: {exc.msg}); expected a JSON "
                        "file") from None
