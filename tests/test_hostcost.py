"""Host cost of a step (unlearn.bench.hostcost): the counter tells host from device tensors as a GPU
would, and a real training step waits for the device only inside DeepSpeed's optimizer step."""

from __future__ import annotations

import torch

from unlearn.bench import hostcost


def test_counter_counts_what_would_wait_for_a_gpu():
    weight = torch.randn(4, 3)  # made before the count: a device tensor, as a model's weights are

    def step():
        host = torch.tensor([1.0, -2.0, 3.0])          # data from Python: a host tensor
        assert float(host.sum()) == 2.0                  # a host value: no wait
        out = weight @ host.to("cpu", non_blocking=True)  # moved without blocking: no wait
        idx = torch.arange(3).to("cpu")                  # a blocking copy to the device: 1 copy
        picked = out[out > 0]                            # boolean mask on the device: 1 shape
        loss = out.sum() + weight[:, idx].sum()
        made = torch.zeros(2, device="cpu")             # made on the device: no copy
        return loss.item(), picked.tolist(), torch.tensor([0.5], device="cpu") + made  # 1 scalar, 1 list, 1 copy

    counts, (value, _, made) = hostcost.count(step)
    assert value == float((weight @ torch.tensor([1.0, -2.0, 3.0])).sum() + weight.sum())
    assert dict(counts.syncs) == {"copy": 2, "shape": 1, "scalar": 1, "list": 1}
    assert counts.sync_owners == {"tests": 5}
    assert any(site.startswith("tests/test_hostcost.py:") and site.endswith(" step") for site in counts.sites)
    assert counts.ops >= 10 and counts.ops_by_owner["tests"] == counts.ops


def test_a_training_step_waits_once(demo_dir, dist_env):
    """The paper's objective (GA + 5 random mismatch + KL, joint, packed) on a real ZeRO-2 engine,
    a step outside logging: one sync, the optimizer step's read of the global gradient norm
    (unlearn.train.zero_step). On the code before this counter (losses read per term, a
    per-micro-batch finite check, blocking copies, a boolean LM-head mask) the same step made 32
    syncs; DeepSpeed's own optimizer step (train.one_sync_step=false, the `-dsstep` variant) makes
    3 (two reads of the norm, a small blocking copy) and dispatches 8 more operators per parameter
    tensor (4 for the norm, 4 re-pointing the weight at the flat buffer it already views)."""
    from unlearn.bench import measure
    from unlearn.bench.workload import Spec

    costs, tensors = {}, 0
    for variant in ("ours-fp32", "ours-fp32-dsstep"):
        spec = Spec(variant=variant, model_dir=str(demo_dir / "init"), forget=str(demo_dir / "harmful.jsonl"),
                    retain=str(demo_dir / "normal.jsonl"), max_length=64, steps=1, warmup=0, threads=1)
        session = measure.Session(spec)
        session.run(0)  # first step: DeepSpeed's buckets and lazy state
        session.count(1)
        costs[variant] = cost = session.host_cost
        assert cost.ops_by_owner["unlearn"] < 250, cost.to_json()  # per term and pass, not per parameter
        loop = session.impl.loop
        loop.verify()  # the deferred check of the applied steps' losses: finite
        assert loop.applied_finite is None
        tensors = sum(1 for p in loop.engine.module.parameters() if p.requires_grad)
    ours, theirs = costs["ours-fp32"], costs["ours-fp32-dsstep"]
    (site,) = ours.sites
    assert ours.total_syncs == 1 and site.startswith("train/zero_step.py:") and site.endswith(" _step"), site
    assert theirs.total_syncs == theirs.sync_owners["deepspeed"] == 3, theirs.to_json()
    assert theirs.ops_by_owner["deepspeed"] - ours.ops_by_owner["deepspeed"] >= 8 * tensors, (ours.ops_by_owner,
                                                                                               theirs.ops_by_owner)


def test_logged_means_of_device_values_equal_those_of_host_floats():
    """The loop now hands the logger float64 device tensors instead of Python floats: the window's
    means are bit-equal (the same IEEE double operations), read in one go."""
    from unlearn.logger import Window

    values = [torch.tensor(v, dtype=torch.float32) for v in (0.1234567, 2.5e-3, 7.77777, float("inf"))]
    floats, lazy = Window(), Window()
    for v in values[:3]:
        floats.add({"forget/loss": v.item() / 2 + v.item() / 2, "lr": 0.5})
        lazy.add({"forget/loss": v.double() / 2 + v.double() / 2, "lr": 0.5})
    want, got = floats.pop_means(), lazy.pop_means()
    assert got == want and all(type(x) is float for x in got.values())
    lazy.add({"grad_norm": values[3].double()})
    lazy.add({"grad_norm": 1.0})
    assert lazy.pop_means() == {"grad_norm": float("inf")}


def _step_boundary_syncs(rank: int, port: int, run_dir: str, out: str) -> None:
    """One rank of two (gloo): the loop's per-step agreement on a STOP file and a preemption, counted."""
    import json

    import torch.distributed as dist

    from unlearn.distributed import DistEnv
    from unlearn.train import guards

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    env = DistEnv(rank=rank, local_rank=rank, world_size=2)
    counts, got = hostcost.count(lambda: (guards.stop_file(run_dir, env), guards.on_any_rank(rank == 1, env)))
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"syncs": counts.total_syncs, "got": list(got)}, f)
    dist.destroy_process_group()


def test_step_boundary_checks_agree_over_ranks_without_waiting_for_the_device(tmp_path):
    """Every step the ranks agree whether to stop (a STOP file) and whether a preemption came: two
    all-reduces of host flags over the host group (gloo), which wait for the other ranks' hosts, not
    for a GPU. Before, each flag went to the device (NCCL's group) and was read back: 2 syncs each
    (a blocking copy and a read), 4 a step with several ranks. The answers are every rank's."""
    import json

    import torch.multiprocessing as mp

    from tests.conftest import _free_port

    (tmp_path / "STOP").write_text("halving: stopped after round 1\n")
    out = tmp_path / "rank0.json"
    mp.spawn(_step_boundary_syncs, args=(_free_port(), str(tmp_path), str(out)), nprocs=2)
    result = json.loads(out.read_text())
    assert result["got"] == [f"{tmp_path / 'STOP'}: halving: stopped after round 1", True]  # rank 1's preemption too
    assert result["syncs"] == 0, result
