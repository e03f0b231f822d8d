"""launch/bench.py in its smoke mode: every variant runs one step and the JSON is well formed.

A benchmark is not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, child_env

NUMERIC = ("step_s", "tokens_per_s", "cpu_step_s", "tokens_per_cpu_s", "tokens_per_step", "rss_peak_gib",
           "optimizer_state_gib")


def _bench(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launch" / "bench.py"), "--work-dir", str(tmp_path / "work"),
                           *args], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=child_env())


@pytest.mark.slow
def test_smoke_runs_every_variant_on_the_same_workload(tmp_path):
    from unlearn.bench import presets

    out = tmp_path / "bench.json"
    proc = _bench(["--smoke", "--max-length", "64", "--threads", "1", "--json", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert out.read_text().strip() in proc.stdout  # the same JSON is printed (DeepSpeed logs around it)
    rows = {r["variant"]: r for r in report["results"]}
    assert list(rows) == list(presets.VARIANTS)
    for name, row in rows.items():
        assert row["status"] == "ok", (name, row.get("error"))
        assert all(isinstance(row[k], float | int) and row[k] > 0 for k in NUMERIC), row
        assert len(row["repeats"]) == 1 and len(row["repeats"][0]["step_s_all"]) == 1
    # same samples for every variant: forget 2 + mismatch 2x5 + normal 2 sequences, reference on normal
    assert len({r["tokens_per_step"] for r in rows.values()}) == 1
    assert len({r["ref_tokens_per_step"] for r in rows.values()}) == 1
    assert rows["baseline"]["padded_tokens_per_step"] == 14 * 64         # padded to --max-length
    assert rows["baseline-dynpad"]["padded_tokens_per_step"] < 14 * 64
    assert rows["baseline"]["speedup_vs_baseline"] == pytest.approx(1.0)
    # AdamW holds two fp32 moments per parameter (8 bytes), the 8-bit one two uint8 moments + block scales
    state = {name: row["optimizer_state_gib"] * 2**30 / report["parameters"] for name, row in rows.items()}
    assert state["baseline"] == pytest.approx(8, rel=0.01) and state["ours-bf16"] == pytest.approx(8, rel=0.01)
    for name in ("ours-fp32-adam8bit", "ours-bf16-adam8bit", "ours-zero3-adam8bit"):
        assert 2 <= state[name] < 2.1, (name, state[name])
    assert state["ours-lora"] < 1                                         # adapters only
    assert report["isolated"] is False and report["parameters"] > 0
    assert set(report["padding"]) == {"forget", "retain"}
    assert all(0 <= p["grouped"] <= p["shuffled"] for p in report["padding"].values()), report["padding"]
    # one counted step per variant: operators and host-device syncs; our loop adds none to the
    # optimizer step's (ZeRO-1/2: the one read of the gradient norm; ZeRO-3: DeepSpeed's own)
    # (a compiled variant is not counted: torch.compile runs eagerly under the counting dispatch mode)
    assert all(row["host_cost"]["ops"] > 0 for name, row in rows.items() if not presets.variant(name).compile)
    assert [name for name, row in rows.items() if "host_cost" not in row] == ["ours-fp32-compile", "ours-bf16-compile"]
    for name in ("ours-fp32", "ours-bf16", "ours-lora", "ours-zero3"):
        cost = rows[name]["host_cost"]
        optimizer_step = cost["syncs_by_owner"].get("deepspeed", 0) + sum(
            n for site, n in cost["syncs_by_site"].items() if site.startswith("train/zero_step.py:"))
        assert cost["syncs"] == optimizer_step, (name, cost)
        assert (cost["syncs"] == 1) is (name != "ours-zero3"), (name, cost)
    # the table closes the output: its header, a row per variant, then its footnotes (padding, host cost, compile)
    lines = proc.stdout.splitlines()
    head = max(i for i, line in enumerate(lines) if line.split()[-2:] == ["ops/step", "syncs"])
    assert [line.split()[0] for line in lines[head + 1:head + 1 + len(rows)]] == list(rows)
    assert len(lines) - (head + 1 + len(rows)) == 3 and "compile" in lines[-1]


def test_preset_shapes_and_parameter_count(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from unlearn import demo
    from unlearn.bench import presets

    assert presets.shape("opt-125m") == {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                                         "ffn_dim": 3072, "vocab_size": 50272, "max_position_embeddings": 2048}
    tok_dir = tmp_path / "tok"
    demo.train_tokenizer(["a small text for a tokenizer"], tok_dir)
    folder = presets.build_model_dir("opt-1.3b", tmp_path / "m", tok_dir, scale_down=64)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert presets.parameter_count(folder) == sum(p.numel() for p in model.parameters())
    assert (folder / "tokenizer.json").is_file()
    # --keep-depth: the width scaled, the 24 layers kept (a CPU sees OPT-1.3b's operators per step)
    assert presets.shape("opt-1.3b", 64, keep_depth=True) == {**presets.shape("opt-1.3b", 64), "num_hidden_layers": 24}


def test_keep_depth_without_an_opt_preset_is_a_user_error(tmp_path):
    proc = _bench(["--keep-depth", "--variants", "ours-fp32"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --scale-down / --keep-depth apply to the OPT")


def test_unknown_variant_is_a_user_error(tmp_path):
    proc = _bench(["--variants", "baseline,ours-fp64"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: benchmark variant 'ours-fp64' is unknown")


def test_logits_of_the_answer_span_give_the_same_losses(demo_dir):
    """The loop asks the LM head only for positions from the one before the first answer token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unlearn import data, methods
    from unlearn.config import MethodConfig
    from unlearn.train import step as train

    tok = AutoTokenizer.from_pretrained(demo_dir / "init")
    policy = AutoModelForCausalLM.from_pretrained(demo_dir / "init").eval()
    ref = AutoModelForCausalLM.from_pretrained(demo_dir / "init").eval()
    with torch.no_grad():
        ref.lm_head.weight.mul_(1.1)  # a reference that differs from the policy
    template = "### Question: {prompt}\n ### Answer: {response}"
    batch = data.collate([data.qa_sample("How is bread made at home?", "Flour, water, time.", tok, template, 128),
                          data.qa_sample("Why?", "Because it rained all night long.", tok, template, 128)],
                         tok.pad_token_id)
    keep = train.logits_span(batch["labels"])
    first = int((batch["labels"] != data.IGNORE).any(0).int().argmax())
    assert keep == batch["labels"].size(1) - (first - 1) < batch["labels"].size(1)
    full = methods.Forward(train.forward_logits(policy, batch), batch["labels"], train.forward_logits(ref, batch))
    span = methods.Forward(train.forward_logits(policy, batch, keep), batch["labels"][:, -keep:],
                           train.forward_logits(ref, batch, keep))
    assert span.logits.shape[1] == keep
    for obj in (methods.FORGET["ga"], methods.FORGET["npo"], methods.FORGET["simnpo"], methods.RETAIN["kl"]):
        assert obj.fn(span, MethodConfig()).item() == pytest.approx(obj.fn(full, MethodConfig()).item(), rel=1e-5)
    text = torch.tensor([[5, 6, 7, 8]])
    assert train.logits_span(text) == 4  # plain text: every position is read


def test_speedups_are_same_round_ratios_and_spread_is_range_over_median():
    """Round 2 ran on a loaded machine (every variant slower): the paired ratio divides the load out."""
    from unlearn.bench import runner

    base = [{"status": "ok", "tokens_per_s": 100.0}, {"status": "ok", "tokens_per_s": 40.0}]
    ours = [{"status": "ok", "tokens_per_s": 210.0}, {"status": "ok", "tokens_per_s": 100.0}]
    assert runner._paired(ours, base, "tokens_per_s") == pytest.approx((2.1 + 2.5) / 2)  # not 155 / 70
    assert runner._paired(ours, [{"status": "failed"}] * 2, "tokens_per_s") is None
    assert runner._spread([1.0, 1.2, 0.9]) == pytest.approx(0.3)


def test_per_step_speedup_pairs_the_steps_that_ran_back_to_back():
    from unlearn.bench import runner

    base = [{"status": "ok", "cpu_step_s_all": [0.2, 0.4]}, {"status": "ok", "cpu_step_s_all": [0.3]}]
    ours = [{"status": "ok", "cpu_step_s_all": [0.1, 0.25]}, {"status": "ok", "cpu_step_s_all": [0.2]}]
    assert runner._paired(ours, base, "tokens_per_cpu_s", per_step=True) == pytest.approx(1.6)  # of 2, 1.6, 1.5


def test_interleaved_variants_take_turns_step_by_step(tmp_path, demo_dir, dist_env, monkeypatch):
    from unlearn.bench import measure, runner
    from unlearn.bench.workload import Spec

    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "demo").symlink_to(demo_dir)  # the demo assets, built once per session
    order = []
    run = measure.Session.run
    monkeypatch.setattr(measure.Session, "run", lambda self, i: (order.append((self.spec.variant, i)), run(self, i)))
    opts = runner.Options(variants=("baseline-dynpad", "ours-fp32"), interleave=True, work_dir=str(tmp_path / "work"))
    report = runner.run(opts, Spec(variant="", model_dir="", forget="", retain="", max_length=64, steps=2, warmup=1,
                                   threads=1))
    assert order == [("baseline-dynpad", 0), ("ours-fp32", 0), ("ours-fp32", 1), ("baseline-dynpad", 1),
                     ("baseline-dynpad", 2), ("ours-fp32", 2)]
    rows = {r["variant"]: r for r in report["results"]}
    assert report["interleaved_steps"] is True and report["isolated"] is False
    base, ours = rows["baseline-dynpad"]["repeats"][0], rows["ours-fp32"]["repeats"][0]
    assert len(base["cpu_step_s_all"]) == len(ours["cpu_step_s_all"]) == 2  # the warm-up step is not timed
    assert base["tokens_per_step"] == ours["tokens_per_step"]  # the same samples at each step
    expected = sorted(b / o for b, o in zip(base["cpu_step_s_all"], ours["cpu_step_s_all"]))
    assert rows["ours-fp32"]["cpu_speedup_vs_dynpad"] == pytest.approx(sum(expected) / 2)
    assert "same-step ratios" in runner.table(report).splitlines()[0]


def test_every_variants_step_time_includes_drawing_its_samples(tmp_path, demo_dir, dist_env, monkeypatch):
    """Our Loop draws its samples inside its step; the baseline is handed them, so its draw is timed
    with its step (a clock that jumps 100 s during every draw shows which draws were timed)."""
    import time

    from unlearn.bench import measure, presets
    from unlearn.bench.workload import Spec

    jumps = [0.0]
    clock, draw = time.process_time, measure.workload.next_batches
    monkeypatch.setattr(measure.time, "process_time", lambda: clock() + jumps[0])
    monkeypatch.setattr(measure.workload, "next_batches",
                        lambda *a: (jumps.__setitem__(0, jumps[0] + 100), draw(*a))[1])
    timed = {}
    for name in ("baseline-dynpad", "ours-fp32"):
        spec = Spec(variant=name, model_dir=str(demo_dir / "init"), forget=str(demo_dir / "harmful.jsonl"),
                    retain=str(demo_dir / "normal.jsonl"), max_length=64, steps=2, warmup=1, threads=1)
        session = measure.Session(spec)
        for i in range(3):
            session.run(i)
        timed[name] = session.result()["cpu_step_s_all"]
        if name == "ours-fp32":  # the Loop tokenized its random answers itself, not the untimed draw
            loop_memo, draw_memo = session.sets.mismatch._encode.seen, session.shadow_sets.mismatch._encode.seen
            assert loop_memo is not draw_memo and len(loop_memo) == len(draw_memo) > 0
    assert presets.variant("ours-fp32").loop == "ours"
    assert all(100 <= t < 110 for t in timed["baseline-dynpad"]), timed  # the draw, then the step
    assert all(0 < t < 10 for t in timed["ours-fp32"]), timed             # its own draw is inside the step


def test_arithmetic_bound_batch_and_grid_points_per_gpu_hour():
    """slurm/bench_gpu.sh's summaries (unlearn.bench.scaling), on reports with known figures."""
    from unlearn.bench import scaling

    def report(batch, **row):
        return {"spec": {"batch": batch}, "results": [{"variant": "ours-bf16", "status": "ok", **row}]}

    mfu = {2: 0.05, 4: 0.12, 8: 0.35, 16: 0.40}
    reports = [report(b, step_s=0.1 * b, tokens_per_s=1000.0, mfu=m, gpu_peak_gib=10.0) for b, m in mfu.items()]
    summary = scaling.batches(reports[::-1], "ours-bf16")
    assert [r["batch"] for r in summary["rows"]] == [2, 4, 8, 16]
    assert summary["best_mfu"] == 0.40 and summary["bound_batch"] == 8  # first MFU >= 0.8 x 0.40
    assert "arithmetic-bound from batch 8" in scaling.batches_table(summary)
    runs = {1: [report(2, step_s=0.10)], 2: [report(2, step_s=0.15), report(2, step_s=0.16)],
            4: [report(2, step_s=0.3), {"results": [{"variant": "ours-bf16", "status": "oom", "error": "CUDA oom"}]}]}
    rows = scaling.shared(runs, "ours-bf16", steps_per_run=1000)
    assert rows[0]["points_per_gpu_hour"] == pytest.approx(3600 / (1000 * 0.10))      # 36 a GPU-hour
    assert rows[1]["points_per_gpu_hour"] == pytest.approx(2 * 3600 / (1000 * 0.16))  # the slower run sets it
    assert rows[2]["status"] == "failed" and rows[2]["errors"] == ["CUDA oom"]
    assert scaling.shared_table(rows, "ours-bf16", 1000).splitlines()[3].split()[:4] == ["2", "0.160", "45.0", "1.25"]


@pytest.mark.slow
def test_bench_gpu_script_trace_part_rehearsed_on_a_cpu(tmp_path):
    """slurm/bench_gpu.sh as shipped, its trace part at OPT-1.3b / 32 (the scale-down is the only
    change; the GPU run is the same command without SCALE_DOWN): eager and compiled layers each get a
    profile, and the eager step's host cost line closes the part."""
    env = child_env({"PYTHON": sys.executable, "PARTS": "trace", "SCALE_DOWN": "32", "STEPS": "1", "WARMUP": "1",
                     "BENCH_OUT": str(tmp_path / "bench"), "OMP_NUM_THREADS": "1"})
    proc = subprocess.run(["bash", str(ROOT / "slurm" / "bench_gpu.sh")], capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "bench" / "opt-1.3b-trace.json").read_text())
    rows = {r["variant"]: r for r in report["results"]}
    assert list(rows) == ["ours-bf16", "ours-bf16-compile"] and all(r["status"] == "ok" for r in rows.values())
    assert all(r["trace"]["steps"] == 3 and r["trace"]["kernels"] > 0 for r in rows.values()), rows
    for name in rows:
        assert f"{name}: 3 profiled steps, per step" in proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("host cost per step: ")
    assert "'train/zero_step.py:101 _step': 1" in proc.stdout.splitlines()[-1]  # the one sync a step
