"""Sweeps on a real SLURM cluster (slurm/local-cluster.sh start: 2 slurmd on this host, slurmdbd + sacct).

Outside CI these skip when no cluster is up; in CI (CI=true) a missing cluster is a failure.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from unlearn import runs

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_DIR = Path(os.environ.get("UNLEARN_SLURM_DIR", "/tmp/unlearn-slurm"))
pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# Tiny runs: each process start costs ~10 s on 2 cores, so few processes and few steps.
TINY = ["train.micro_batch_size=2", "train.global_batch_size=2", "train.log_every_n_steps=1"]
# utility first: it takes ~0.1 s, copyright ~2 s, so a stop sent once utility is in eval.json lands in copyright
EVAL = "sweep.eval.args=[--suite, 'utility,copyright', --limit, '4', --truthfulqa, none, --reference, none]"
STOPS = (["--signal=TERM"], ["--full", "--signal=TERM"], ["--signal=USR1"])
"""scancel options of a stop: to the job steps (preemption, scancel), to the batch shell as well (scancel
--full, some sites' preemption), SLURM's warning before the time limit (what --signal=USR1@N sends)."""


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory) -> dict[str, str]:
    conf = CLUSTER_DIR / "etc" / "slurm.conf"
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "UNLEARN_PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    up = conf.is_file() and subprocess.run(["scontrol", "ping"], env=env, capture_output=True).returncode == 0
    if not up:
        message = f"no local SLURM cluster ({conf}); start it with: slurm/local-cluster.sh start"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return env


def _proctrack() -> str:
    """The cluster's process tracking (slurm/local-cluster.sh: UNLEARN_SLURM_PROCTRACK), read from its
    slurm.conf at collection so that the test below names it: "none" when there is no cluster."""
    conf = CLUSTER_DIR / "etc" / "slurm.conf"
    found = re.search(r"^ProctrackType=proctrack/(\w+)", conf.read_text(), re.M) if conf.is_file() else None
    return found.group(1) if found else "none"


# Each process logs the stops it gets to STOPS.<who>: the batch shell, a child in its process group, a
# child in a session of its own (as slurm/detach.sh starts srun), a step's task and that task's child.
_STOPS_JOB = """#!/bin/bash
log='for s in TERM USR1 USR2; do trap "echo $s >> $STOPS.$0" $s; done; touch $STOPS.$0; while :; do sleep 0.1; done'
for s in TERM USR1 USR2; do trap "echo $s >> $STOPS.shell" $s; done; touch $STOPS.shell
bash -c "$log" group &
setsid bash -c "$log" session &
setsid srun bash -c "bash -c '$log' step-child & $log" step-task &
while :; do sleep 0.1; done
"""


@pytest.mark.parametrize("proctrack", [_proctrack()])
def test_which_processes_each_stop_reaches(slurm_env, tmp_path, proctrack):
    """What the stop paths rely on, per ProctrackType (the test's id names the cluster's): a stop sent
    to the job steps (scancel --signal, --signal=USR1@N) reaches each step's task, and under
    proctrack/cgroup only that task (so each rank's wrapper in slurm/train-task.sh and TrainJob in
    unlearn/sweep/jobs.py pass it on); one sent to the whole job (scancel --full) reaches the batch
    shell and its process group but not a child in a session of its own (so slurm/detach.sh's srun
    does not turn it into SIGKILL for the ranks)."""
    script = tmp_path / "stops.sh"
    script.write_text(_STOPS_JOB)
    job = _run(["sbatch", "--parsable", "-n1", "-o", str(tmp_path / "out"), "--export", f"ALL,STOPS={tmp_path}/got",
                str(script)], slurm_env).strip()
    who = ("shell", "group", "session", "step-task", "step-child")
    got = lambda name: (tmp_path / f"got.{name}").read_text().split()  # noqa: E731
    try:
        _until("every process's traps", lambda: all((tmp_path / f"got.{name}").exists() for name in who))
        _run(["scancel", "--signal=USR1", job], slurm_env)
        _until("USR1 at the step's task", lambda: got("step-task"), timeout=30)
        _run(["scancel", "--full", "--signal=USR2", job], slurm_env)
        _until("USR2 at the batch shell", lambda: "USR2" in got("shell"), timeout=30)
        time.sleep(1)  # whoever else gets it, gets it by now
        seen = {name: got(name) for name in who}
    finally:
        subprocess.run(["scancel", job], env=slurm_env, capture_output=True)
    assert proctrack in ("linuxproc", "cgroup"), proctrack
    assert seen == {"shell": ["USR2"], "group": ["USR2"], "session": [], "step-task": ["USR1"],
                    "step-child": ["USR1"] if proctrack == "linuxproc" else []}, seen


def _demo_overrides(demo_dir: Path) -> list[str]:
    return [f"model.name_or_path={demo_dir / 'init'}", f"data.forget={demo_dir / 'forget.txt'}",
            f"data.retain={demo_dir / 'retain.txt'}"]


def _run(cmd: list[str], env: dict[str, str], timeout_s: float = 120, **kw) -> str:
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, **kw)
    assert out.returncode == 0, f"{cmd}: {out.stdout}\n{out.stderr}"
    return out.stdout


def _sacct(ids: list[str], env: dict[str, str]) -> dict[str, dict[str, str]]:
    """JobID -> {State, Start, End, JobName, NodeList} for the jobs and array tasks of `ids`."""
    out = _run(["sacct", "-X", "-n", "-P", "-j", ",".join(ids), "-o", "JobID,JobName%60,State,Start,End,NodeList"],
               env)
    rows = {}
    for line in out.splitlines():
        job, name, state, start, end, nodes = line.split("|")
        rows[job] = {"JobName": name, "State": state.split()[0], "Start": start, "End": end, "NodeList": nodes}
    return rows


def _wait_done(ids: list[str], env: dict[str, str], timeout: float, expect: int) -> dict[str, dict[str, str]]:
    """Poll until `expect` jobs/tasks of `ids` are in a final state in sacct (slurmdbd lags a little)."""
    final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
    end = time.time() + timeout
    while True:
        rows = _sacct(ids, env)
        if len(rows) >= expect and all(r["State"] in final and r["End"] != "Unknown" for r in rows.values()):
            return rows
        if time.time() > end:
            raise AssertionError(f"jobs not finished after {timeout} s: {rows}")
        time.sleep(1)


def _t(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def _evals(sweep_dir: Path) -> list[list[str]]:
    """(task, run, step, checkpoint) of each eval job, in submission order (evals.tsv)."""
    return [line.split("\t") for line in (sweep_dir / "evals.tsv").read_text().splitlines()]


def _check_sweep(sweep_dir: Path, train_ids: dict[int, str], eval_ids: list[str], rows: dict, env) -> None:
    """Every run finished; every checkpoint has an eval.json written by its own eval job, which started
    only after its training task ended; the report and HParams sessions exist."""
    names = (sweep_dir / "tasks.txt").read_text().split()
    assert len(names) == 4
    for task, job in train_ids.items():
        assert rows[job]["State"] == "COMPLETED", (job, rows[job])
    expected = _evals(sweep_dir)
    assert len(eval_ids) == len(expected) > 0
    for job, (task, name, step, ckpt) in zip(eval_ids, expected):
        ev, tr = rows[job], rows[train_ids[int(task)]]
        assert ev["State"] == "COMPLETED", (job, ev)
        assert name in ev["JobName"] and ev["JobName"].endswith(step), (job, ev["JobName"], name, step)
        assert _t(ev["Start"]) >= _t(tr["End"]), f"eval {job} started {ev['Start']} before its run ended {tr['End']}"
        result = Path(ckpt) / "eval.json"
        assert json.loads(result.read_text())["step"] == int(step)
        written = datetime.fromtimestamp(result.stat().st_mtime)
        assert _t(ev["Start"]) <= written.replace(microsecond=0) <= _t(ev["End"]), (job, written, ev)
    for name in names:
        ckpts = sorted(p.name for p in (sweep_dir / "runs" / name / "checkpoints").glob("step-*"))
        assert ckpts == sorted({Path(r[3]).name for r in expected if r[1] == name})
        assert (sweep_dir / "runs" / name / "tb" / "hparams").is_dir()
    report = (sweep_dir / "report.csv").read_text().splitlines()
    assert len(report) == 5 and "utility/retain_ppl" in report[0]
    assert (sweep_dir / "report.png").stat().st_size > 1000
    status = _run([sys.executable, "launch/sweep.py", "--status", str(sweep_dir)], env)
    assert status.count(" done ") == 4 and "copyright/verbatim_rouge_l=" in status


def _eval_log(job: str, ckpt: Path) -> Path:
    return next(ckpt.parents[3].glob(f"logs/eval-*-{job}.out"), ckpt.parents[3] / "logs" / f"none-{job}")


def _sbatch_incarnations(job: str, ckpt: Path) -> list[str]:
    """An sbatch eval job's log, split at each start of the job (it appends across requeues)."""
    log = _eval_log(job, ckpt)
    return re.split(r"^eval job ", log.read_text() if log.is_file() else "", flags=re.M)[1:]


def _submitit_incarnations(job: str, ckpt: Path) -> list[str]:
    """A submitit eval job's stdout and stderr together, split at each start of its runner."""
    logs = sorted((ckpt.parents[3] / "submitit" / job).glob(f"{job}_0_log.*"))
    return re.split(r"Starting with JobEnvironment", "".join(p.read_text() for p in logs))[1:]


def _stop_in_copyright(stops: list[tuple[str, Path, list[str]]], env: dict[str, str], restart: int = 0,
                       timeout: float = 300, incarnations_of=_sbatch_incarnations) -> None:
    """Send each eval job (id, checkpoint, scancel options) its stop while evaluate.py runs copyright
    (after utility, kept in eval.json) in the job's incarnation `restart`, as its log says."""
    left, end = list(stops), time.time() + timeout
    for poll in itertools.count():
        for stop in list(left):
            incarnations = incarnations_of(stop[0], stop[1])
            if len(incarnations) > restart and "copyright suite ..." in incarnations[restart]:
                _run(["scancel", *stop[2], stop[0]], env)
                left.remove(stop)
            elif poll % 20 == 19 and not _run(["squeue", "-h", "-j", stop[0]], env).strip():
                raise AssertionError(f"eval job {stop[0]} ended before incarnation {restart} reached copyright: "
                                     f"{''.join(incarnations)[-2000:]}")
        if not left:
            return
        assert time.time() < end, f"evals {left} never reached copyright"
        time.sleep(0.05)


def _check_requeued_evals(stops, report: str, rows: dict, env: dict[str, str]) -> None:
    """Each stopped eval requeued itself once; its next incarnation ran only copyright (utility was kept)
    and completed the checkpoint's eval.json; no eval.error; the report job waited for it."""
    for job, ckpt, how in stops:
        states = _run(["sacct", "-X", "-n", "-P", "-j", job, "-D", "-o", "State"], env).split()
        assert states == ["REQUEUED", "COMPLETED"], (how, states)
        assert runs.evaluated(ckpt) and not (ckpt / "eval.error").exists(), how
        first, _, rerun = _eval_log(job, ckpt).read_text().partition("restart 1\n")
        assert "utility suite ..." in first and f"requeueing eval job {job}: stopped (exit 3); requeue 1 of 2" in first
        assert "copyright suite ..." in rerun and "utility suite" not in rerun, (first, rerun)
        assert _t(rows[report]["Start"]) >= _t(rows[job]["End"]), (rows[report], rows[job])


def test_sbatch_sweep_2x2(slurm_env, demo_dir, tmp_path):
    """The 2x2 demo grid through sbatch; then three step-4 evals are stopped while evaluate.py runs,
    one by each of STOPS: each job requeues itself (sacct REQUEUED, then COMPLETED), its rerun does only
    the suite not yet in eval.json, the report waits for it and lists the step-4 metrics of every run.
    Before: the step and the USR1 stops did not reach evaluate.py (an eval job had no step), and the
    --full one ended the job FAILED with eval.error (the checkpoint never evaluated)."""
    overrides = [f"sweep.output_dir={tmp_path}", "sweep.name=sb", EVAL, "train.max_steps=4",
                 "train.save_every_n_steps=2", *TINY, *_demo_overrides(demo_dir)]
    _run(["sbatch", f"--output={tmp_path}/submit-%j.out", "slurm/sweep.sh", "configs/sweeps/demo_2x2.yaml",
          *overrides], slurm_env)
    sweep_dir = tmp_path / "sb"
    end = time.time() + 60
    while not (sweep_dir / "jobs.txt").is_file():  # written last by the submitting job
        assert time.time() < end, list(tmp_path.glob("submit-*.out"))[0].read_text()
        time.sleep(0.5)
    jobs = dict(line.split(" ", 1) for line in (sweep_dir / "jobs.txt").read_text().splitlines())
    array, eval_ids, report = jobs["train"], jobs["eval"].split(), jobs["report"]
    status = ""  # --status asks sacct: eval jobs wait in the queue on their training tasks
    while not re.search(r"evals \d+/\d+ \([^)]*\d (pending|running)", status):
        assert time.time() < end + 60, status
        status = _run([sys.executable, "launch/sweep.py", "--status", str(sweep_dir)], slurm_env)
    assert "sacct" not in status.splitlines()[0], status
    last = [(job, Path(ckpt)) for job, (_, _, step, ckpt) in zip(eval_ids, _evals(sweep_dir)) if step == "4"]
    stops = [(job, ckpt, how) for (job, ckpt), how in zip(last, STOPS)]
    try:
        _stop_in_copyright(stops, slurm_env)
        rows = _wait_done([array, *eval_ids, report], slurm_env, timeout=300, expect=4 + len(eval_ids) + 1)
    finally:
        _cancel(sweep_dir, slurm_env)
    assert rows[report]["State"] == "COMPLETED"
    _check_sweep(sweep_dir, {i: f"{array}_{i}" for i in range(4)}, eval_ids, rows, slurm_env)
    _check_requeued_evals(stops, report, rows, slurm_env)
    with (sweep_dir / "report.csv").open() as f:
        assert [row["eval_step"] for row in csv.DictReader(f)] == ["4"] * 4


def test_submitit_sweep_2x2(slurm_env, demo_dir, tmp_path):
    """The 2x2 demo grid through submitit; two of its evals are stopped while evaluate.py runs
    copyright, one by a SIGTERM to the job's steps (preemption), one by a SIGTERM to the batch shell as
    well: each eval job is requeued once and its rerun does only copyright. Before: the first FAILED
    with eval.error (evaluate.py's exit 3 was a failure to EvalJob), the second died with its shell."""
    overrides = [f"sweep.output_dir={tmp_path}", "sweep.name=si", EVAL, "train.max_steps=3",
                 "train.save_every_n_steps=0", *TINY, *_demo_overrides(demo_dir)]
    _run([sys.executable, "launch/sweep.py", "configs/sweeps/demo_2x2.yaml", "--executor", "slurm", *overrides],
         slurm_env)
    sweep_dir = tmp_path / "si"
    jobs = dict(line.split(" ", 1) for line in (sweep_dir / "submitit_jobs.txt").read_text().splitlines())
    train, eval_ids, report = jobs["train"].split(), jobs["eval"].split(), jobs["report"]
    assert len({t.split("_")[0] for t in train}) == 1  # one job array
    ckpts = [sweep_dir / "runs" / name / "checkpoints" / "step-000003"
             for name in (sweep_dir / "tasks.txt").read_text().split()]
    stops = [(job, ckpt, how) for job, ckpt, how in zip(eval_ids, ckpts, STOPS[:2])]
    try:
        _stop_in_copyright(stops, slurm_env, incarnations_of=_submitit_incarnations)
        rows = _wait_done([train[0].split("_")[0], *eval_ids, report], slurm_env, timeout=300,
                          expect=4 + len(eval_ids) + 1)
    finally:
        subprocess.run(["scancel", *[j for v in jobs.values() for j in v.split()]], env=slurm_env)
    assert rows[report]["State"] == "COMPLETED"
    _check_sweep(sweep_dir, dict(enumerate(train)), eval_ids, rows, slurm_env)
    for job, ckpt, how in stops:
        states = _run(["sacct", "-X", "-n", "-P", "-j", job, "-D", "-o", "State"], slurm_env).split()
        assert states == ["REQUEUED", "COMPLETED"], (how, states)
        assert runs.evaluated(ckpt) and not (ckpt / "eval.error").exists(), how
        first, rerun = _submitit_incarnations(job, ckpt)
        assert "utility suite ..." in first and "copyright suite ..." in rerun and "utility suite" not in rerun, how
        assert _t(rows[report]["Start"]) >= _t(rows[job]["End"]), (rows[report], rows[job])


def test_two_node_run_preempted_and_requeued_resumes(slurm_env, demo_dir, tmp_path):
    """One run over 2 nodes (2 ranks, one per slurmd). First the time-limit warning (SIGUSR1): the run
    saves, exits 3 and slurm/train-task.sh requeues it; then `scontrol requeue` (cancel + requeue,
    SIGTERM). Each time it resumes from the checkpoint it saved."""
    profile = yaml.safe_load((ROOT / "slurm/profiles/local.yaml").read_text())
    profile["train"]["nodes"] = 2
    (tmp_path / "two_nodes.yaml").write_text(yaml.safe_dump(profile))
    grid = tmp_path / "one.yaml"
    grid.write_text(yaml.safe_dump({"name": "rq", "output_dir": str(tmp_path), "eval": {"enabled": False},
                                    "base": {"train": {"max_steps": 40, "save_every_n_steps": 4}},
                                    "axes": {"optim.lr": [1e-4]}}))
    _run(["bash", "slurm/sweep.sh", str(grid), "--profile", str(tmp_path / "two_nodes.yaml"), *TINY,
          "train.global_batch_size=4", *_demo_overrides(demo_dir)], slurm_env)
    sweep_dir = tmp_path / "rq"
    jobs = dict(line.split(" ", 1) for line in (sweep_dir / "jobs.txt").read_text().splitlines())
    task = f"{jobs['train']}_0"
    ckpts = sweep_dir / "runs" / "lr=0.0001" / "checkpoints"
    log = sweep_dir / "logs" / f"train-{jobs['train']}_0.out"

    def wait_for_checkpoint(after: int) -> None:
        end = time.time() + 180
        while not any((p / "COMPLETE").exists() and int(p.name[5:]) > after for p in ckpts.glob("step-*")):
            text = log.read_text() if log.exists() else "no log"
            # a crash fails fast; exit 143 (srun ends a rank when the other exits 3 first) is not one
            assert time.time() < end and not re.search(r"task 0: Exited with exit code 1\b", text), text
            time.sleep(0.2)

    wait_for_checkpoint(after=0)
    _run(["scancel", "--signal=USR1", task], slurm_env)  # what --signal=USR1@N sends before the limit
    end = time.time() + 180
    while len(re.findall(r"resumed from \S+ at step (\d+)", log.read_text())) < 1:
        assert time.time() < end, log.read_text()[-3000:]
        time.sleep(0.2)
    first = int(re.findall(r"resumed from \S+ at step (\d+)", log.read_text())[0])
    wait_for_checkpoint(after=first)
    _run(["scontrol", "requeue", task], slurm_env)
    rows = _wait_done([jobs["train"], jobs["report"]], slurm_env, timeout=240, expect=2)
    assert rows[task]["State"] == "COMPLETED" and rows[task]["NodeList"] == "n[1-2]"
    states = _run(["sacct", "-X", "-n", "-P", "-j", task, "-D", "-o", "State"], slurm_env).split()
    assert states == ["REQUEUED", "REQUEUED", "COMPLETED"], states  # -D: every incarnation
    text = log.read_text()
    assert "the run saved after a stop" in text  # train-task.sh's own requeue (unlearn.sweep.outcome)
    resumed = [int(s) for s in re.findall(r"resumed from \S+ at step (\d+)", text)]
    assert len(resumed) == 2 and 1 <= resumed[0] < resumed[1] < 40, text[-3000:]
    assert "2 rank(s) on n[1-2]" in text and "restart 2" in text
    meta = json.loads((ckpts / "step-000040" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == 40
    for restart, step in zip(("restart 1", "restart 2"), resumed):
        later = text[text.index(restart):]
        assert f"step {step + 1:>6}/40" in later  # continued where it stopped, not from step 1
        assert "step      1/40" not in later


class _PortsOfTheNextJobsHeld:
    """Listening sockets on the rendezvous ports that the next few jobs' ids would have given: 20000 +
    id % 20000 (slurm/train-task.sh) and 20000 + int(id's digits) % 20000 (submitit; array task N_0 ->
    N0). What a run that was handed such a port meets when another program holds it."""

    def __init__(self, env: dict[str, str], jobs: int = 6):
        import socket

        probe = _run(["sbatch", "--parsable", "--hold", "--output=/dev/null", "--wrap", "true"], env).strip()
        _run(["scancel", probe], env)
        ids = range(int(probe) + 1, int(probe) + 1 + jobs)
        self.ports = sorted({20000 + i % 20000 for i in ids} | {20000 + int(f"{i}0") % 20000 for i in ids})
        self.socks = []
        for port in self.ports:
            sock = socket.socket()
            try:
                sock.bind(("", port))
                sock.listen()
                self.socks.append(sock)
            except OSError:  # held already: all the better
                sock.close()

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


@pytest.mark.parametrize("route", ["sbatch", "submitit"])
def test_a_rendezvous_port_held_by_another_program_costs_no_run(slurm_env, demo_dir, tmp_path, route):
    """A run over 2 nodes while another program listens on the port its job id would have given it
    (held from before submission). The ranks meet on a port free on rank 0's host, chosen there
    (train-task.sh; TrainJob through a file in the sweep folder), and the run completes. Before: its
    first start failed with "port ... is in use by another program" (exit 2, a user error, never
    retried): the grid point was lost (seen once in CI, held by an outgoing connection)."""
    profile = yaml.safe_load((ROOT / "slurm/profiles/local.yaml").read_text())
    profile["train"]["nodes"] = 2
    (tmp_path / "two_nodes.yaml").write_text(yaml.safe_dump(profile))
    grid = _one_point_grid(tmp_path, "port", eval={"enabled": False}, base={"train": {"max_steps": 2}})
    held = _PortsOfTheNextJobsHeld(slurm_env)
    sweep_dir = tmp_path / "port"
    try:
        _run([*SUBMIT[route], str(grid), "--profile", str(tmp_path / "two_nodes.yaml"), *TINY,
              "train.global_batch_size=4", *_demo_overrides(demo_dir)], slurm_env)
        jobs = _jobs(sweep_dir)
        task = f"{jobs['train']}_0" if route == "sbatch" else jobs["train"]
        rows = _wait_done([task.split("_")[0], jobs["report"]], slurm_env, timeout=240, expect=2)
    finally:
        held.close()
        _cancel(sweep_dir, slurm_env)
    run = sweep_dir / "runs" / "lr=0.0001"
    logs = "".join(p.read_text() for p in sweep_dir.rglob("*") if p.is_file() and p.suffix in (".out", ".err"))
    assert rows[task]["State"] == "COMPLETED" and rows[task]["NodeList"] == "n[1-2]", (rows, logs[-3000:])
    assert "in use by another program" not in logs
    assert (run / "train.exit").read_text() == "0\n" and not (run / "train.retries").exists()
    meta = json.loads((run / "checkpoints" / "step-000002" / "meta.json").read_text())
    assert meta["world_size"] == 2
    assert _status(sweep_dir, slurm_env).stdout.count(" done ") == 1


def test_submitit_preempted_job_requeues_and_resumes(slurm_env, demo_dir, tmp_path):
    """A stop sent to the whole job, batch shell included (`scancel --full --signal=TERM`, as some sites
    preempt): the batch shell passes it on as submitit's preemption signal (USR2), TrainJob.checkpoint
    lets the run save, submitit requeues the job, and the run resumes from that checkpoint. Then its
    rank is SIGKILLed: TrainJob requeues it as retry 1 of the profile's 2 and it resumes again. Before:
    the batch shell and srun died of the stop and the job FAILED; a crash was never retried."""
    grid = tmp_path / "one.yaml"
    grid.write_text(yaml.safe_dump({"name": "pre", "output_dir": str(tmp_path), "eval": {"enabled": False},
                                    "base": {"train": {"max_steps": 60, "save_every_n_steps": 4}},
                                    "axes": {"optim.lr": [1e-4]}}))
    _run([sys.executable, "launch/sweep.py", str(grid), *TINY, *_demo_overrides(demo_dir)], slurm_env)
    sweep_dir = tmp_path / "pre"
    jobs = dict(line.split(" ", 1) for line in (sweep_dir / "submitit_jobs.txt").read_text().splitlines())
    task = jobs["train"]
    ckpts = sweep_dir / "runs" / "lr=0.0001" / "checkpoints"

    def log() -> str:
        return "".join(p.read_text() for p in sorted((sweep_dir / "submitit").rglob(f"{task}_0_log.*")))

    try:
        _until("first checkpoint", lambda: (ckpts / "step-000004" / "COMPLETE").exists())
        _run(["scancel", "--full", "--signal=TERM", task], slurm_env)
        _until("resumed", lambda: "resumed from" in log())
        _until("its rank", lambda: _rank(sweep_dir)).kill()
        rows = _wait_done([task.split("_")[0], jobs["report"]], slurm_env, timeout=240, expect=2)
    finally:
        subprocess.run(["scancel", *[j for v in jobs.values() for j in v.split()]], env=slurm_env)
    assert rows[task]["State"] == "COMPLETED", rows
    states = _run(["sacct", "-X", "-n", "-P", "-j", task, "-D", "-o", "State"], slurm_env).split()
    assert states == ["REQUEUED", "REQUEUED", "COMPLETED"], states
    resumed = [int(s) for s in re.findall(r"resumed from \S+ at step (\d+)", log())]
    assert len(resumed) == 2 and 4 <= resumed[0] <= resumed[1] < 60, log()[-3000:]
    assert (ckpts / f"step-{resumed[0]:06d}" / "COMPLETE").exists()
    assert (ckpts / "step-000060" / "COMPLETE").exists()
    assert (ckpts.parent / "train.retries").read_text().startswith("retry 1/2: killed by SIGKILL (exit 137)")


def _one_point_grid(tmp_path: Path, name: str, **keys) -> Path:
    grid = tmp_path / f"{name}.yaml"
    grid.write_text(yaml.safe_dump({"name": name, "output_dir": str(tmp_path), "axes": {"optim.lr": [1e-4]}, **keys}))
    return grid


def _jobs_file(sweep_dir: Path) -> Path:
    """The sweep's job ids: jobs.txt (slurm/sweep.sh) or submitit_jobs.txt (launch/sweep.py)."""
    return sweep_dir / "jobs.txt" if (sweep_dir / "jobs.txt").is_file() else sweep_dir / "submitit_jobs.txt"


def _jobs(sweep_dir: Path) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in _jobs_file(sweep_dir).read_text().splitlines())


def _cancel(sweep_dir: Path, env: dict[str, str]) -> None:
    """Cancel whatever of the sweep is still queued (a failed test leaves nothing behind)."""
    if _jobs_file(sweep_dir).is_file():
        ids = [j for v in _jobs(sweep_dir).values() for j in v.split()]
        subprocess.run(["scancel", *ids], env=env, capture_output=True)


SUBMIT = {"sbatch": ["bash", "slurm/sweep.sh"], "submitit": [sys.executable, "launch/sweep.py", "--executor", "slurm"]}
"""The two routes of a sweep onto the cluster."""


def _until(what: str, check, timeout: float = 180, every: float = 0.2):
    """Poll `check()` until it returns something true; return it."""
    end = time.time() + timeout
    while not (got := check()):
        assert time.time() < end, f"{what}: not after {timeout} s"
        time.sleep(every)
    return got


def _status(sweep_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch/sweep.py", "--status", str(sweep_dir)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def _status_if(sweep_dir: Path, env: dict[str, str], pattern: str) -> str:
    """--status's output if it matches `pattern`, else ""."""
    out = _status(sweep_dir, env).stdout
    return out if re.search(pattern, out) else ""


def _rank(sweep_dir: Path):
    """The newest training process (rank 0) of the sweep's only run, not its wrapper shell."""
    import psutil

    ranks = []
    for proc in psutil.process_iter(["cmdline", "create_time"]):
        cmd = proc.info["cmdline"] or []
        if len(cmd) > 1 and cmd[1].endswith("launch/unlearn.py") and any(str(sweep_dir) in word for word in cmd):
            ranks.append(proc)
    return max(ranks, key=lambda proc: proc.info["create_time"], default=None)


@pytest.mark.parametrize("route", ["sbatch", "submitit"])
def test_a_run_preempted_by_the_scheduler_requeues_and_resumes(slurm_env, demo_dir, tmp_path, route):
    """Preemption by slurmctld itself (slurm/local-cluster.sh: PreemptType=preempt/partition_prio,
    PreemptMode=REQUEUE, GraceTime=30 on debug): a job in the higher-tier partition "urgent" that needs the
    node of a training task. SLURM signals the task's step (SIGTERM), the run saves at its next step and
    exits 3, and the task requeues itself; SLURM would not: a preempted job that ends within its grace
    time ends COMPLETED, however it ended. The run resumes from its checkpoint once the node is free,
    with no retry counted, and completes."""
    grid = _one_point_grid(tmp_path, "pre", eval={"enabled": False},
                           base={"train": {"max_steps": 40, "save_every_n_steps": 4}})
    _run([*SUBMIT[route], str(grid), *TINY, *_demo_overrides(demo_dir)], slurm_env)
    sweep_dir = tmp_path / "pre"
    jobs = _jobs(sweep_dir)
    task = f"{jobs['train']}_0" if route == "sbatch" else jobs["train"]
    run = sweep_dir / "runs" / "lr=0.0001"
    urgent = ""
    try:
        _until("step-4 checkpoint", lambda: (run / "checkpoints" / "step-000004" / "COMPLETE").exists())
        node = _run(["squeue", "-h", "-j", task, "-o", "%N"], slurm_env).strip()
        urgent = _run(["sbatch", "--parsable", "-p", "urgent", "-w", node, "--exclusive", "--output=/dev/null",
                       "--wrap", "sleep 2"], slurm_env).strip()
        rows = _wait_done([task.split("_")[0], jobs["report"], urgent], slurm_env, timeout=240, expect=3)
    finally:
        _cancel(sweep_dir, slurm_env)
    logs = "".join(p.read_text() for p in sorted(sweep_dir.rglob("*")) if p.is_file() and p.suffix in (".out", ".err"))
    assert rows[task]["State"] == "COMPLETED" and rows[urgent]["State"] == "COMPLETED", (rows, logs[-3000:])
    states = _run(["sacct", "-X", "-n", "-P", "-j", task, "-D", "-o", "State"], slurm_env).split()
    assert states == ["REQUEUED", "COMPLETED"], (states, logs[-3000:])
    saved = [int(s) for s in re.findall(r"preempted at step (\d+): checkpoint saved", logs)]
    resumed = [int(s) for s in re.findall(r"resumed from \S+ at step (\d+)", logs)]
    assert len(saved) == 1 and resumed == saved and 4 <= saved[0] < 40, logs[-3000:]
    assert _t(rows[urgent]["Start"]) <= _t(rows[task]["Start"])  # the requeued task waited for the node
    assert (run / "train.exit").read_text() == "0\n" and not (run / "train.retries").exists()
    assert (run / "checkpoints" / "step-000040" / "COMPLETE").is_file()


def test_sbatch_sweep_survives_stops_crashes_and_a_lost_node(slurm_env, demo_dir, tmp_path):
    """One run, max_retries 1, checkpoints every 20 of 80 steps, four faults in a row:
    1. `scancel --full --signal=TERM` (the batch shell too, as some sites preempt): the run saves, the
       task requeues itself (--status: queued, PENDING, requeued before) and resumes; no retry counted;
    2. its rank SIGKILLed (as by the OOM killer): retried 1/1 from its newest checkpoint;
    3. its node down (scontrol): SLURM requeues it (NODE_FAIL), not a retry; it resumes elsewhere;
    4. SIGKILLed again: no retry left, lost for good. --status and the report say FAILED with the
       reason and exit non-zero; the eval jobs (afterany) evaluate every checkpoint the run completed
       and skip the rest;
    5. but step 20's eval, stopped while it runs (scancel --full), requeues itself (1 of max_retries 1);
       stopped again, it gives up: FAILED, eval.error and --status say why and which suite is missing;
    6. `scontrol requeue` of it: its rerun does that suite, and eval.error is gone.
    Before: 1 failed the task (0:15) without a save, 2 failed it for good, and the evals were cancelled;
    5 failed the eval at its first stop ("stopped by a signal"), with no requeue."""
    grid = _one_point_grid(tmp_path, "faults", max_retries=1,
                           base={"train": {"max_steps": 80, "save_every_n_steps": 20}})
    _run(["bash", "slurm/sweep.sh", str(grid), *TINY, EVAL, *_demo_overrides(demo_dir)], slurm_env)
    sweep_dir = tmp_path / "faults"
    try:
        jobs = _jobs(sweep_dir)
        task, eval_ids = f"{jobs['train']}_0", jobs["eval"].split()
        log = sweep_dir / "logs" / f"train-{task}.out"
        run = sweep_dir / "runs" / "lr=0.0001"
        resumed = lambda n: log.exists() and len(re.findall(r"resumed from ", log.read_text())) >= n  # noqa: E731
        _until("step-20 checkpoint", lambda: (run / "checkpoints" / "step-000020" / "COMPLETE").exists())
        _run(["scancel", "--full", "--signal=TERM", task], slurm_env)  # 1
        queued = _until("--status: queued again",
                        lambda: _status_if(sweep_dir, slurm_env, r"queued .*PENDING.*requeued 1x \(REQUEUED\)"))
        assert "retried" not in queued and "lost" not in queued, queued
        _until("resumed after the stop", lambda: resumed(1))
        saved = int(re.findall(r"preempted at step (\d+): checkpoint saved", log.read_text())[0])
        assert f"resumed from {run / 'checkpoints' / f'step-{saved:06d}'} at step {saved}" in log.read_text()
        _until("its rank", lambda: _rank(sweep_dir)).kill()  # 2
        _until("retried", lambda: resumed(2))
        node = _run(["squeue", "-h", "-j", task, "-o", "%N"], slurm_env).strip()
        try:  # 3
            _run(["scontrol", "update", f"nodename={node}", "state=down", "reason=unlearn-test"], slurm_env)
            # it answers at once (ReturnToService=2): drained, it gets no job while the killed one's processes end
            _run(["scontrol", "update", f"nodename={node}", "state=drain", "reason=unlearn-test"], slurm_env)
            pending = _until("--status after the node went down", lambda: _status_if(sweep_dir, slurm_env, "NODE_FAIL"),
                             every=0.5)
            assert re.search(r"(queued|running) .*job \S+ (PENDING|RUNNING).*NODE_FAIL.*retried 1/1", pending), pending
            _until("restarted elsewhere", lambda: resumed(3), timeout=240)
        finally:
            _run(["scontrol", "update", f"nodename={node}", "state=resume"], slurm_env)
        _until("its rank", lambda: _rank(sweep_dir)).kill()  # 4
        step20 = (eval_ids[0], run / "checkpoints" / "step-000020")
        _stop_in_copyright([(*step20, STOPS[1])], slurm_env)  # 5: requeued (1 of max_retries 1) ...
        _stop_in_copyright([(*step20, STOPS[2])], slurm_env, restart=1)  # ... stopped again: given up
        rows = _wait_done([jobs["train"], *eval_ids, jobs["report"]], slurm_env, timeout=240, expect=2 + len(eval_ids))
        assert rows[task]["State"] == "FAILED", rows
        states = _run(["sacct", "-X", "-n", "-P", "-j", task, "-D", "-o", "State"], slurm_env).split()
        assert states == ["REQUEUED", "REQUEUED", "NODE_FAIL", "FAILED"], states
        assert (run / "train.retries").read_text().count("\n") == 1
        assert (run / "train.retries").read_text().startswith("retry 1/1: killed by SIGKILL (exit 137)")
        status = _status(sweep_dir, slurm_env)
        assert status.returncode == 1, status.stdout
        assert re.search(r"lr=0.0001 +FAILED .*NODE_FAIL.*retried 1/1, killed by SIGKILL \(exit 137\)", status.stdout)
        assert "1 run(s) lost for good" in status.stdout and "pending" not in status.stdout
        gave_up = (step20[1] / "eval.error").read_text()
        assert gave_up.startswith(f"stopped 2 time(s) by a signal (preemption, time limit or scancel), the last in job "
                                  f"{step20[0]} (exit 3); gave up after 1 requeue(s) (max_retries); not run: copyright")
        assert f"lr=0.0001 step 20: {gave_up.strip()}" in status.stdout, status.stdout
        report = (sweep_dir / "report.csv").read_text()
        assert ",FAILED," in report and "killed by SIGKILL" in report
        assert "1 run(s) lost for good" in next((sweep_dir / "logs").glob("report-*.out")).read_text()
        assert rows[jobs["report"]]["State"] == "FAILED"  # the report job exits non-zero too
        complete = {int(p.parent.name[5:]) for p in (run / "checkpoints").glob("step-*/COMPLETE")}
        assert 20 in complete and 80 not in complete
        states = _run(["sacct", "-X", "-n", "-P", "-j", step20[0], "-D", "-o", "State"], slurm_env).split()
        assert states == ["REQUEUED", "FAILED"], states
        for job, step in zip(eval_ids, (20, 40, 60, 80)):  # every eval ran once the task was over for good
            assert _t(rows[job]["Start"]) >= _t(rows[task]["End"]), rows[job]
            if step != 20:
                assert rows[job]["State"] == "COMPLETED", rows[job]
                assert runs.evaluated(run / "checkpoints" / f"step-{step:06d}") == (step in complete), (step, complete)
        _run(["scontrol", "requeue", step20[0]], slurm_env)  # 6: the user's retry: copyright only, eval.error gone
        _until("step 20 evaluated", lambda: runs.evaluated(step20[1]), timeout=120)  # then the job ends
        _until("its rerun COMPLETED", lambda: _sacct([step20[0]], slurm_env)[step20[0]]["State"] == "COMPLETED",
               timeout=60, every=0.5)
        assert not (step20[1] / "eval.error").exists()
        rerun = re.split(r"^eval job ", _eval_log(*step20).read_text(), flags=re.M)[3]
        assert "copyright suite ..." in rerun and "utility suite" not in rerun, rerun
        status = _status(sweep_dir, slurm_env)
        assert "failed eval" not in status.stdout and status.returncode == 1, status.stdout
    finally:
        _cancel(sweep_dir, slurm_env)


def _halving_grid(tmp_path: Path, name: str, max_steps: int, every: int) -> Path:
    """configs/sweeps/demo_halving.yaml scaled down here only: 4 points (2 lr x 2 losses), local profile."""
    doc = yaml.safe_load((ROOT / "configs/sweeps/demo_halving.yaml").read_text())
    doc.update(name=name, output_dir=str(tmp_path), profile="slurm/profiles/local.yaml",
               axes={"optim.lr": [5e-5, 2e-4], "method.forget_loss": ["ga", "npo"]})
    doc["base"]["train"].update(max_steps=max_steps, save_every_n_steps=every)
    doc["eval"]["args"][3] = "2"  # --limit
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _check_halving(sweep_dir: Path, env: dict[str, str]) -> dict:
    """The cuts are the worst half by the grid's score, computed here from the eval files; round 2 ranks
    only round 1's survivors; every stopped run has its STOP file and ended at its last checkpoint; the
    status shows who stopped and why. Returns halving.json."""
    grid = yaml.safe_load((sweep_dir / "sweep.yaml").read_text())
    weights, every = grid["select"]["weights"], grid["base"]["train"]["save_every_n_steps"]
    names = (sweep_dir / "tasks.txt").read_text().split()
    record = json.loads((sweep_dir / "halving.json").read_text())
    assert [r["round"] for r in record["rounds"]] == [1, 2]

    def score(name: str, step: int) -> float:
        scalars = json.loads((sweep_dir / "runs" / name / "checkpoints" / f"step-{step:06d}" / "eval.json")
                             .read_text())["scalars"]
        return sum(w * scalars[f"eval/{k}"] for k, w in weights.items())

    alive = names
    for r, keep in zip(record["rounds"], (2, 1)):
        by_score = sorted(alive, key=lambda n: -score(n, r["step"]))
        assert r["step"] == r["round"] * every and [row["run"] for row in r["ranked"]] == by_score
        assert [e["run"] for e in r["stopped"]] == by_score[keep:]
        alive = by_score[:keep]
    stopped = [e["run"] for r in record["rounds"] for e in r["stopped"]]
    assert sorted(p.parent.name for p in (sweep_dir / "runs").glob("*/STOP")) == sorted(stopped)
    for name in names:
        assert (sweep_dir / "runs" / name / "train.exit").read_text().strip() == "0"
    status = _run([sys.executable, "launch/sweep.py", "--status", str(sweep_dir)], env)
    assert status.count("STOPPED r1") == 2 and status.count("STOPPED r2") == 1, status
    assert "below the cut" in status and "round 1 (step" in status
    return record


def _no_jobs_left(ids: list[str], env: dict[str, str]) -> None:
    """No job of the sweep left in the queue (a job whose result submitit already read may take a
    few seconds to leave it; a held or pending one never would)."""
    end = time.time() + 30
    while queued := _run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T"], env).strip():
        assert time.time() < end, f"jobs of the sweep still queued: {queued}"
        time.sleep(1)


def _hold_until_round_1(sweep_dir: Path, names: list[str], array: str, step1_evals: list[str],
                        env: dict[str, str], timeout: float = 300) -> None:
    """Suspend each training task once its step-100 checkpoint is complete and its training task has
    released that eval (held evals are released by the task itself, so it must not be suspended
    before), then resume them all once halving.json records round 1."""
    held, end = set(), time.time() + timeout
    while len(held) < len(names):
        for i, name in enumerate(names):
            if i in held or not (sweep_dir / "runs" / name / "checkpoints" / "step-000100" / "COMPLETE").exists():
                continue
            reason = subprocess.run(["squeue", "-h", "-j", step1_evals[i], "-o", "%r"], env=env,
                                    capture_output=True, text=True).stdout.strip()  # "" once it left the queue
            if not reason.startswith("JobHeld"):
                _run(["scontrol", "suspend", f"{array}_{i}"], env)
                held.add(i)
        assert time.time() < end, f"step-100 checkpoints or eval releases missing after {timeout} s: {held}"
        time.sleep(0.5)
    record = sweep_dir / "halving.json"
    while not (record.exists() and json.loads(record.read_text())["rounds"]):
        assert time.time() < end, f"round 1 not decided after {timeout} s"
        time.sleep(1)
    for i in held:
        _run(["scontrol", "resume", f"{array}_{i}"], env)


def test_sbatch_halving_stops_the_worst_half_each_round(slurm_env, demo_dir, tmp_path):
    """4 points, rounds at steps 100, 200, 300: the round-1 losers are told to stop while they train,
    save a final checkpoint, and their eval jobs for steps never reached end without evaluating.

    Whether a loser is still training when its round is decided is a race between the evals (tens of
    seconds) and 200 more steps, which a faster step can lose. So the test holds each run with SLURM
    (`scontrol suspend`) once its step-100 eval is released, until round 1 is decided, then resumes it:
    the outcome no longer depends on step speed, and runs survive a suspend/resume on the way."""
    grid = _halving_grid(tmp_path, "hv", max_steps=300, every=100)
    _run(["bash", "slurm/sweep.sh", str(grid), *_demo_overrides(demo_dir)], slurm_env)
    sweep_dir = tmp_path / "hv"
    jobs = dict(line.split(" ", 1) for line in (sweep_dir / "jobs.txt").read_text().splitlines())
    array, eval_ids, report = jobs["train"], jobs["eval"].split(), jobs["report"]
    names = (sweep_dir / "tasks.txt").read_text().split()
    _hold_until_round_1(sweep_dir, names, array, eval_ids[::len(eval_ids) // len(names)], slurm_env)  # run-major
    rows = _wait_done([array, *eval_ids, report], slurm_env, timeout=600, expect=4 + len(eval_ids) + 1)
    assert all(r["State"] == "COMPLETED" for r in rows.values()), rows
    _no_jobs_left([array, *eval_ids, report], slurm_env)
    record = _check_halving(sweep_dir, slurm_env)
    first = [e["run"] for e in record["rounds"][0]["stopped"]]
    for name in first:
        run = sweep_dir / "runs" / name
        last = max(int(p.name[5:]) for p in (run / "checkpoints").glob("step-*") if (p / "COMPLETE").exists())
        assert 100 < last < 300, (name, last)  # stopped mid-run, with a final checkpoint
        log = (sweep_dir / "logs" / f"train-{array}_{names.index(name)}.out").read_text()
        assert f"stopped early at step {last}: {run / 'STOP'}: halving round 1" in log
        assert not (run / "checkpoints" / "step-000300").exists()
    skipped = [p.read_text() for p in (sweep_dir / "logs").glob("eval-*-step300-*.out") if "skipped" in p.read_text()]
    assert len(skipped) == 2, skipped  # the round-1 losers' step-300 evals
    steps_run = sum(max(int(p.name[5:]) for p in (sweep_dir / "runs" / n / "checkpoints").glob("step-*"))
                    for n in names)
    assert steps_run < 4 * 300


@pytest.mark.parametrize("executor", ["slurm", "local"])
def test_submitit_halving(slurm_env, demo_dir, tmp_path, executor):
    """The same cuts through launch/sweep.py, on SLURM and with the local executor (tiny rounds: the
    decisions, not the timing, are checked here)."""
    grid = _halving_grid(tmp_path, f"hv-{executor}", max_steps=6, every=2)
    _run([sys.executable, "launch/sweep.py", str(grid), "--executor", executor, "--wait",
          *_demo_overrides(demo_dir)], slurm_env, timeout_s=900)
    sweep_dir = tmp_path / f"hv-{executor}"
    _check_halving(sweep_dir, slurm_env)
    assert (sweep_dir / "report.csv").is_file() and (sweep_dir / "best.json").is_file()
    if executor == "slurm":
        jobs = dict(line.split(" ", 1) for line in (sweep_dir / "submitit_jobs.txt").read_text().splitlines())
        _no_jobs_left([j for v in jobs.values() for j in v.split()], slurm_env)


def test_runs_per_gpu_trains_two_grid_points_in_one_allocation(slurm_env, demo_dir, tmp_path):
    """slurm/profiles/local_shared.yaml (runs_per_gpu: 2): a 2-point grid is one array task whose two
    runs train at once, one job step of two single-rank tasks, and each stays under the profile's
    footprint. One `scancel --full --signal=TERM` to the task reaches both runs: each saves and exits 3
    (recorded per run), the task is requeued once, and each resumes from its own checkpoint."""
    grid = tmp_path / "two.yaml"
    grid.write_text(yaml.safe_dump({"name": "k2", "output_dir": str(tmp_path), "eval": {"enabled": False},
                                    "profile": "slurm/profiles/local_shared.yaml",
                                    "base": {"train": {"max_steps": 60, "save_every_n_steps": 4}},
                                    "axes": {"optim.lr": [1e-4, 5e-4]}}))
    _run(["bash", "slurm/sweep.sh", str(grid), *TINY, *_demo_overrides(demo_dir)], slurm_env)
    sweep_dir = tmp_path / "k2"
    names = ("lr=0.0001", "lr=0.0005")
    try:
        jobs = _jobs(sweep_dir)
        task = f"{jobs['train']}_0"  # the array has one task
        log = sweep_dir / "logs" / f"train-{task}.out"
        first = [sweep_dir / "runs" / name / "checkpoints" / "step-000004" / "COMPLETE" for name in names]
        _until("both runs' first checkpoint", lambda: all(path.exists() for path in first))
        _run(["scancel", "--full", "--signal=TERM", task], slurm_env)
        rows = _wait_done([jobs["train"], jobs["report"]], slurm_env, timeout=240, expect=2)
    finally:
        _cancel(sweep_dir, slurm_env)
    assert rows[task]["State"] == "COMPLETED", rows
    assert (sweep_dir / "tasks.txt").read_text() == "lr=0.0001 lr=0.0005\n"
    states = _run(["sacct", "-X", "-n", "-P", "-j", task, "-D", "-o", "State"], slurm_env).split()
    assert states == ["REQUEUED", "COMPLETED"], states  # requeued once for both runs
    steps = _run(["sacct", "-n", "-P", "-j", task, "-o", "JobID,NTasks"], slurm_env).split()
    ntasks = [s.split("|")[1] for s in steps if re.fullmatch(r"\d+_0\.\d+\|\d+", s)]
    assert ntasks and set(ntasks) == {"2"}, steps  # one job step of two tasks, one per run
    text = log.read_text()
    footprint = yaml.safe_load((ROOT / "slurm/profiles/local_shared.yaml").read_text())["footprint"]
    resumed = []
    for name in names:
        run = sweep_dir / "runs" / name
        assert f"requeued job {task} restart 0 (run {name}): the run saved after a stop" in text, text[-3000:]
        step = re.findall(rf"resumed from {re.escape(str(run / 'checkpoints'))}/step-(\d+) at step (\d+)", text)
        assert len(step) == 1 and step[0][0].lstrip("0") == step[0][1], text[-3000:]
        resumed.append(int(step[0][1]))
        assert (run / "train.exit").read_text() == "0\n" and not (run / "train.retries").exists()
        assert (run / "checkpoints" / "step-000060" / "COMPLETE").is_file()
        peak = json.loads((run / "footprint.json").read_text())["peak_gib"]
        assert 0.1 < peak <= footprint, (name, peak)
    # both were training when the stop came: each saved where it was and resumed from there
    saved = [int(s) for s in re.findall(r"preempted at step (\d+): checkpoint saved", text)]
    assert sorted(saved) == sorted(resumed) and all(4 <= s < 60 for s in saved), text[-3000:]
    assert text.count("step      1/60") == 2  # each run started from step 1 once: nothing trained twice
    status = _status(sweep_dir, slurm_env)
    assert status.returncode == 0 and status.stdout.count(" done ") == 2, status.stdout


def test_submitit_runs_per_gpu_trains_two_grid_points_in_one_job(slurm_env, demo_dir, tmp_path):
    """The submitit route with runs_per_gpu: 2 (slurm/profiles/local_shared.yaml): a 2-point grid is one
    array task whose TrainJob trains both runs at once. `scancel --full --signal=TERM` reaches both (the
    batch shell turns it into submitit's preemption signal): each saves, the job is requeued once,
    and each resumes from its own checkpoint and completes."""
    grid = tmp_path / "two.yaml"
    grid.write_text(yaml.safe_dump({"name": "sk2", "output_dir": str(tmp_path), "eval": {"enabled": False},
                                    "profile": "slurm/profiles/local_shared.yaml",
                                    "base": {"train": {"max_steps": 60, "save_every_n_steps": 4}},
                                    "axes": {"optim.lr": [1e-4, 5e-4]}}))
    _run([sys.executable, "launch/sweep.py", str(grid), *TINY, *_demo_overrides(demo_dir)], slurm_env)
    sweep_dir = tmp_path / "sk2"
    jobs = dict(line.split(" ", 1) for line in (sweep_dir / "submitit_jobs.txt").read_text().splitlines())
    (task,) = jobs["train"].split()  # one array task for both points
    names = ("lr=0.0001", "lr=0.0005")
    runs = [sweep_dir / "runs" / name for name in names]

    def log() -> str:
        return "".join(p.read_text() for p in sorted((sweep_dir / "submitit").rglob(f"{task}_0_log.*")))

    try:
        _until("both runs' first checkpoint",
               lambda: all((run / "checkpoints" / "step-000004" / "COMPLETE").exists() for run in runs))
        _run(["scancel", "--full", "--signal=TERM", task], slurm_env)
        rows = _wait_done([task.split("_")[0], jobs["report"]], slurm_env, timeout=240, expect=2)
    finally:
        subprocess.run(["scancel", *[j for v in jobs.values() for j in v.split()]], env=slurm_env)
    assert rows[task]["State"] == "COMPLETED", rows
    states = _run(["sacct", "-X", "-n", "-P", "-j", task, "-D", "-o", "State"], slurm_env).split()
    assert states == ["REQUEUED", "COMPLETED"], states  # requeued once for both runs
    text = log()
    for run in runs:
        resumed = re.findall(rf"resumed from {re.escape(str(run / 'checkpoints'))}/step-(\d+) at step (\d+)", text)
        assert len(resumed) == 1 and 4 <= int(resumed[0][1]) < 60, text[-3000:]
        assert (run / "train.exit").read_text() == "0\n" and not (run / "train.retries").exists()
        assert (run / "checkpoints" / "step-000060" / "COMPLETE").is_file()
        assert (run / "footprint.json").is_file()
    assert text.count("step      1/60") == 2, text[-3000:]  # each run started from step 1 once
    status = _status(sweep_dir, slurm_env)
    assert status.returncode == 0 and status.stdout.count(" done ") == 2, status.stdout
