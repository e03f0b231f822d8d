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
