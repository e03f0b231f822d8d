"""Shared fixtures: tiny real objects built once per session, no downloads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Tests run many small processes on 2 cores: one thread each avoids oversubscription.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """Demo assets (texts, QA sets, tokenizer, random tiny OPT in init/), built once."""
    from unlearn import demo

    return demo.build(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real public data); tests that need it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present (bare clone); CI provides it")
    return SHARED_DATA


RENDEZVOUS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def child_env(extra: dict | None = None) -> dict[str, str]:
    """This process's environment for a child process, without the rendezvous of `dist_env`: a child
    that inherited MASTER_PORT would try to listen on the port this process already holds."""
    return {**{k: v for k, v in os.environ.items() if k not in RENDEZVOUS}, **(extra or {})}


def launch(script: str, args: list[str], *, nprocs: int = 1, cwd: Path | None = None,
           timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run launch/<script> (or a repo-relative path) under the real `deepspeed` launcher."""
    path = ROOT / script if "/" in script else ROOT / "launch" / script
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(nprocs),
           "--master_port", str(_free_port()), str(path), *args]
    return subprocess.run(cmd, cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout, env=child_env(env))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def fp32_engines(monkeypatch):
    """In-process engines train in fp32 on GPU machines too. The suite pins fp32 numbers (losses equal
    within 1e-5, bit-exact resumes, frozen weights bit-equal to the base); a DeepSpeed JSON that leaves
    precision unsaid means bf16 where the GPU has it (engine.read_ds_config), under which those pins do
    not hold. Processes the tests launch keep that default: slurm/gpu_checks.sh runs them in bf16."""
    import torch

    if torch.cuda.is_available():
        from unlearn.train import engine

        monkeypatch.setattr(engine, "bf16_supported", lambda: False)


@pytest.fixture(scope="session")
def dist_env():
    """torch.distributed (gloo) for in-process single-rank DeepSpeed engines, started once."""
    from unlearn import distributed

    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}.items():
        os.environ.setdefault(key, value)
    return distributed.init()


@pytest.fixture
def references(monkeypatch) -> list:
    """Every train.Reference that train() builds, kept for inspection after the run."""
    from unlearn.train import loop as train_mod

    made = []

    class Recording(train_mod.Reference):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(train_mod, "Reference", Recording)
    return made


def dropout_model(demo: Path, dest: Path) -> Path:
    """The demo's random tiny OPT with OPT's real dropout (0.1): same weights, noisy when left on."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(demo / "init")
    model.config.dropout = model.config.attention_dropout = 0.1
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(demo / "init").save_pretrained(dest)
    return dest
