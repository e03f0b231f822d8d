"""The README's first hour, as a new user follows it: in a copy of this checkout with no ../shared beside
it (a bare clone), each command in a new shell with a bare environment (PATH without the virtualenv,
nothing of this test process), run as the README writes it. The set-up command builds the demo, trains
the main job and prints the table whose numbers the README quotes (so they cannot drift silently); then
the README's next commands: evaluate the run, open TensorBoard, and a sweep on the local SLURM cluster
with its status, report and chosen checkpoint.

The stand-ins, the only values not read from the README: RUN is the run folder the main job printed;
SLURM_CONF points the shell at the local cluster (a real cluster's login shell has it set); BOOKS names
../shared/data/books for `make copyright-demo` (the copy has no ../shared beside it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow]
CLUSTER_CONF = Path(os.environ.get("UNLEARN_SLURM_DIR", "/tmp/unlearn-slurm")) / "etc" / "slurm.conf"


def readme_block(starting: str) -> list[str]:
    """The lines of the README's first code block whose first line starts with `starting`."""
    for block in re.findall(r"```[a-z]*\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        if block.startswith(starting):
            return block.rstrip("\n").splitlines()
    raise AssertionError(f"README has no code block starting with {starting!r}")


def section_tables(heading: str) -> list[list[str]]:
    """The lines of each code block starting with `metric` in the README section under `heading`."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading + "\n"):]
    section = section[:section.find("\n#", len(heading))]
    return [block.rstrip("\n").splitlines() for block in re.findall(r"```\n(metric .*?)```", section, re.S)]


def first_hour_commands() -> list[str]:
    """The README block that follows `make demo`, each command without its comment."""
    return [line.split("  #")[0].strip() for line in readme_block("source .venv/bin/activate")]


def fresh_copy(dest: Path) -> Path:
    """This checkout's files as a clone has them (tracked, and new ones git does not ignore), with the
    environment `make setup` made here (a fresh clone's `make demo` would install the same)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)  # mtimes kept: make sees .venv/.installed up to date
    (dest / ".venv").symlink_to(ROOT / ".venv")
    return dest


def shell(line: str, cwd: Path, timeout: float, **kw) -> subprocess.CompletedProcess:
    """`line` in a new bash with a new login's environment (no virtualenv active)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(cwd.parent), "LANG": "C.UTF-8",
           "SLURM_CONF": str(CLUSTER_CONF)}
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          **kw)


def _ok(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 0, f"{out.args}: exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, str, str]:
    """(the copy, `make demo`'s output, the run folder it printed), after the README's set-up command."""
    repo = fresh_copy(tmp_path_factory.mktemp("clone") / "unlearn")
    setup = readme_block("make demo")[0].split("#")[0].strip()
    out = _ok(shell(setup, repo, timeout=900))
    run = re.findall(r"^run (runs/\S+) \|", out, re.M)[-1]
    return repo, out, run


def test_make_demo_prints_the_readmes_table_and_a_self_describing_run(demo_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    repo, out, run = demo_run
    table, = section_tables("## Two commands")
    printed = out[out.index("\nmetric ") + 1:].splitlines()[:len(table)]
    assert printed == table  # the README's numbers are what the set-up command prints on this machine
    assert "Traceback" not in out and "[INFO]" not in out  # the launcher's INFO lines are not the user's
    ckpt = repo / run / "checkpoints" / "step-000060"
    assert {"config.yaml", "meta.json", "manifest.json", "COMPLETE", "config.json", "model.safetensors",
            "tokenizer.json"} <= {p.name for p in ckpt.iterdir()}
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["step"] == 60 and meta["cpu_threads"] == 1 and meta["weights_finite"]
    acc = EventAccumulator(str(repo / run / "tb"))
    acc.Reload()
    assert {"forget/loss", "retain/loss", "grad_norm", "lr", "tokens_per_s", "padding"} <= set(acc.Tags()["scalars"])
    # the logged rate is the mean of those the steps of its window applied: linear decay from 2e-4 over
    # 60 steps (step t applies 2e-4 (61 - t) / 60), logged every 5 steps
    lr = [(e.step, e.value) for e in acc.Scalars("lr")]
    assert [s for s, _ in lr] == list(range(5, 61, 5))
    assert [v for _, v in lr] == pytest.approx([2e-4 * sum(61 - t for t in range(s - 4, s + 1)) / 300
                                                for s, _ in lr], rel=1e-6)
    summary = json.loads((repo / run / "summary.json").read_text())
    assert summary["oracle"]["model"] == ".cache/demo/oracle"
    assert summary["after"]["forget_nll"] > summary["before"]["forget_nll"]  # ascent forgets


def test_the_next_commands_in_a_new_shell(demo_run):
    """Evaluate the run, then TensorBoard serves its training and evaluation scalars."""
    repo, _, run = demo_run
    activate, evaluate, tensorboard = first_hour_commands()[:3]
    assert activate == "source .venv/bin/activate" and evaluate == "python launch/evaluate.py --run runs/RUN"
    out = _ok(shell(f"{activate} && {evaluate.replace('runs/RUN', run)}", repo, timeout=600))
    steps = [line.split(",")[0] for line in (repo / run / "eval_summary.csv").read_text().splitlines()[1:]]
    assert steps == ["0", "60", "oracle"] and "oracle" in out

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert tensorboard == "tensorboard --logdir runs/"
    server = subprocess.Popen(["bash", "-c", f"{activate} && exec {tensorboard} --port {port} --host 127.0.0.1"],
                              cwd=repo, env={"PATH": "/usr/bin:/bin", "HOME": str(repo.parent)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end, tags = time.time() + 120, {}
        while not any("eval/copyright/verbatim_rouge_l" in run_tags for run_tags in tags.values()):
            assert time.time() < end and server.poll() is None, tags
            time.sleep(1)
            try:  # {run folder: {tag: metadata}}
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5) as r:
                    tags = json.loads(r.read())
            except OSError:
                pass
        scalars = tags[run.removeprefix("runs/") + "/tb"]
        assert {"forget/loss", "retain/loss", "eval/utility/retain_ppl"} <= set(scalars)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_make_copyright_demo_prints_the_readmes_tables(demo_run, shared_data):
    repo, _, _ = demo_run
    command = readme_block("make copyright-demo")[0].split("#")[0].strip()
    out = _ok(shell(f"{command} BOOKS={shared_data / 'books'}", repo, timeout=900))
    tables = section_tables("### The copyright pipeline at CPU scale")  # stage 1, then stage 2
    printed = [out[m.start() + 1:].splitlines()[:len(t)] for m, t in zip(re.finditer(r"\nmetric ", out), tables)]
    assert len(tables) == 2 and printed == tables


def test_make_harmful_demo_prints_the_readmes_table(demo_run):
    """`make harmful-demo` after `make demo` (its tokenizer and tiny OPT): every checkpoint, the starting
    model and the oracle get judged harmful rates on the unlearned and unseen prompts and their normal
    answers' similarity to the stage-1 model's, and the table is the README's."""
    repo, _, _ = demo_run
    command = readme_block("make harmful-demo")[0].split("#")[0].strip()
    out = _ok(shell(command, repo, timeout=900))
    table = readme_block("    step harmful forget")
    printed = [line for line in out[out.index("\n    step harmful forget") + 1:].splitlines()
               if set(line) != {"-"}][:len(table)]  # the README leaves out the rule under the header
    assert printed == table
    run = repo / "runs" / "demo-harmful"
    for path in (run / "eval_start.json", run / "checkpoints" / "step-000040" / "eval.json", run / "eval_oracle.json"):
        metrics = json.loads(path.read_text())["suites"]
        harmful, utility = metrics["harmful"]["metrics"], metrics["utility"]["metrics"]
        assert harmful["forget_harmful_rate"]["n"] == 16 and harmful["harmful_rate"]["n"] == 8
        assert utility["similarity_to_reference_rouge_l"]["n"] > 0
        assert metrics["harmful"]["info"]["judge"]["kind"] == "classifier", metrics["harmful"]["info"]["judge"]
    assert json.loads((run / "eval_oracle.json").read_text())["checkpoint"] == ".cache/harmful-demo/oracle"
    assert "oracle: a model that never saw the forget data" in out
    assert (run / "eval_summary.csv").read_text().splitlines()[-1].startswith("oracle,.cache/harmful-demo/oracle,")


@pytest.mark.slurm
def test_a_sweep_from_a_new_shell_with_status_report_and_best(demo_run):
    """`sbatch slurm/sweep.sh ...` from a shell where no environment is active: the submitting job and
    every task find `make setup`'s .venv themselves; then --status and --best as written."""
    if not CLUSTER_CONF.is_file():
        message = f"no local SLURM cluster ({CLUSTER_CONF}); start it with: slurm/local-cluster.sh start"
        pytest.fail(message) if os.environ.get("CI") == "true" else pytest.skip(message)
    repo, _, _ = demo_run
    activate, *_, sweep, status, best = first_hour_commands()
    assert sweep.startswith("sbatch slurm/sweep.sh configs/sweeps/demo_2x2.yaml")
    _ok(shell(sweep, repo, timeout=120))  # no `source .venv/bin/activate` before it
    folder = repo / "sweeps" / "demo-2x2"
    end = time.time() + 60
    while not (folder / "jobs.txt").is_file():  # written last by the submitting job
        assert time.time() < end, [p.read_text() for p in (repo / "slurm" / "logs").glob("sweep-submit-*.out")]
        time.sleep(0.5)
    ids = [word for word in (folder / "jobs.txt").read_text().split() if word[0].isdigit()]  # train, evals, report
    try:
        end = time.time() + 600
        while shell(f"squeue -h -j {','.join(ids)}", repo, timeout=30).stdout.strip():
            assert time.time() < end, shell(f"squeue -j {','.join(ids)}", repo, timeout=30).stdout
            time.sleep(2)
    finally:
        shell(f"scancel {' '.join(ids)}", repo, timeout=30)
    out = _ok(shell(f"{activate} && {status}", repo, timeout=120))
    assert out.count(" done ") == 4, out
    report = (folder / "report.csv").read_text().splitlines()
    assert len(report) == 5, report
    _ok(shell(f"{activate} && {best}", repo, timeout=120))
    chosen = json.loads((folder / "best.json").read_text())
    assert (repo / chosen["checkpoint"]).is_dir() and chosen["run"] in (folder / "tasks.txt").read_text()
    assert not list(repo.glob("sweep-submit-*.out"))  # the submitting job logs under slurm/logs/
