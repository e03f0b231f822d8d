"""Every `deepspeed ... launch/unlearn.py|finetune.py` command in the README and in configs/ comments,
as written, passes everything that comes before the first download or device call: its config
files and overrides, its DeepSpeed JSON, and the batch arithmetic for the number of GPUs it names."""

from __future__ import annotations

import re
import shlex

import pytest

from tests.conftest import ROOT
from unlearn.config import FINETUNE_DEFAULTS
from unlearn.config_io import load_config
from unlearn.train import engine as engines
from unlearn.train import preflight


def _commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `deepspeed`) for every deepspeed command line, continuation lines joined."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "configs").glob("*.yaml")),
                 *sorted((ROOT / "configs" / "tofu").glob("*.yaml")), *sorted((ROOT / "configs" / "methods").glob("*.yaml"))]:
        text = path.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            line = line.lstrip("# ").strip()
            if line.startswith("deepspeed ") and re.search(r"launch/(unlearn|finetune|task_vector)\.py", line):
                found.append((f"{path.name}: {line}", shlex.split(line)[1:]))
    return found


COMMANDS = _commands()


def test_the_readme_and_presets_have_commands():
    assert len(COMMANDS) >= 8 and any("--num_gpus 4" in where for where, _ in COMMANDS)


def preflight_command(argv: list[str]) -> None:
    """`deepspeed [--num_gpus N] launch/X.py ...` (argv after `deepspeed`) up to the first download."""
    gpus = int(argv[argv.index("--num_gpus") + 1]) if "--num_gpus" in argv else 1
    script = next(a for a in argv if a.startswith("launch/"))
    rest = argv[argv.index(script) + 1:]
    ds_config = rest[rest.index("--ds_config") + 1]
    configs = [rest[i + 1] for i, a in enumerate(rest) if a == "--config"]
    overrides = [a for a in rest if "=" in a and not a.startswith("-")]
    cfg, patch = load_config([str(ROOT / c) for c in configs], overrides,
                             defaults=FINETUNE_DEFAULTS if script.endswith("finetune.py") else None)
    ds = engines.read_ds_config(ROOT / ds_config, patch)
    cfg = engines.resolve_micro_batch(cfg, gpus)
    preflight.check_config(cfg, ds, gpus)
    assert cfg.train.micro_batch_size * gpus * engines.grad_accum_steps(cfg, gpus) == cfg.train.global_batch_size


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[w.split(":")[0] + str(i) for i, (w, _) in enumerate(COMMANDS)])
def test_each_command_passes_the_checks_before_any_download(where, argv):
    preflight_command(argv)


@pytest.mark.parametrize("ranks", [1, 2, 4, 8])
def test_the_default_config_runs_on_1_2_4_and_8_ranks(ranks):
    cfg, _ = load_config()
    for stage in (2, 3):
        ds = engines.read_ds_config(ROOT / "ds_configs" / f"zero{stage}.json")
        resolved = engines.resolve_micro_batch(cfg, ranks)
        preflight.check_config(resolved, ds, ranks)
        assert resolved.train.micro_batch_size == 8 // ranks and engines.grad_accum_steps(resolved, ranks) == 1


def test_a_global_batch_that_cannot_be_split_names_both_numbers():
    from unlearn.errors import UserError

    cfg, _ = load_config([str(ROOT / "configs" / "harmful_opt1.3b.yaml")])
    with pytest.raises(UserError, match="train.global_batch_size=2 cannot be split over 8 ranks; expected a "
                                        "positive multiple of 8"):
        engines.resolve_micro_batch(cfg, 8)
