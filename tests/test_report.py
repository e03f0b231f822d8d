"""The sweep report's plot: every run's label readable (labels used to print over each other)."""

from __future__ import annotations


def test_labels_of_points_close_together_never_cover_each_other():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from unlearn.sweep.report import place_labels

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    # 8 runs, 4 of them within a label's size of each other (as runs that ended alike do)
    points = [(0.10, 1.010), (0.101, 1.011), (0.102, 1.010), (0.101, 1.009), (0.30, 1.05), (0.5, 1.2),
              (0.52, 1.21), (0.9, 1.5)]
    ax.scatter(*zip(*points))
    texts = place_labels(ax, points, [str(n) for n in range(1, 9)])
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in texts]
    assert [t.get_text() for t in texts] == [str(n) for n in range(1, 9)]
    assert not [(i, j) for i in range(8) for j in range(i) if boxes[i].overlaps(boxes[j])]
    # the same labels all at the first offset (as before) do cover each other
    same = [ax.annotate(str(n), p, xytext=(4, 4), textcoords="offset points", fontsize=7) for n, p in enumerate(points)]
    assert same[0].get_window_extent(renderer).overlaps(same[1].get_window_extent(renderer))
    plt.close(fig)


def test_the_report_job_writes_no_best_json_for_a_damaged_winner(tmp_path):
    """The report job chooses as `--best` does and checks the winner's files against its manifest: 4 KiB
    flipped in its weights -> report.csv still written, no best.json (an earlier one removed), one line."""
    import csv

    import pytest

    from tests.test_sweep_grid import _fake_checkpoint, _grid
    from unlearn import manifest
    from unlearn.errors import UserError
    from unlearn.sweep.grid import load_sweep, plan
    from unlearn.sweep.report import report_folder

    sweep = load_sweep(_grid(tmp_path, axes={"optim.lr": [1e-4, 5e-4]}))
    pts = plan(sweep)
    for p, rouge in zip(pts, (0.2, 0.6)):
        _fake_checkpoint(sweep.folder, p.name, 2, {"copyright/verbatim_rouge_l": rouge, "utility/retain_ppl": 1.1})
        ckpt = sweep.folder / "runs" / p.name / "checkpoints" / "step-000002"
        (ckpt / "model.safetensors").write_bytes(bytes(range(256)) * 64)
        manifest.write(ckpt)
    report_folder(str(sweep.folder))  # intact: best.json names the lower ROUGE-L (pareto-knee, equal PPL)
    winner = sweep.folder / "runs" / pts[0].name / "checkpoints" / "step-000002" / "model.safetensors"
    assert str(winner.parent) in (sweep.folder / "best.json").read_text()
    data = bytearray(winner.read_bytes())
    data[4096:8192] = bytes(b ^ 0xFF for b in data[4096:8192])
    winner.write_bytes(bytes(data))
    with pytest.raises(UserError, match=f"no best.json: the chosen checkpoint {winner} does not match its "
                                        "xxh3_128 checksum"):
        report_folder(str(sweep.folder))
    assert not (sweep.folder / "best.json").exists()
    assert len(list(csv.DictReader((sweep.folder / "report.csv").open()))) == 2
