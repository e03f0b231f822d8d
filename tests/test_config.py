"""Config loading: YAML layers and key=value overrides, coercion by field type, unknown keys raise
with a suggestion, the resolved config round-trips through config.yaml."""

from __future__ import annotations

import pytest
import yaml

from unlearn.config import Config
from unlearn.config_io import dump_yaml, from_dict, load_config
from unlearn.errors import UserError


def test_layers_defaults_then_files_then_overrides(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("optim:\n  lr: 3e-5\n  warmup_steps: 4\ntrain:\n  max_steps: 7\n")
    b.write_text("optim:\n  lr: 1e-4\n")
    cfg, ds = load_config([str(a), str(b)], ["train.max_steps=9", "ds.zero_optimization.stage=3"],
                          defaults={"train": {"seed": 5, "max_steps": 1}})
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)  # PyYAML reads 3e-5 as a string
    assert cfg.optim.warmup_steps == 4 and cfg.train.max_steps == 9 and cfg.train.seed == 5
    assert ds == {"zero_optimization": {"stage": 3}}
    assert cfg.method == Config().method  # untouched sections keep their defaults


@pytest.mark.parametrize("override,field,value", [
    ("model.lora=yes", ("model", "lora"), True),
    ("model.lora=0", ("model", "lora"), False),
    ("train.max_steps=1e3", ("train", "max_steps"), 1000),
    ("optim.betas=0.8,0.95", ("optim", "betas"), (0.8, 0.95)),
    ("model.lora_target_modules=[q_proj, k_proj]", ("model", "lora_target_modules"), ("q_proj", "k_proj")),
    ("run.name=42", ("run", "name"), "42"),
])
def test_values_are_coerced_by_field_type(override, field, value):
    cfg, _ = load_config(overrides=[override])
    assert getattr(getattr(cfg, field[0]), field[1]) == value


@pytest.mark.parametrize("override,message", [
    ("train.max_stepz=3", "unknown config key 'train.max_stepz'; did you mean 'train.max_steps'?"),
    ("optimizer.lr=1", "unknown config key 'optimizer'; did you mean 'optim'?"),
    # a key of another section: the same name there first, then close spellings in any section
    ("train.lr=abc", "unknown config key 'train.lr'; did you mean 'optim.lr'?"),
    ("model.schedule=joint", "unknown config key 'model.schedule'; did you mean 'method.schedule' or "
                             "'optim.schedule'?"),
    ("method.warmup_step=3", "unknown config key 'method.warmup_step'; did you mean 'optim.warmup_steps'?"),
    ("train.max_steps=2.5", "config key 'train.max_steps' is 2.5; expected an integer"),
    ("model.lora=maybe", "config key 'model.lora' is 'maybe'; expected true or false"),
    ("optim.lr=fast", "config key 'optim.lr' is 'fast'; expected a number"),
    ("optim.betas=0.9", "config key 'optim.betas' is 0.9; expected a list of 2 items"),
    ("optim.betas=[0.9]", "config key 'optim.betas' is [0.9]; expected a list of 2 items"),
    ("train=3", "override 'train=3' names no section; expected section.key=value, e.g. train.max_steps=10"),
    ("train.max_steps", "override 'train.max_steps' has no '='; expected the form section.key=value"),
    ("train.max_steps.x=1", "config key 'train.max_steps' is {'x': 1}; expected an integer"),
])
def test_bad_overrides_name_the_key_and_what_was_expected(override, message):
    with pytest.raises(UserError) as info:
        load_config(overrides=[override])
    assert str(info.value) == message


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="'nope.yaml' not found; expected a YAML file"):
        load_config(["nope.yaml"])
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="holds a list; expected a mapping of sections"):
        load_config([str(listing)])
    section = tmp_path / "section.yaml"
    section.write_text("train: 5\n")
    with pytest.raises(UserError, match="config key 'train' is 5; expected a mapping of its fields"):
        load_config([str(section)])


def test_resolved_config_round_trips_through_yaml():
    cfg, _ = load_config(overrides=["optim.lr=2e-6", "model.lora=true", "optim.betas=0.8,0.9", "run.name=x"])
    assert from_dict(yaml.safe_load(dump_yaml(cfg))) == cfg
