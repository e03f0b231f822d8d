"""All variants of one preset side by side: JSON with every measurement, and a short table.

Each (repeat, variant) runs in a fresh worker process (`python -m unlearn.bench.measure`) so its
peak memory is its own; repeats go round the variant list, so slow spells on a shared machine hit
every variant alike, and the table shows each variant's median. With `interleave` the variants share
one process and take turns step by step, and the ratios are per step: the precise comparison of
step time on a shared machine, where one process can run 20-40% slower than the next.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from unlearn.bench import presets
from unlearn.bench.workload import Spec
from unlearn.errors import UserError

PAPER_OPT13B_STEP_S = 1.04
"""The paper's reported OPT-1.3b unlearning step (batch 2), seconds."""
BASELINE_BYTES_PER_PARAM = 20
"""fp32 policy 4 + gradient 4 + AdamW moments 8 + fp32 reference copy 4 (activations extra)."""


@dataclass(frozen=True)
class Options:
    preset: str = "tiny"
    scale_down: int = 1
    keep_depth: bool = False
    """--scale-down divides width and heads only (launches per step scale with depth)."""
    variants: tuple[str, ...] = ()
    """Empty = presets.default_variants for the preset and device."""
    repeats: int = 1
    in_process: bool = False
    """Measure every variant in this process (fast smoke runs; peak RSS is then cumulative)."""
    interleave: bool = False
    """Every variant in this process, taking turns step by step; ratios per step (peak RSS cumulative)."""
    work_dir: str = ".cache/bench"
    forget: str = ""
    """Harmful QA file; empty = the demo's harmful.jsonl (built under work_dir)."""
    retain: str = ""
    """Normal QA file; empty = the demo's normal.jsonl."""


def prepare(opts: Options, spec: Spec, cuda: bool) -> Spec:
    """Demo data and the preset's random-weight model folder under work_dir (reused when present)."""
    from unlearn import demo

    work = Path(opts.work_dir)
    demo_dir = work / "demo"
    if not (demo_dir / "init" / "config.json").is_file():
        demo.build(demo_dir)
    if opts.preset == "tiny":
        if opts.scale_down != 1 or opts.keep_depth:
            raise UserError("--scale-down / --keep-depth apply to the OPT presets; expected them with --preset opt-*")
        model_dir = demo_dir / "init"
    else:
        name = opts.preset if opts.scale_down == 1 else f"{opts.preset}-div{opts.scale_down}"
        name += "-deep" if opts.keep_depth and opts.scale_down != 1 else ""
        model_dir = presets.build_model_dir(opts.preset, work / "models" / name, demo_dir / "init",
                                            opts.scale_down, on_gpu=cuda, keep_depth=opts.keep_depth)
    return replace(spec, model_dir=str(model_dir), forget=opts.forget or str(demo_dir / "harmful.jsonl"),
                   retain=opts.retain or str(demo_dir / "normal.jsonl"))


def _worker(spec: Spec) -> dict:
    from unlearn.bench.measure import MARKER

    proc = subprocess.run([sys.executable, "-m", "unlearn.bench.measure", json.dumps(spec.to_json())],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": _root_path()})
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"variant": spec.variant, "status": "failed", "error": " | ".join(tail)[-400:]}


def _root_path() -> str:
    root = str(Path(__file__).resolve().parents[2])
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)


def _skip_reason(name: str, n_params: int, gpu_bytes: int | None) -> str:
    if gpu_bytes and presets.variant(name).loop == "baseline" and BASELINE_BYTES_PER_PARAM * n_params > gpu_bytes:
        need = BASELINE_BYTES_PER_PARAM * n_params / 2**30
        return f"needs >= {need:.0f} GiB (fp32 policy, grads, AdamW, reference) > {gpu_bytes / 2**30:.0f} GiB GPU"
    return ""


def _summarise(name: str, runs: list[dict], n_params: int, peak: float | None) -> dict:
    ok = [r for r in runs if r.get("status") == "ok"]
    if not ok:
        return {"variant": name, **runs[0], "repeats": runs}
    row = {"variant": name, "status": "ok", "step_s": statistics.median(r["step_s"] for r in ok),
           "tokens_per_s": statistics.median(r["tokens_per_s"] for r in ok),
           "cpu_step_s": statistics.median(r["cpu_step_s"] for r in ok),
           "tokens_per_cpu_s": statistics.median(r["tokens_per_cpu_s"] for r in ok),
           "tokens_per_step": ok[0]["tokens_per_step"], "ref_tokens_per_step": ok[0]["ref_tokens_per_step"],
           "padded_tokens_per_step": ok[0]["padded_tokens_per_step"],
           "step_s_spread": _spread([r["step_s"] for r in ok]),
           "cpu_step_s_spread": _spread([r["cpu_step_s"] for r in ok]),
           "rss_peak_gib": max(r["rss_peak_gib"] for r in ok),
           "optimizer_state_gib": max(r["optimizer_state_gib"] for r in ok), "repeats": runs}
    if "gpu_peak_gib" in ok[0]:
        row["gpu_peak_gib"] = max(r["gpu_peak_gib"] for r in ok)
    for key in ("host_cost", "trace"):  # one counted step (the same on every device), profiled steps
        if key in ok[0]:
            row[key] = ok[0][key]
    if peak:  # model FLOPs per token: forward 2N, backward 4N (2N with LoRA: no weight gradients of
        # the frozen base), reference forward 2N; adapters and attention scores left out
        train_flops = (4 if presets.variant(name).lora else 6) * n_params
        flops = train_flops * row["tokens_per_step"] + 2 * n_params * row["ref_tokens_per_step"]
        row["mfu"] = flops / row["step_s"] / peak
    return row


def _spread(values: list[float]) -> float:
    """(max - min) / median of a variant's repeats: how much the machine moved the number."""
    return (max(values) - min(values)) / statistics.median(values) if values else 0.0


STEP_TIMES = {"tokens_per_s": "step_s_all", "tokens_per_cpu_s": "cpu_step_s_all"}
"""A throughput key and the per-step times it comes from (every variant takes the same samples)."""


def _paired(runs: list[dict], base: list[dict], key: str, per_step: bool = False) -> float | None:
    """Median over rounds of this variant's `key` / the baseline's in the same round: the two ran
    back to back, so a slow spell of the machine divides out. `per_step` (interleaved runs): the
    median over steps of the baseline's step time / this variant's, step i of each back to back."""
    pairs = [(r, b) for r, b in zip(runs, base) if r.get("status") == "ok" and b.get("status") == "ok"]
    if per_step:
        ratios = [tb / tr for r, b in pairs for tr, tb in zip(r[STEP_TIMES[key]], b[STEP_TIMES[key]])]
    else:
        ratios = [r[key] / b[key] for r, b in pairs]
    return statistics.median(ratios) if ratios else None


def run(opts: Options, spec: Spec) -> dict:
    """Measure every variant `opts.repeats` times; returns the JSON report."""
    import torch

    cuda = torch.cuda.is_available()
    names = opts.variants or presets.default_variants(opts.preset, cuda)
    for name in names:
        presets.variant(name)
    spec = prepare(opts, spec, cuda)
    pads = _padding(spec)
    n_params = presets.parameter_count(Path(spec.model_dir))
    gpu_name = torch.cuda.get_device_name(0) if cuda else ""
    gpu_bytes = torch.cuda.get_device_properties(0).total_memory if cuda else None
    peak = presets.peak_flops(gpu_name) if cuda else None
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(opts.repeats):  # rounds A B C, C B A, ...: load drift hits every variant alike
        todo = []
        for name in (names if r % 2 == 0 else names[::-1]):
            reason = _skip_reason(name, n_params, gpu_bytes)
            if reason:
                runs[name].append({"variant": name, "status": "skipped", "error": reason})
            else:
                todo.append(name)
        if opts.interleave:
            from unlearn.bench.measure import measure_interleaved

            for name, result in zip(todo, measure_interleaved([replace(spec, variant=n) for n in todo])):
                runs[name].append(result)
            continue
        for name in todo:
            s = replace(spec, variant=name)
            if opts.in_process:
                from unlearn.bench.measure import safe_measure

                runs[name].append(safe_measure(s))
            else:
                runs[name].append(_worker(s))
    rows = [_summarise(n, runs[n], n_params, peak) for n in names]
    base, dynpad = runs.get("baseline"), runs.get("baseline-dynpad")
    for row in rows:
        if dynpad and row["status"] == "ok":  # against a competent loop: dynamic padding, as HF's Trainer
            ratio = _paired(runs[row["variant"]], dynpad, "tokens_per_cpu_s", opts.interleave)
            if ratio is not None:
                row["cpu_speedup_vs_dynpad"] = ratio
        if base and row["status"] == "ok":
            for key, out in (("tokens_per_s", "speedup_vs_baseline"), ("tokens_per_cpu_s", "cpu_speedup_vs_baseline")):
                ratio = _paired(runs[row["variant"]], base, key, opts.interleave)
                if ratio is not None:
                    row[out] = ratio
        if opts.preset == "opt-1.3b" and opts.scale_down == 1 and row["status"] == "ok" and cuda:
            row["speedup_vs_paper_step"] = PAPER_OPT13B_STEP_S / row["step_s"]
    return {"preset": opts.preset, "scale_down": opts.scale_down, "keep_depth": opts.keep_depth,
            "parameters": n_params,
            "device": gpu_name or "cpu", "peak_bf16_flops": peak, "spec": spec.to_json(),
            "repeats": opts.repeats, "isolated": not (opts.in_process or opts.interleave),
            "interleaved_steps": opts.interleave, "padding": pads, "results": rows}


def _padding(spec: Spec) -> dict[str, dict[str, float]]:
    from unlearn import distributed
    from unlearn import model as models
    from unlearn import sets as sample_sets
    from unlearn.bench import workload

    cfg = workload.run_config(spec, presets.variant("ours-fp32"))
    sets = sample_sets.load_sets(cfg, models.load_tokenizer(cfg.model), distributed.DistEnv(0, 0, 1))
    return workload.padding(cfg, sets)


def table(report: dict) -> str:
    """A fixed-width table of the report's median rows."""
    mem = "gpu_peak_gib" if any("gpu_peak_gib" in r for r in report["results"]) else "rss_peak_gib"
    head = (f"{'variant':<20} {'status':<8} {'s/step':>8} {'tokens/s':>10} {'x base':>7} {'cpu s/step':>10} "
            f"{'spread':>7} {'x base':>7} {'x dynpad':>8} {mem:>13} {'optimizer_gib':>13} {'MFU':>6} "
            f"{'ops/step':>8} {'syncs':>5}")
    how = ("variants took turns step by step in one process (peak memory cumulative), x base / x dynpad = "
           "median of same-step ratios" if report.get("interleaved_steps") else
           "x base / x dynpad = median of same-round ratios")
    scale = f"x1/{report['scale_down']}" + (" width, full depth" if report.get("keep_depth") else "")
    lines = [f"{report['preset']} ({scale}, {report['parameters'] / 1e6:.1f}M params) on "
             f"{report['device']}, batch {report['spec']['batch']}; medians of {report['repeats']} interleaved "
             f"rounds, spread = (max - min) / median, {how} (CPU time)", head]
    for r in report["results"]:
        if r["status"] != "ok":
            lines.append(f"{r['variant']:<20} {r['status']:<8} {r.get('error', '')[:80]}")
            continue
        x = f"{r['speedup_vs_baseline']:.2f}" if "speedup_vs_baseline" in r else "-"
        xc = f"{r['cpu_speedup_vs_baseline']:.2f}" if "cpu_speedup_vs_baseline" in r else "-"
        xd = f"{r['cpu_speedup_vs_dynpad']:.2f}" if "cpu_speedup_vs_dynpad" in r else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
        cost = r.get("host_cost", {})
        lines.append(f"{r['variant']:<20} {'ok':<8} {r['step_s']:>8.3f} {r['tokens_per_s']:>10.0f} {x:>7} "
                     f"{r['cpu_step_s']:>10.3f} {100 * r['cpu_step_s_spread']:>6.1f}% {xc:>7} {xd:>8} {r[mem]:>13.2f} "
                     f"{r['optimizer_state_gib']:>13.3f} {mfu:>6} {cost.get('ops', '-'):>8} {cost.get('syncs', '-'):>5}")
    pads = "; ".join(f"{name} {100 * p['shuffled']:.1f}% shuffled, {100 * p['grouped']:.1f}% length-grouped"
                     for name, p in report.get("padding", {}).items())
    if pads:
        lines.append(f"padding per epoch at batch {report['spec']['batch']} (padded / real tokens - 1): {pads}")
    if any("host_cost" in r for r in report["results"]):
        lines.append("ops/step, syncs = ATen operators and host-device synchronisations of one counted step "
                     "(device-independent: unlearn/bench/hostcost.py; the JSON names each sync's site)")
    if any(presets.variant(r["variant"]).compile for r in report["results"]):
        lines.append("*-compile: no count (torch.compile runs eagerly under the counting dispatch mode); "
                     "its kernels show in a --trace-steps profile")
    from unlearn.bench import trace

    for r in report["results"]:
        if "trace" in r:
            lines.append(trace.table(r["trace"], r["variant"]))
    return "\n".join(lines)


def main(args) -> None:
    """What `launch/bench.py` asked for (its parsed arguments): run, print the JSON and the table."""
    if args.checksums:
        from unlearn.bench import checksums

        checksums.main(args.preset, args.work_dir, args.repeats, args.json)
        return
    names = tuple(presets.VARIANTS) if args.variants == "all" else \
        tuple(v.strip() for v in args.variants.split(",") if v.strip())
    steps, warmup, repeats, in_process = args.steps, args.warmup, args.repeats, args.in_process
    if args.smoke:
        names = names or tuple(presets.VARIANTS)
        steps, warmup, repeats, in_process = 1, 0, 1, True
    if min(args.batch, steps, repeats, args.max_length) < 1 or min(warmup, args.mismatch_pass_cost,
                                                                   args.trace_steps) < 0:
        raise UserError("--batch, --steps, --repeats and --max-length must be >= 1; "
                        "--warmup, --mismatch-pass-cost and --trace-steps >= 0")
    opts = Options(preset=args.preset, scale_down=args.scale_down, keep_depth=args.keep_depth, variants=names,
                   repeats=repeats,
                   in_process=in_process, interleave=args.interleave, work_dir=args.work_dir, forget=args.forget,
                   retain=args.retain)
    spec = Spec(variant="", model_dir="", forget="", retain="", batch=args.batch, max_length=args.max_length,
                steps=steps, warmup=warmup, threads=args.threads, group_by_length=not args.no_group_by_length,
                mismatch_pass_cost=args.mismatch_pass_cost, trace_steps=args.trace_steps,
                trace_dir=args.trace_dir or str(Path(args.work_dir) / "traces" / args.preset))
    report = run(opts, spec)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    print(table(report))
