"""What checksummed checkpoints cost on this machine (`python launch/bench.py --checksums`).

A real checkpoint of the preset's model (ZeRO-2 engine after one AdamW step, so the optimizer moments
are in it) is saved `repeats` times; then, in rounds that take turns so a busy machine slows all
alike, each candidate hash reads every file of it (page cache warm, as right after a save). Prints
GB/s per hash, the save's own GB/s, what the manifest adds to a save and what a reader's check costs
beside loading the model, and the same projected onto an OPT-1.3b checkpoint (bf16 weights).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import time
import zlib
from pathlib import Path

import torch

from unlearn import manifest
from unlearn.bench import presets


class _Crc32:
    def __init__(self):
        self.value = 0

    def update(self, data) -> None:
        self.value = zlib.crc32(data, self.value)


def _hashers() -> dict:
    import xxhash

    return {"xxh3_128": xxhash.xxh3_128, "xxh3_64": xxhash.xxh3_64, "crc32": _Crc32,
            "blake2b": hashlib.blake2b, "sha256": hashlib.sha256}


def _hash_files(files: list[Path], make) -> None:
    buf = bytearray(16 << 20)
    view = memoryview(buf)
    for path in files:
        h = make()
        with open(path, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                h.update(view[:n])


def opt13b_bytes() -> dict[str, int]:
    """Bytes of an OPT-1.3b checkpoint trained in bf16 under ZeRO: weights (bf16 safetensors), the
    engine's module copy (bf16) and its optimizer state (fp32 master weights + two AdamW moments)."""
    from transformers import OPTConfig, OPTForCausalLM

    with torch.device("meta"):
        n = sum(p.numel() for p in OPTForCausalLM(OPTConfig(**presets.shape("opt-1.3b"))).parameters())
    return {"params": n, "weights": 2 * n, "all": (2 + 2 + 12) * n}


def _engine(model_dir: Path, env):
    from unlearn.config_io import load_config
    from unlearn.model import load_policy, load_tokenizer
    from unlearn.train import engine as engines

    cfg, _ = load_config(overrides=[f"model.name_or_path={model_dir}", "train.micro_batch_size=1",
                                    "train.global_batch_size=1"])
    ds = engines.read_ds_config(Path(__file__).resolve().parents[2] / "ds_configs" / "zero2.json")
    engine = engines.initialize(load_policy(cfg.model, engines.dtype_of(ds)), ds, cfg, env, max_steps=2)
    ids = torch.randint(4, 100, (1, 16), device=env.device)
    engine.backward(engine(input_ids=ids, labels=ids).loss)  # one step: AdamW's moments exist
    engine.step()
    return cfg, engine, load_tokenizer(cfg.model)


def run(model_dir: Path, work: Path, repeats: int) -> dict:
    from unlearn.bench.measure import _dist_env
    from unlearn.model import load_for_eval
    from unlearn.train import checkpoint

    env = _dist_env()
    cfg, engine, tok = _engine(model_dir, env)
    run_dir = work / "checksums"
    shutil.rmtree(run_dir, ignore_errors=True)
    save_s, manifest_s = [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        ckpt = checkpoint.save(engine, tok, cfg, run_dir, r + 1, env, {"step": r + 1, "streams": {}})
        save_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        manifest.write(ckpt)  # again, alone: what the save spent on it
        manifest_s.append(time.perf_counter() - t0)
        if r:
            shutil.rmtree(checkpoint.step_dir(run_dir, r))
    files = sorted(p for p in ckpt.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in files)
    weights = sum(p.stat().st_size for p in files if manifest.ENGINE_DIR not in p.relative_to(ckpt).parts)
    seconds = {name: [] for name in _hashers()}
    for _ in range(repeats):
        for name, make in _hashers().items():
            t0 = time.perf_counter()
            _hash_files(files, make)
            seconds[name].append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    assert not manifest.damage(ckpt, engine=False)  # an evaluation's check (files as saved)
    verify_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert not manifest.damage(ckpt)  # a resume's check: the engine state too
    resume_check_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    load_for_eval(str(ckpt))
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    checkpoint.load_for_resume(engine, ckpt, env)
    resume_s = time.perf_counter() - t0
    shutil.rmtree(run_dir, ignore_errors=True)
    gbps = {name: size / statistics.median(s) / 1e9 for name, s in seconds.items()}
    save_gbps = size / statistics.median(save_s) / 1e9
    big = opt13b_bytes()
    return {"checkpoint_bytes": size, "weights_bytes": weights, "repeats": repeats, "hash_gb_per_s": gbps,
            "save_s": statistics.median(save_s), "save_gb_per_s": save_gbps,
            "manifest_s": statistics.median(manifest_s), "eval_check_s": verify_s, "resume_check_s": resume_check_s,
            "load_for_eval_s": load_s, "load_for_resume_s": resume_s,
            "opt_1.3b": {**big, "hash_all_s": big["all"] / gbps[manifest.ALGORITHM] / 1e9,
                         "hash_weights_s": big["weights"] / gbps[manifest.ALGORITHM] / 1e9,
                         "save_s_at_this_rate": big["all"] / save_gbps / 1e9}}


def table(r: dict) -> str:
    big = r["opt_1.3b"]
    lines = [f"checkpoint {r['checkpoint_bytes'] / 1e9:.3f} GB (weights {r['weights_bytes'] / 1e9:.3f} GB), "
             f"median of {r['repeats']}",
             *(f"  {name:<9} {v:7.2f} GB/s" for name, v in sorted(r["hash_gb_per_s"].items(), key=lambda kv: -kv[1])),
             f"  save      {r['save_gb_per_s']:7.2f} GB/s ({r['save_s']:.2f} s, of which manifest {r['manifest_s']:.2f} s)",
             f"check before an eval {r['eval_check_s']:.3f} s (load_for_eval {r['load_for_eval_s']:.2f} s), "
             f"before a resume {r['resume_check_s']:.3f} s (load_for_resume {r['load_for_resume_s']:.2f} s)",
             f"OPT-1.3b ({big['params'] / 1e9:.2f}B params): checkpoint {big['all'] / 1e9:.1f} GB -> "
             f"{manifest.ALGORITHM} {big['hash_all_s']:.1f} s at save and resume, {big['hash_weights_s']:.2f} s "
             f"for an eval's {big['weights'] / 1e9:.1f} GB of weights; the save itself at this machine's rate "
             f"{big['save_s_at_this_rate']:.0f} s"]
    return "\n".join(lines)


def main(preset: str, work_dir: str, repeats: int, json_path: str = "") -> None:
    from unlearn import demo

    work = Path(work_dir)
    demo_dir = work / "demo"
    if not (demo_dir / "init" / "config.json").is_file():
        demo.build(demo_dir)
    model_dir = demo_dir / "init" if preset == "tiny" else \
        presets.build_model_dir(preset, work / "models" / preset, demo_dir / "init")
    report = run(model_dir, work, max(1, repeats))
    text = json.dumps(report, indent=1)
    print(text)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(text + "\n")
    print(table(report))
