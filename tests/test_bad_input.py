"""Bad input: each case must end with exit status 2 and one `error: ...` line naming the problem
and what was expected, no traceback, and no run folder created or changed.

One case per kind of failure point (config parse, DeepSpeed JSON, config checks, model, data, run
folder, eval) runs as a real `python launch/unlearn.py` (or evaluate.py) process, concurrently in a
module fixture; the other cases call the same entry point, `train_main`, in this process (the
CPU budget: each process spends seconds importing torch)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import ROOT, _free_port, child_env
from unlearn import runs
from unlearn.errors import UserError
from unlearn.train.main import train_main

PYTHON = sys.executable
ZERO2 = str(ROOT / "ds_configs" / "zero2.json")
ZERO3 = str(ROOT / "ds_configs" / "zero3.json")


def _files(root: Path, demo: Path) -> dict[str, str]:
    """Bad data and DeepSpeed files for the cases below (paths as strings)."""
    root.mkdir(parents=True, exist_ok=True)
    write = {
        "malformed.json": '{"zero_optimization": {"stage": 2,}}',
        "auto.json": json.dumps({"zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"}}),
        "batch.json": json.dumps({"zero_optimization": {"stage": 2}, "train_batch_size": 16}),
        "stage0.json": json.dumps({"zero_optimization": {"stage": 0}}),
        "columns.jsonl": json.dumps({"foo": "a", "bar": "b"}) + "\n",
        "empty.txt": "",
        "all_safe.jsonl": "".join(json.dumps({"prompt": f"q{i}", "response_0": "no", "response_1": "no way",
                                              "is_response_0_safe": True, "is_response_1_safe": True}) + "\n"
                                  for i in range(3)),
        "no_answer.jsonl": "".join(json.dumps(r) + "\n" for r in ({"question": "q1", "answer": "a1"},
                                                                     {"question": "q2"}, {"question": "q3", "answer": "a3"})),
        "a_file": "not a folder\n",
        "bad.yaml": "train:\n  max_steps: [1, 2\n",
    }
    for name, text in write.items():
        (root / name).write_text(text)
    latin1 = {"latin1.txt": "Caf\u00e9 society\n".encode("latin-1"),
              "latin1.jsonl": json.dumps({"text": "ok"}).encode() + b'\n{"text": "Caf\xe9"}\n'}
    for name, raw in latin1.items():
        (root / name).write_bytes(raw)
    out = {name.replace(".", "_"): str(root / name) for name in [*write, *latin1]}
    out["existing_run"] = str(root / "runs" / "taken")
    (root / "runs" / "taken").mkdir(parents=True)
    (root / "runs" / "taken" / "config.yaml").write_text("original\n")
    half = root / "runs" / "taken" / "checkpoints" / "step-000002"
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")  # a save killed before COMPLETE
    out["half_checkpoint"] = str(half)
    return out


def _cases(f: dict[str, str], demo: Path, out: str) -> dict[str, tuple[list[str], list[str]]]:
    """case -> (argv after the script, fragments the error line must contain)."""
    ok = [f"model.name_or_path={demo / 'init'}", f"data.forget={demo / 'forget.txt'}",
          f"data.retain={demo / 'retain.txt'}", f"run.output_dir={out}", "train.max_steps=2"]
    z2, z3 = ["--ds_config", ZERO2], ["--ds_config", ZERO3]
    return {
        "unknown_key": (z2 + ok + ["train.max_step=3"], ["unknown config key 'train.max_step'",
                                                         "did you mean 'train.max_steps'"]),
        "ds_override_typo": (z2 + ok + ["ds.zero_optimisation.stage=3"],
                             ["unknown key 'ds.zero_optimisation'", "did you mean 'ds.zero_optimization'"]),
        "unknown_section": (z2 + ok + ["trian.max_steps=3"], ["unknown config key 'trian'", "did you mean 'train'"]),
        "wrong_type": (z2 + ok + ["train.max_steps=lots"], ["'train.max_steps' is 'lots'; expected an integer"]),
        "bad_yaml": (z2 + ok + ["--config", f["bad_yaml"]], ["is not valid YAML", "line"]),
        "missing_json": (["--ds_config", "no/such.json"] + ok, ["'no/such.json' not found", "expected a JSON file"]),
        "malformed_json": (["--ds_config", f["malformed_json"]] + ok, ["is not valid JSON", "line 1"]),
        "auto_json": (["--ds_config", f["auto_json"]] + ok, ['"auto" at \'zero_optimization.reduce_bucket_size\'',
                                                            "expected a concrete value"]),
        "batch_json": (["--ds_config", f["batch_json"]] + ok, ["sets 'train_batch_size'", "train.global_batch_size"]),
        "stage0_json": (["--ds_config", f["stage0_json"]] + ok, ["zero_optimization.stage=0", "expected 1, 2 or 3"]),
        "zero3_8bit": (z3 + ok + ["model.lora=true", "model.load_in_8bit=true"], ["cannot be sharded by ZeRO-3",
                                                                                  "expected a ZeRO stage"]),
        "8bit_no_lora": (z2 + ok + ["model.load_in_8bit=true"], ["needs model.lora=true"]),
        "unknown_method": (z2 + ok + ["method.forget_loss=gradascent"], ["unknown method.forget_loss 'gradascent'",
                                                                        "expected one of: ga, npo"]),
        "hub_id_offline": (z2 + ok + ["model.name_or_path=nobody-here/no-such-model-7b"],
                           ["'nobody-here/no-such-model-7b' could not be loaded", "expected a local folder or a hub id"]),
        "mistyped_local": (z2 + ok + [f"model.name_or_path={demo}/stage1-exprt"],
                           [f"'{demo}/stage1-exprt' does not exist (no such folder; '{demo}' exists)",
                            "expected a local Hugging Face folder"]),
        "model_folder": (z2 + ok + [f"model.name_or_path={demo}"], [f"'{demo}' could not be loaded",
                                                                   "expected a Hugging Face model folder"]),
        "columns": (z2 + ok + [f"data.forget={f['columns_jsonl']}"], ["has columns ['bar', 'foo']", "expected 'text'"]),
        "empty_forget": (z2 + ok + [f"data.forget={f['empty_txt']}"], ["yields no trainable samples", "expected"]),
        "row_without_answer": (z2 + ok + [f"data.forget={f['no_answer_jsonl']}"],
                               [f"data '{f['no_answer_jsonl']}' line 2 has no 'answer'", "data.skip_bad_rows=true"]),
        "latin1_txt": (z2 + ok + [f"data.forget={f['latin1_txt']}"],
                       [f"'{f['latin1_txt']}' is not UTF-8 text: byte 0xe9 at offset 3 (line 1)"]),
        "latin1_jsonl": (z2 + ok + [f"data.retain={f['latin1_jsonl']}"],
                         [f"'{f['latin1_jsonl']}' is not UTF-8 text: byte 0xe9 at offset 28 (line 2)"]),
        "no_unsafe": (z2 + ok + [f"data.forget={f['all_safe_jsonl']}", "data.forget_format=pku"],
                      ["has no unsafe responses", "expected some unsafe answers"]),
        "too_long": (z2 + ok + ["data.max_length=100000"], ["data.max_length=100000 exceeds",
                                                            "max_position_embeddings"]),
        "not_writable": (z2 + ok + [f"run.output_dir={f['a_file']}/runs"], ["is not a writable folder",
                                                                          "expected a folder"]),
        "proc_not_writable": (z2 + ok + ["run.output_dir=/proc/runs"], ["'/proc/runs' is not a writable folder"]),
        "existing_run": (z2 + ok + [f"run.output_dir={Path(f['existing_run']).parent}", "run.name=taken"],
                         ["'" + f["existing_run"] + "' already exists", "--resume", "--overwrite"]),
        "resume_and_overwrite": (z2 + ok + ["run.name=x", "--resume", "--overwrite"], ["contradict"]),
        "resume_unnamed": (z2 + ok + ["--resume"], ["--resume needs run.name"]),
        "pass_cost": (z2 + ok + ["data.mismatch_pass_cost=-1"], ["data.mismatch_pass_cost=-1", "expected >= 0"]),
        "optimizer": (z2 + ok + ["optim.name=adam8bit"], ["optim.name 'adam8bit' is unknown",
                                                          "expected one of: adamw, adamw8bit"]),
        "offload_8bit_adam": (["--ds_config", str(ROOT / "ds_configs" / "zero3_offload.json")] + ok
                              + ["optim.name=adamw8bit"], ["adamw8bit with zero_optimization.offload_optimizer",
                                                           "expected optim.name=adamw"]),
        "compile_zero3": (z3 + ok + ["train.compile=true"], ["train.compile=true with ZeRO stage 3",
                                                             "expected a ZeRO-0/1/2 ds_config"]),
        "compile_rmu": (z2 + ok + ["train.compile=true", "method.forget_loss=rmu", "method.retain_loss=rmu"],
                        ["train.compile=true with an RMU term", "expected train.compile=false"]),
        "batch_split": (z2 + ok + ["train.global_batch_size=6", "train.micro_batch_size=4"],
                        ["global_batch_size=6 is not a multiple", "micro_batch_size x world size"]),
    }


CASES = list(_cases(defaultdict(str), Path("demo"), "out"))
SUBPROCESS = ("unknown_key", "missing_json", "zero3_8bit", "columns", "existing_run")
"""Cases run as real processes (one per failure point); the rest run in-process."""


@pytest.fixture(scope="module")
def setup(demo_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    return {"files": _files(root / "files", demo_dir), "out": root / "out", "demo": demo_dir, "root": root}


@pytest.fixture(scope="module")
def processes(setup):
    """Run the SUBPROCESS cases at once (3 processes at a time); case -> (returncode, stdout, stderr)."""
    argvs = _cases(setup["files"], setup["demo"], str(setup["out"]))
    cases = {name: [PYTHON, str(ROOT / "launch" / "unlearn.py"), *argvs[name][0]] for name in SUBPROCESS}
    cases["eval_incomplete"] = [PYTHON, str(ROOT / "launch" / "evaluate.py"), setup["files"]["half_checkpoint"]]
    env = child_env({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    pending, running, done = list(cases.items()), {}, {}
    while pending or running:
        while pending and len(running) < 3:
            name, cmd = pending.pop(0)
            running[name] = subprocess.Popen(cmd, cwd=setup["root"], env=env, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True)
        for name, proc in list(running.items()):
            if proc.poll() is not None:
                stdout, stderr = proc.communicate()
                done[name] = (proc.returncode, stdout, stderr)
                del running[name]
        time.sleep(0.05)
    return done


def _check(result: tuple[int, str, str], name: str, fragments: list[str]) -> str:
    code, stdout, stderr = result
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2, f"{name}: exit {code}\n{stderr[-3000:]}"
    assert "Traceback" not in stderr + stdout, stderr[-3000:]
    assert len(errors) == 1, stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], f"{name}: {fragment!r} not in {errors[0]!r}"
    assert "expected" in errors[0] or "did you mean" in errors[0] or "pass --resume" in errors[0]
    return errors[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", SUBPROCESS)
def test_bad_input_process_exits_2_with_one_line(processes, setup, name):
    _check(processes[name], name, _cases(setup["files"], setup["demo"], str(setup["out"]))[name][1])


@pytest.mark.parametrize("name", [n for n in CASES if n not in SUBPROCESS])
def test_bad_input_exits_2_with_one_line(setup, name, capsys):
    argv, fragments = _cases(setup["files"], setup["demo"], str(setup["out"]))[name]
    with pytest.raises(SystemExit) as exit_info:
        train_main("test", argv)
    out = capsys.readouterr()
    _check((exit_info.value.code, out.out, out.err), name, fragments)


@pytest.mark.slow
def test_eval_refuses_a_checkpoint_without_complete(processes):
    _check(processes["eval_incomplete"], "eval_incomplete",
           ["has no COMPLETE marker", "expected a completely written checkpoint"])


def test_nothing_was_created_or_overwritten(setup, processes):
    # runs last in this module: every case above failed before a run folder was made
    out = setup["out"]
    assert not out.exists() or list(out.iterdir()) == []  # output_dir itself may have been created
    taken = Path(setup["files"]["existing_run"])
    assert (taken / "config.yaml").read_text() == "original\n"
    assert sorted(p.name for p in taken.rglob("*")) == ["checkpoints", "config.json", "config.yaml", "step-000002"]


def test_require_complete(tmp_path):
    half = tmp_path / "step-000001"
    with pytest.raises(UserError, match="not found"):
        runs.require_complete(half)
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"partial")
    with pytest.raises(UserError, match="no COMPLETE marker"):
        runs.require_complete(half)
    (half / "COMPLETE").write_text("1\n")
    runs.require_complete(half)


ONE_RANK_FAILS = """
import sys
sys.path.insert(0, {root!r})
from unlearn import distributed
from unlearn.train import guards
from unlearn.errors import guarded
from unlearn.errors import UserError

def job():
    guards.Preemption()  # as in train(): SIGTERM from the launcher only sets a flag
    env = distributed.init()
    if env.rank == 1:  # e.g. a checkpoint that lacks this rank's file
        raise UserError("rank 1 cannot go on; expected every rank to pass")
    distributed.barrier()  # rank 0 waits here for a rank that is gone

guarded(job)
"""


@pytest.mark.slow
@pytest.mark.multirank
def test_an_error_on_one_rank_does_not_hang_the_other(tmp_path):
    script = tmp_path / "one_rank_fails.py"
    script.write_text(ONE_RANK_FAILS.format(root=str(ROOT)))
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(_free_port()),
           str(script)]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, start_new_session=True,
                          env=child_env({"OMP_NUM_THREADS": "1"}))
    assert proc.returncode != 0
    assert "error: rank 1 cannot go on; expected every rank to pass" in proc.stderr
    assert time.time() - t0 < 90, "the launcher should end rank 0 (SIGTERM, SIGKILL after 30 s)"


@pytest.mark.multirank
def test_a_config_error_on_two_ranks_prints_one_line(tmp_path, demo_dir):
    """Both ranks find the same bad value before start-up; only rank 0 says so."""
    from tests.conftest import launch

    proc = launch("unlearn.py", ["--ds_config", str(ROOT / "ds_configs" / "zero2.json"), "--no_report",
                                 f"model.name_or_path={demo_dir / 'init'}", f"data.forget={demo_dir / 'forget.txt'}",
                                 f"data.retain={demo_dir / 'retain.txt'}", f"run.output_dir={tmp_path}",
                                 "optim.lr=-1"], nprocs=2, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if "error: " in line]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].endswith("error: optim.lr=-1.0; expected a positive learning rate (e.g. 2e-6)")
