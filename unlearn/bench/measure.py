"""Time and memory of one variant's unlearning step.

Run as `python -m unlearn.bench.measure '<spec json>'` (what the runner does): each variant in a
fresh process, so the peak RSS (CPU) or peak allocated GPU memory belongs to that variant alone.
Prints one line `BENCH_RESULT {...}`.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import statistics
import sys
import time
from dataclasses import replace

import torch

from unlearn import distributed
from unlearn import model as models
from unlearn import sets as sample_sets
from unlearn.bench import workload
from unlearn.bench.baseline import BaselineLoop
from unlearn.bench.presets import variant
from unlearn.bench.workload import Spec
from unlearn.train import loop as train

MARKER = "BENCH_RESULT "


def _rss_peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _dist_env():
    if "MASTER_PORT" not in os.environ:  # a private port: other jobs on this machine may hold 29500
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    for key in ("RANK", "LOCAL_RANK"):
        os.environ.setdefault(key, "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_WORLD_SIZE", "1")
    return distributed.init()


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of the optimizer state this rank holds (moments, quantisation scales, step counters),
    looking through DeepSpeed's ZeRO/bf16 wrapper to the optimizer it drives."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return sum(t.numel() * t.element_size() for state in inner.state.values() for t in state.values()
               if torch.is_tensor(t))


def _setup(spec: Spec):
    """(step function taking the step's samples, config, sets, optimizer, the OurStep or
    BaselineLoop behind it) of the variant."""
    v = variant(spec.variant)
    cfg = workload.run_config(spec, v)
    if v.loop == "ours":
        from unlearn.bench.ours import OurStep

        ours = OurStep(spec, v, _dist_env())
        return (lambda batches: ours.step()), cfg, ours.sets, ours.engine.optimizer, ours
    tokenizer = models.load_tokenizer(cfg.model)
    sets = sample_sets.load_sets(cfg, tokenizer, distributed.env_from_os())
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    base = BaselineLoop(spec.model_dir, device, spec.lr, tokenizer.pad_token_id,
                        spec.max_length if v.padding == "max" else None)
    return (lambda b: base.step(b["forget"], b["mismatch"], b["retain"])), cfg, sets, base.optimizer, base


class Session:
    """One variant set up for timing; `run(i)` takes step i of its workload (timed after warm-up).
    Every variant's time includes drawing the step's samples (the random-mismatch answers too)."""

    def __init__(self, spec: Spec):
        torch.set_num_threads(spec.threads or os.cpu_count() or 1)
        train.set_seed(spec.seed, 0)
        self.spec, self.cuda = spec, torch.cuda.is_available()
        t_setup = time.perf_counter()
        self.step, self.cfg, self.sets, self.optimizer, self.impl = _setup(spec)
        self.setup_s = time.perf_counter() - t_setup
        self.rss_setup = _rss_peak_gib()
        self.shadow = workload.streams(self.cfg, self.sets)  # the same order the step's own streams follow
        # our Loop draws its samples inside its step, and the draw here only counts them: it gets a
        # tokenizer memo of its own, so the Loop's draw tokenizes its random answers as the baseline's does
        self.own_draw = variant(spec.variant).loop == "ours"
        self.shadow_sets = self.sets
        if self.own_draw and self.sets.mismatch is not None:
            self.shadow_sets = replace(self.sets, mismatch=replace(self.sets.mismatch))
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        # wall time, and this process's CPU time: on a shared machine with one thread per worker, the
        # CPU seconds of a step stay close to its wall time on a quiet machine while waits do not count
        self.times, self.cpu_times, self.train_tokens, self.ref_tokens, self.padded = [], [], 0, 0, 0
        self.host_cost = self.trace_summary = None

    def run(self, i: int) -> None:
        _sync()
        t0, c0 = time.perf_counter(), time.process_time()
        batches = workload.next_batches(self.cfg, self.shadow_sets, self.shadow, i)
        if self.own_draw:
            t0, c0 = time.perf_counter(), time.process_time()
        out = self.step(batches)
        _sync()
        if i < self.spec.warmup:
            return
        self.times.append(time.perf_counter() - t0)
        self.cpu_times.append(time.process_time() - c0)
        n, n_ref, n_padded = workload.tokens(
            batches, self.cfg.data.mismatch_pass_cost if variant(self.spec.variant).loop == "ours" else None)
        self.train_tokens, self.ref_tokens = self.train_tokens + n, self.ref_tokens + n_ref
        self.padded += int(out.get("padded_tokens", n_padded))

    def count(self, i: int) -> None:
        """Step i (untimed) under `unlearn.bench.hostcost`: operators and syncs of one step. Not for a
        compiled variant: under a dispatch mode torch.compile runs the layers eagerly, so the count
        would be the eager step's (the profiler trace sees a compiled step's kernels)."""
        from unlearn.bench import hostcost

        if variant(self.spec.variant).compile:
            return

        self.host_cost, _ = hostcost.count(self.run_untimed, i)

    def trace(self, first: int) -> None:
        """Profile `spec.trace_steps` steps from step `first`, twice (unlearn.bench.trace)."""
        from pathlib import Path

        from unlearn.bench import trace

        out = Path(self.spec.trace_dir or ".") / self.spec.variant
        self.trace_summary = trace.record(self.run_untimed, first, self.spec.trace_steps, out)

    def run_untimed(self, i: int) -> None:
        self.step(workload.next_batches(self.cfg, self.shadow_sets, self.shadow, i))

    def result(self) -> dict:
        times, cpu_times = self.times, self.cpu_times
        result = {
            "variant": self.spec.variant, "status": "ok", "setup_s": round(self.setup_s, 2),
            "step_s": statistics.median(times), "step_s_all": [round(t, 4) for t in times],
            "cpu_step_s": statistics.median(cpu_times), "cpu_step_s_all": [round(t, 4) for t in cpu_times],
            "tokens_per_cpu_s": self.train_tokens / sum(cpu_times), "tokens_per_s": self.train_tokens / sum(times),
            "tokens_per_step": self.train_tokens / len(times), "ref_tokens_per_step": self.ref_tokens / len(times),
            "padded_tokens_per_step": self.padded / len(times),
            "rss_peak_setup_gib": round(self.rss_setup, 3), "rss_peak_gib": round(_rss_peak_gib(), 3),
            "optimizer_state_gib": optimizer_state_bytes(self.optimizer) / 2**30,
            "threads": torch.get_num_threads(), "device": "cuda" if self.cuda else "cpu",
        }
        if self.host_cost is not None:
            result["host_cost"] = self.host_cost.to_json()
        if self.trace_summary is not None:
            result["trace"] = self.trace_summary
        if self.cuda:
            result["gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            result["gpu_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
            result["gpu_name"] = torch.cuda.get_device_name()
        return result


def measure(spec: Spec) -> dict:
    """Warm-up steps, then `spec.steps` timed optimizer steps, then one counted step (host cost);
    tokens are real (unpadded) tokens."""
    session = Session(spec)
    for i in range(spec.warmup + spec.steps):
        session.run(i)
    session.count(spec.warmup + spec.steps)
    if spec.trace_steps:
        session.trace(spec.warmup + spec.steps + 1)
    return session.result()


def measure_interleaved(specs: list[Spec]) -> list[dict]:
    """Every spec's variant set up in this process, then taking turns step by step (A B, B A, ...):
    step i of each runs back to back with the others' on the same samples, so a slow spell of the
    machine hits them alike. Peak memory is then the process's, not a variant's own."""
    try:
        sessions = [Session(s) for s in specs]
        n = specs[0].warmup + specs[0].steps
        for i in range(n):
            for session in (sessions if i % 2 == 0 else sessions[::-1]):
                session.run(i)
        for session in sessions:
            session.count(n)
            if session.spec.trace_steps:
                session.trace(n + 1)
        return [session.result() for session in sessions]
    except torch.cuda.OutOfMemoryError as exc:
        return [_oom(s, exc) for s in specs]


def _oom(spec: Spec, exc: Exception) -> dict:
    """An out-of-memory GPU recorded as the variant's result rather than a crash."""
    return {"variant": spec.variant, "status": "oom", "error": str(exc).splitlines()[0][:200]}


def safe_measure(spec: Spec) -> dict:
    """`measure`, with an out-of-memory GPU recorded as a result rather than a crash."""
    try:
        return measure(spec)
    except torch.cuda.OutOfMemoryError as exc:
        return _oom(spec, exc)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    result = safe_measure(Spec(**json.loads(argv[0])))
    print(MARKER + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
