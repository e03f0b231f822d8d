"""What a new user meets in the first hour, before any training: the environment is reachable, the
launchers answer fast, the output carries no noise a user must learn to ignore, a CPU run repeats itself.

The whole first-hour path (set-up, demo, evaluate, TensorBoard, a sweep) runs end to end in a bare shell in
tests/test_readme_path.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT, child_env

LAUNCHERS = sorted(p.name for p in (ROOT / "launch").glob("*.py"))


def _bare_env(python_dir: str = "/usr/bin") -> dict[str, str]:
    """A new login shell's environment: no virtualenv on PATH, nothing of this test process."""
    return {"PATH": f"{python_dir}:/bin", "HOME": str(ROOT), "LANG": "C.UTF-8"}


@pytest.mark.parametrize("script", LAUNCHERS)
def test_help_imports_neither_torch_nor_deepspeed(script):
    """`--help` is argparse only (it took 8.5 s when every launcher imported torch and DeepSpeed first)."""
    code = (f"import runpy, sys\nsys.argv = ['launch/{script}', '--help']\n"
            f"try:\n    runpy.run_path('launch/{script}', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'deepspeed', 'transformers') if m in sys.modules), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env=child_env())
    assert out.returncode == 0 and "usage:" in out.stdout, out.stderr
    assert out.stderr.strip().splitlines()[-1] == "[]", out.stderr


def test_a_python_without_the_environment_gets_one_line_and_writes_nothing(tmp_path):
    """A new shell where .venv is not active: `python launch/evaluate.py CKPT` used to fail with a traceback
    (No module named 'torch') and leave an eval.error in the checkpoint."""
    ckpt = tmp_path / "run" / "checkpoints" / "step-000001"
    ckpt.mkdir(parents=True)
    (ckpt / "COMPLETE").write_text("")
    bare = tmp_path / "bin"
    bare.mkdir()
    # a Python with the standard library only: the interpreter this venv was made from, outside the venv
    (bare / "python").symlink_to(sys._base_executable)
    env = _bare_env(str(bare))
    for argv in (["launch/evaluate.py", str(ckpt)], ["launch/unlearn.py", "--ds_config", "ds_configs/zero2.json"],
                 ["launch/sweep.py", "--status", str(tmp_path)]):
        out = subprocess.run(["python", "-I", *argv], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 2, (argv, out.stderr)
        assert out.stderr.splitlines() == [
            f"error: torch, transformers not installed for {bare / 'python'}; expected the project's environment: "
            "`source .venv/bin/activate` in this shell (`make setup` creates it), or `pip install -e .` into "
            "yours"] or out.stderr.startswith("error: yaml, torch, transformers"), out.stderr
    assert sorted(p.name for p in ckpt.iterdir()) == ["COMPLETE"]


def test_setting_up_lora_on_a_cpu_prints_no_notice_of_our_libraries(demo_dir):
    """peft imports bitsandbytes, whose CPU backend logged a 4-bit hub kernel it could not load, and asks
    transformers for a deprecated property (FutureWarning): nothing a user can act on. Nor does our own
    call of gradient checkpointing use a deprecated name."""
    code = ("import warnings; warnings.simplefilter('default', FutureWarning)  # as a user's python shows them\n"
            "from unlearn.config import ModelConfig\nfrom unlearn.model import load_policy\n"
            f"load_policy(ModelConfig(name_or_path={str(demo_dir / 'init')!r}, lora=True, "
            "gradient_checkpointing=True))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=child_env())
    assert out.returncode == 0, out.stderr
    for noise in ("gemm_4bit", "kernels", "FutureWarning", "is_gradient_checkpointing"):
        assert noise not in out.stderr, out.stderr
