"""Config from YAML files and `key.sub=value` overrides; unknown keys and bad types raise.

Values are coerced by the dataclass field's type, so `optim.lr=2e-6` on the command line and
`lr: 2e-6` in YAML (which PyYAML reads as a string) both become floats.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from unlearn import textfiles
from unlearn.config import Config
from unlearn.errors import UserError

DS_PREFIX = "ds."
"""Overrides under this prefix patch the DeepSpeed JSON (e.g. ds.zero_optimization.stage=3)."""


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key of the config (`optim.lr`, ...), sections first-level only."""
    out = []
    for name, tp in typing.get_type_hints(cls).items():
        out += _all_keys(tp, f"{prefix}{name}.") if dataclasses.is_dataclass(tp) else [f"{prefix}{name}"]
    return out


def _unknown_key(key: str, known: typing.Iterable[str], where: str) -> UserError:
    """The error for `where + key`: the same name in another section (train.lr -> optim.lr), else the
    closest spelling in any section (this section's on a tie), else the section's keys."""
    known = list(known)
    if not where:  # a section name
        close = difflib.get_close_matches(key, known, n=1)
    else:
        close = [k for k in _all_keys() if k.rpartition(".")[2] == key]
        if not close:
            scored = [(difflib.SequenceMatcher(None, key, k.rpartition(".")[2]).ratio(), k.startswith(where), k)
                      for k in _all_keys()]
            best = max(scored)
            close = [best[2]] if best[0] >= 0.6 else []  # difflib.get_close_matches' cutoff
    if close:
        return UserError(f"unknown config key '{where}{key}'; did you mean {' or '.join(repr(h) for h in close)}?")
    return UserError(f"unknown config key '{where}{key}'; expected one of: {', '.join(sorted(known))}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the field type `tp`, or raise naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if origin is tuple:
        args = typing.get_args(tp)
        item_tp = args[0]
        pair = len(args) == 2 and args[1] is not Ellipsis
        expected = "a list of 2 items" if pair else "a list"
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}' is {value!r}; expected {expected}")
        if pair:
            if len(value) != 2:
                raise UserError(f"config key '{key}' is {value!r}; expected {expected}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
        return tuple(_coerce(v, item_tp, key) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise UserError(f"config key '{key}' is {value!r}; expected true or false")
    if tp is int:
        if isinstance(value, bool):
            raise UserError(f"config key '{key}' is {value!r}; expected an integer")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise UserError(f"config key '{key}' is {value!r}; expected an integer") from None
        if not as_float.is_integer():
            raise UserError(f"config key '{key}' is {value!r}; expected an integer")
        return int(as_float)
    if tp is float:
        if isinstance(value, bool):
            raise UserError(f"config key '{key}' is {value!r}; expected a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UserError(f"config key '{key}' is {value!r}; expected a number") from None
    if tp is str:
        if value is None:
            return ""
        if isinstance(value, (dict, list)):
            raise UserError(f"config key '{key}' is {value!r}; expected a string")
        return str(value)
    raise AssertionError(f"unsupported field type {tp} for {key}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = _fields(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key(key, fields, prefix)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise UserError(f"config key '{prefix}{key}' is {value!r}; expected a mapping of its fields")
            kwargs[key] = _build(tp, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
    return cls(**kwargs)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"override '{dotted}': '{part}' is not a section; expected section.key=value")
        node = child
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split `key=value` strings into (run-config tree, DeepSpeed JSON patch tree)."""
    run_tree: dict[str, Any] = {}
    ds_tree: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"override '{item}' has no '='; expected the form section.key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if key.startswith(DS_PREFIX):
            _set_path(ds_tree, key[len(DS_PREFIX):], value)
        else:
            if "." not in key:
                raise UserError(f"override '{item}' names no section; expected section.key=value, e.g. train.max_steps=10")
            _set_path(run_tree, key, value)
    return run_tree, ds_tree


def deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file '{path}' not found; expected a YAML file such as configs/harmful_opt1.3b.yaml")
    try:
        data = yaml.safe_load(textfiles.read_text(path, "config file"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"config file '{path}' is not valid YAML{where}; expected a mapping of sections "
                        "(model:, data:, method:, optim:, train:, run:)") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' holds a {type(data).__name__}; expected a mapping of sections "
                        "(model:, data:, method:, optim:, train:, run:)")
    return data


def load_config(config_files: list[str] | None = None, overrides: list[str] | None = None,
                defaults: dict[str, Any] | None = None) -> tuple[Config, dict[str, Any]]:
    """Defaults < `defaults` < each YAML file in order < overrides. Returns (config, ds patch)."""
    tree: dict[str, Any] = dict(defaults or {})
    for path in config_files or []:
        tree = deep_merge(tree, read_yaml(path))
    run_tree, ds_tree = parse_overrides(overrides or [])
    tree = deep_merge(tree, run_tree)
    return from_dict(tree), ds_tree


def from_dict(tree: dict[str, Any]) -> Config:
    return _build(Config, tree)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict (tuples as lists) fit for yaml.safe_dump and JSON."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v
    return plain(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
