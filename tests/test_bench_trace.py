"""Where a step's time goes (unlearn.bench.trace): the summary of a profiler trace, checked on a
hand-made GPU trace (every figure known) and on a real CPU trace of the tiny model's step."""

from __future__ import annotations

import pytest

from unlearn.bench import trace


def _x(cat, name, ts, dur, tid=1, ext=None):
    return {"ph": "X", "cat": cat, "name": name, "pid": 7, "tid": tid, "ts": ts, "dur": dur,
            "args": {} if ext is None else {"External id": ext}}


def test_gpu_trace_families_gaps_and_who_launched_what():
    stacked = [
        _x("python_function", "unlearn/train/step.py(200): step", 0, 100),
        _x("python_function", "torch/nn/modules/module.py(1751): _call_impl", 5, 20),
        _x("cpu_op", "aten::mm", 10, 5, ext=1),
        _x("python_function", "deepspeed/runtime/engine.py(2400): step", 50, 40),
        _x("cpu_op", "aten::add_", 60, 5, ext=2),
        _x("cpu_op", "aten::mm", 30, 5, tid=2, ext=3),  # the autograd thread: no Python frame
        _x("kernel", "sm90_xmma_gemm_bf16bf16_bf16f32", 20, 10, tid=9, ext=1),
        _x("kernel", "ampere_sgemm_128x64_tn", 32, 8, tid=9, ext=3),
        _x("kernel", "void at::native::vectorized_elementwise_kernel<4, AddFunctor>", 70, 5, tid=9, ext=2),
    ]
    s = trace.summarize(stacked, stacked, steps=1)
    # kernels at [20, 30], [32, 40], [70, 75] us: a 2 us launch gap and a 30 us wait
    assert s["device"] == "gpu" and s["kernels"] == 3
    assert s["span_ms"] == pytest.approx(0.055) and s["busy_ms"] == pytest.approx(0.023)
    assert s["gap_ms"] == pytest.approx(0.030) and s["gaps"] == 1 and s["short_gap_ms"] == pytest.approx(0.002)
    assert s["families"] == {"gemm": {"kernels": 2, "ms": pytest.approx(0.018)},
                             "elementwise": {"kernels": 1, "ms": pytest.approx(0.005)}}
    assert {k: v["kernel_ms"] for k, v in s["owners"].items()} == pytest.approx(
        {"unlearn": 0.010, "autograd": 0.008, "deepspeed": 0.005})
    assert {k: v["ops"] for k, v in s["owners"].items()} == {"unlearn": 1, "autograd": 1, "deepspeed": 1}
    assert "gemm" in trace.table(s, "opt-1.3b").splitlines()[2]


def test_summary_of_a_real_cpu_trace_of_the_tiny_step(demo_dir, dist_env, tmp_path):
    from unlearn.bench import measure
    from unlearn.bench.workload import Spec

    spec = Spec(variant="ours-fp32", model_dir=str(demo_dir / "init"), forget=str(demo_dir / "harmful.jsonl"),
                retain=str(demo_dir / "normal.jsonl"), max_length=64, steps=1, warmup=0, threads=1,
                trace_steps=1, trace_dir=str(tmp_path))
    session = measure.Session(spec)
    session.run(0)
    session.trace(1)
    s = session.result()["trace"]
    assert (tmp_path / "ours-fp32.json").is_file() and (tmp_path / "ours-fp32.stacks.json").is_file()
    assert s["device"] == "cpu" and s["steps"] == 1
    # on a CPU each operator's own time is its kernel: they add up to the host's busy time
    assert sum(f["ms"] for f in s["families"].values()) == pytest.approx(s["busy_ms"], rel=1e-6)
    assert s["busy_ms"] + s["gap_ms"] + s["short_gap_ms"] == pytest.approx(s["span_ms"], rel=1e-6)
    assert max(s["families"], key=lambda f: s["families"][f]["ms"]) == "gemm"
    assert {"unlearn", "transformers", "autograd", "deepspeed"} <= set(s["owners"])
    assert all(v["kernel_ms"] > 0 for k, v in s["owners"].items() if k != "other")
