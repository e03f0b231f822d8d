"""The keys of a DeepSpeed JSON (and its `ds.*` overrides) checked against what DeepSpeed itself reads.

DeepSpeed ignores a top-level key it never looks up (`zero_optimisation` runs ZeRO's default, silently)
and most sections without a pydantic model ignore unknown keys too. The valid keys are not listed here;
they come from the installed DeepSpeed:
- top level: the keys `DeepSpeedConfig` looks up while it parses a config (recorded on a dict that
  notes every lookup), plus those `deepspeed.initialize` reads from the config itself (its source);
  keys DeepSpeed has removed (its `_REMOVED_TOP_LEVEL_CONFIG_KEYS`) are refused with DeepSpeed's reason;
- a section parsed by a pydantic model (zero_optimization, bf16, fp16, the monitors, ...): the model's
  fields and their aliases, through the model's own validation (`extra="forbid"`), whose error is
  turned into one line with the nearest field;
- any other section: the keys DeepSpeed looked up in it while parsing this very config.
"""

from __future__ import annotations

import ast
import collections.abc
import difflib
import functools
import inspect
import logging
from typing import Any

from unlearn.errors import UserError


class _Recording(dict):
    """A dict that notes the keys looked up in it, and whether it was read whole (iterated, unpacked)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.looked_up: set[str] = set()
        self.whole = False

    def __getitem__(self, key):
        self.looked_up.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.looked_up.add(key)
        return super().get(key, default)

    def __contains__(self, key):
        self.looked_up.add(key)
        return super().__contains__(key)

    def keys(self):
        return _Keys(self)

    def __iter__(self):
        self.whole = True
        return super().__iter__()

    def items(self):
        self.whole = True
        return super().items()

    def values(self):
        self.whole = True
        return super().values()

    def __copy__(self):  # a copy is read as the original (DeepSpeedConfig parses a copy of its dict)
        self.whole = True
        twin = _Recording(dict(super().items()))
        twin.looked_up = self.looked_up
        return twin

    copy = __copy__


class _Keys(collections.abc.KeysView):
    """`key in d.keys()` is a lookup; iterating the keys reads the dict whole."""

    def __iter__(self):
        self._mapping.whole = True
        return dict.__iter__(self._mapping)


def _wrap(tree: Any) -> Any:
    if isinstance(tree, dict):
        return _Recording({k: _wrap(v) for k, v in tree.items()})
    return tree


BATCH = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1}
"""What our engine adds to the JSON (from the run config) so that DeepSpeed's checks pass."""


def _parse(config: dict) -> None:
    """DeepSpeedConfig on `config`, quietly (its logger's info lines are not the user's business here)."""
    # heavy: imported when a DeepSpeed JSON is checked (training imports it next anyway)
    from deepspeed.runtime.config import DeepSpeedConfig
    from deepspeed.utils import logger

    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        DeepSpeedConfig(config)
    finally:
        logger.setLevel(level)


@functools.lru_cache(maxsize=1)
def top_level_keys() -> frozenset[str]:
    """Every top-level key the installed DeepSpeed reads (removed ones excluded)."""
    import deepspeed

    seen = _Recording(BATCH)
    _parse(seen)
    # deepspeed.initialize reads a few keys itself (the sequence/data-parallel mesh): taken from its source
    for node in ast.walk(ast.parse(inspect.getsource(deepspeed.initialize).strip())):
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) and \
                any(isinstance(c, ast.Name) and c.id == "config" for c in node.comparators):
            seen.looked_up.add(node.left.value)
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "config" \
                and isinstance(node.slice, ast.Constant):
            seen.looked_up.add(node.slice.value)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and \
                isinstance(node.func.value, ast.Name) and node.func.value.id == "config" and node.args and \
                isinstance(node.args[0], ast.Constant):
            seen.looked_up.add(node.args[0].value)
    return frozenset(k for k in seen.looked_up if isinstance(k, str)) - set(removed_keys())


def removed_keys() -> dict[str, str]:
    """Top-level keys the installed DeepSpeed refuses, with its reason."""
    from deepspeed.runtime import config as ds_config

    return dict(getattr(ds_config, "_REMOVED_TOP_LEVEL_CONFIG_KEYS", {}))


def _nearest(key: str, valid: collections.abc.Iterable[str], where: str) -> str:
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=1)
    return f"did you mean '{where}{close[0]}'?" if close else f"expected one of: {', '.join(valid)}"


def _model_keys(model, loc: tuple) -> list[str]:
    """Field names and aliases of the pydantic model at `loc` (a path of field names) under `model`."""
    import typing

    for part in loc:
        field = model.model_fields.get(part) or next(
            (f for f in model.model_fields.values() if f.alias == part), None)
        if field is None:
            return []
        kinds = [a for a in (typing.get_args(field.annotation) or (field.annotation,)) if hasattr(a, "model_fields")]
        if not kinds:
            return []
        model = kinds[0]
    return [n for name, f in model.model_fields.items() for n in (name, f.alias) if n]


def _model_named(title: str):
    from deepspeed.runtime.config_utils import DeepSpeedConfigModel

    todo, out = [DeepSpeedConfigModel], None
    while todo and out is None:
        cls = todo.pop()
        out = cls if cls.__name__ == title else None
        todo += cls.__subclasses__()
    return out


def check(ds: dict[str, Any], source: str, prefix: str = "") -> None:
    """Raise UserError naming the first key of `ds` that the installed DeepSpeed would not read, with the
    nearest valid key. `source` says where the keys came from (a file, or the ds.* overrides, whose
    keys are shown with `prefix` "ds.")."""
    import deepspeed
    import pydantic
    from deepspeed.runtime.config import DeepSpeedConfigError

    version = f"DeepSpeed {deepspeed.__version__}"
    for key in ds:
        if key in removed_keys():
            raise UserError(f"{source} sets '{prefix}{key}', which {version} no longer supports "
                            f"({' '.join(removed_keys()[key].split()).rstrip('.')}); expected it removed")
        if key not in top_level_keys() and key not in BATCH:
            raise UserError(f"{source} has unknown key '{prefix}{key}' ({version} would ignore it); "
                            f"{_nearest(key, top_level_keys(), prefix)}")
    for name, value in ds.items():  # one section at a time, so an error names its section
        section = _wrap(value)
        try:
            _parse({**BATCH, name: section})
        except pydantic.ValidationError as exc:
            raise _invalid(exc, prefix + name, source, version) from None
        except DeepSpeedConfigError as exc:
            raise UserError(f"{source}: {' '.join(str(exc).split()).rstrip('.')}; expected what {version} "
                            "accepts") from None
        except Exception:  # noqa: BLE001 - other checks (precision, batch sizes) are the engine's, said there
            continue
        _unread(section, f"{prefix}{name}.", source, version)


def _invalid(exc, section: str, source: str, version: str) -> UserError:
    """A pydantic model's refusal of `section` as one line (an unknown field: with the nearest one)."""
    error = exc.errors()[0]
    loc = [str(p) for p in error["loc"]]
    shown = loc[1:] if loc and section.endswith(loc[0]) else loc  # a monitor's model holds its section's name
    dotted = ".".join([section, *shown])
    if error["type"] != "extra_forbidden":
        return UserError(f"{source} has '{dotted}' = {error.get('input')!r}: {error['msg']}; expected a value "
                         f"{version}'s {exc.title} accepts")
    model = _model_named(exc.title)
    valid = _model_keys(model, tuple(loc[:-1])) if model else []
    if loc[-1] in valid:  # a field and its alias both given: the model keeps one and refuses the other
        return UserError(f"{source} sets '{dotted}' twice, under its name and its alias ({version}'s "
                         f"{exc.title}); expected one of the two")
    return UserError(f"{source} has unknown key '{dotted}' ({version}'s {exc.title} has no such field); "
                     f"{_nearest(loc[-1], valid, dotted.rpartition('.')[0] + '.')}")


def _unread(node: Any, where: str, source: str, version: str) -> None:
    """A section DeepSpeed looked keys up in (not read whole): a key it never looked up is a typo."""
    if not isinstance(node, _Recording) or node.whole:
        return
    for key, value in dict.items(node):
        if key not in node.looked_up:
            raise UserError(f"{source} has unknown key '{where}{key}' ({version} would ignore it); "
                            f"{_nearest(key, node.looked_up, where)}")
        _unread(value, f"{where}{key}.", source, version)
