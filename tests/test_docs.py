"""The README's commands, as written. Every command line in its code blocks goes through its own program
up to the first download, device call or job submission:

  deepspeed launch/*.py   config files, overrides, DeepSpeed JSON, batch arithmetic for its GPU count
                          (tests/test_readme_commands.py, shared with the configs' own command comments)
  python launch/*.py      the launcher's own argument parser; evaluate.py's arguments also through the
                          check a sweep makes before submitting (suite names, flags)
  make TARGET             `make -n` prints its recipe; each deepspeed / python line of it as above
  bash slurm/gpu_checks.sh  its --dry-run prints the commands it would run; each deepspeed / python line as above
  sbatch slurm/sweep.sh,  the sweep is planned (every grid point's config written and checked, the
  launch/sweep.py GRID    profile read, eval args checked) into a scratch folder: no job is submitted
  --status on a sweep     run for real on that planned sweep
  tensorboard             the venv's tensorboard answers --version

A README command that matches none of these fails `test_every_readme_command_has_a_check`. The values
that stand in for what this machine lacks are the one table below."""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

STAND_INS = {
    # README text -> what the check uses here (the only scaled-down values of this file)
    "sweeps/demo-2x2": "{scratch}/sweeps/demo-2x2",  # the folder `sweep.py configs/sweeps/demo_2x2.yaml` plans
    "sweeps/demo-halving": "{scratch}/sweeps/demo-halving",  # ... and configs/sweeps/demo_halving.yaml
}
"""Everything else runs as written: hub ids and placeholder paths (runs/NAME, FILE.csv) are only parsed,
never opened, because every check stops before the first download or file read of a job."""

PROGRAMS = ("make", "deepspeed", "python", "sbatch", "tensorboard", "bash")


def readme_commands() -> list[str]:
    """Command lines of the README's ```bash blocks, continuation lines joined, comments kept."""
    text = (ROOT / "README.md").read_text()
    out = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.split(" ", 1)[0] in PROGRAMS:
                out.append(" ".join(line.split()))
    return out


def variants(command: str) -> list[list[str]]:
    """argv lists of a usage line: `[--a x|y]` gives one command without the option and one per choice;
    `[key=value ...]` is dropped; a shell glob is expanded in the checkout, as the shell would."""
    line = " ".join(shlex.split(command, comments=True))
    optional = re.search(r"\[([^\[\]]*)\]", line)
    if optional:
        before, after, inner = line[:optional.start()], line[optional.end():], optional.group(1)
        out = variants(before + after)
        if "..." not in inner:
            flag, _, choices = inner.partition(" ")
            out += [argv for choice in choices.split("|") for argv in variants(f"{before}{flag} {choice}{after}")]
        return out
    argv = []
    for word in line.split():
        matches = sorted(glob.glob(str(ROOT / word))) if any(c in word for c in "*?") else []
        argv += [str(Path(m).relative_to(ROOT)) for m in matches] or [word]
    return [argv]


def check(argv: list[str], scratch: Path) -> str:
    """Run `argv`'s check; returns the kind of check made (or raises)."""
    argv = [STAND_INS.get(a, a).format(scratch=scratch) for a in argv]
    program = argv[0]
    if program == "deepspeed":
        from tests.test_readme_commands import preflight_command

        preflight_command(argv[1:])
        return "preflight"
    if program == "python" and argv[1] == "launch/sweep.py" and argv[2].endswith(".yaml"):
        plan(argv[2], scratch, argv[3:])
        return "plan"
    if program == "python" and argv[1] == "launch/sweep.py" and "--status" in argv:
        out = run_launcher(argv[1:])
        assert "pending" in out, out
        return "run"
    if program == "python" and argv[1].startswith("launch/"):
        parse(argv[1], argv[2:])
        return "parse"
    if program == "sbatch" and argv[1] == "slurm/sweep.sh":
        assert subprocess.run(["bash", "-n", str(ROOT / argv[1])]).returncode == 0
        plan(argv[2], scratch, argv[3:])
        return "plan"
    if program == "make":
        recipe = subprocess.run(["make", "-n", *argv[1:]], cwd=ROOT, capture_output=True, text=True)
        assert recipe.returncode == 0, recipe.stderr
        return f"make -n ({check_inner(recipe.stdout, scratch)} inner commands)"
    if program == "bash" and argv[1] == "slurm/gpu_checks.sh":
        dry = subprocess.run(["bash", argv[1], "--dry-run"], cwd=ROOT, capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr
        return f"--dry-run ({check_inner(dry.stdout, scratch)} inner commands)"
    if program == "tensorboard":
        version = subprocess.run([str(Path(sys.executable).parent / "tensorboard"), "--version"],
                                 capture_output=True, text=True)
        assert version.returncode == 0 and version.stdout.strip(), version.stderr
        return "installed"
    raise AssertionError(f"no check for README command {' '.join(argv)!r}")


def check_inner(printed: str, scratch: Path) -> int:
    """Check each deepspeed / python launch/ line that a recipe prints (pytest lines are the suite itself)."""
    lines = [" ".join(line.split()) for line in printed.replace("\\\n", " ").splitlines()]
    inner = [line for line in lines if re.match(r"(\S*/)?(deepspeed( --\w+ \w+)*|python\S*) (-m pytest|launch/)",
                                               line)]
    for line in inner:
        words = shlex.split(line)
        words[0] = "python" if "python" in words[0] else Path(words[0]).name
        while words[0] == "deepspeed" and words[1] in ("--log_level", "--master_port"):  # the launcher's own
            del words[1:3]
        if words[1:3] != ["-m", "pytest"]:
            check(words, scratch)
    return len(inner)


def _launcher(script: str):
    spec = importlib.util.spec_from_file_location(f"launcher_{Path(script).stem}", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(script: str, args: list[str]) -> None:
    """The launcher's own parser accepts `args` (its job is not run); evaluate.py's args also pass the
    check a sweep makes at planning."""
    module = _launcher(script)
    ran = []
    module.guarded = ran.append  # parse, then hand the job over instead of running it
    module.main(args)
    assert len(ran) == 1, f"{script} {args} did not reach its job"
    if script == "launch/evaluate.py":
        from unlearn.eval.job import check_args

        where = 2 if args[0] == "--run" else 0 if args[0].startswith("-") else 1
        check_args(args[where:])


def plan(grid: str, scratch: Path, overrides: list[str]) -> None:
    """`launch/sweep.py --plan-shell` (what slurm/sweep.sh evaluates before its first sbatch), into scratch."""
    out = subprocess.run([sys.executable, "launch/sweep.py", "--plan-shell", grid, *overrides,
                          f"sweep.output_dir={scratch}/sweeps"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^N_TASKS=\d+$", out.stdout, re.M), out.stdout


def run_launcher(args: list[str]) -> str:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


COMMANDS = readme_commands()


def test_the_readme_has_its_commands():
    assert {c.split()[0] for c in COMMANDS} == set(PROGRAMS) and len(COMMANDS) >= 25


def test_variants_of_a_usage_line():
    assert variants("python launch/sweep.py --best d [--rule a|b] [key=value ...]") == [
        ["python", "launch/sweep.py", "--best", "d"], ["python", "launch/sweep.py", "--best", "d", "--rule", "a"],
        ["python", "launch/sweep.py", "--best", "d", "--rule", "b"]]
    assert variants("make demo    # creates .venv") == [["make", "demo"]]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A scratch folder holding the planned sweeps that `--status sweeps/NAME` reads."""
    folder = tmp_path_factory.mktemp("docs")
    plan("configs/sweeps/demo_2x2.yaml", folder, [])
    plan("configs/sweeps/demo_halving.yaml", folder, [])
    return folder


@pytest.mark.parametrize("command", COMMANDS, ids=[c[:60] for c in COMMANDS])
def test_every_readme_command_has_a_check(command, scratch):
    kinds = [check(argv, scratch) for argv in variants(command)]
    assert kinds


def test_a_parse_check_can_fail(scratch):
    with pytest.raises(SystemExit):
        check(["python", "launch/evaluate.py", "runs/x/checkpoints/step-000001", "--no_such_flag"], scratch)
    from unlearn.errors import UserError

    with pytest.raises(UserError, match="suite"):
        check(["python", "launch/evaluate.py", "runs/x/checkpoints/step-000001", "--suite", "harmfull"], scratch)


def test_gpu_checks_without_a_gpu_exit_2_with_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the script would run its checks")
    out = ROOT / "runs" / "gpu-checks-never-written"
    proc = subprocess.run(["bash", "slurm/gpu_checks.sh"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "GPU_OUT": str(out)})
    assert proc.returncode == 2 and proc.stdout == "" and not out.exists(), proc.stdout
    assert proc.stderr.startswith("error: slurm/gpu_checks.sh needs a CUDA GPU;") and proc.stderr.count("\n") == 1


def test_offline_gpu_without_wheels_exits_2_with_one_line(tmp_path):
    """slurm/offline_gpu.sh before `make gpu-wheels`: one line naming the folder and the make target,
    exit 2, nothing installed or written."""
    out = tmp_path / "never-written"
    proc = subprocess.run(["bash", "slurm/offline_gpu.sh"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "WHEELS": str(tmp_path / "none"), "OUT": str(out)})
    assert proc.returncode == 2 and proc.stdout == "" and not out.exists(), proc.stdout
    assert proc.stderr == (f"error: no wheels in {tmp_path / 'none'}/; expected the output of 'make gpu-wheels' "
                           "(made where an index is reachable)\n")


def test_every_config_and_profile_is_checked():
    """Each run YAML carries the command that runs it (preflighted by test_readme_commands); each sweep grid
    and cluster profile is loaded by tests/test_sweep_grid.py::test_shipped_sweep_files_load."""
    from tests.test_readme_commands import COMMANDS as PREFLIGHTED

    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        if path.parent.name == "sweeps":
            continue
        assert any(f"--config {path.relative_to(ROOT)}" in where for where, _ in PREFLIGHTED), \
            f"{path.relative_to(ROOT)} has no `deepspeed ... --config {path.relative_to(ROOT)}` comment"
    from unlearn.sweep.profile import load_profile, sbatch_args

    for profile in sorted((ROOT / "slurm" / "profiles").glob("*.yaml")):
        assert any(a.startswith("--time") for a in sbatch_args(load_profile(profile), "train")), profile
