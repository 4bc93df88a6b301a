"""Figures for a paper (mmtm/analysis/plots.py): at most 7 in wide, no text under 8 pt, labelled axes with units,
intervals on the CUR bars, one colour scale per measure across the view-pair heat maps, both kinds of re-balancing
marker visible where they coincide, PNG and PDF, and a failed write that leaves the previous figure whole."""
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.text import Text
from PIL import Image

from mmtm.loaders.errors import UserError
from mmtm.analysis import plots

STEPS = [10, 20, 30, 40, 50, 60]


def run(name, policy="balanced"):
    both = [0, 1, 1, 0, 2, 1]  # the intervals at steps 20, 30 and 50, 60 hold re-balancing steps of both kinds
    trace = {"step": STEPS, "d_speed": [0.1, 0.05, 0.02, 0.0, -0.01, -0.02], "d_speed_window": [0.1] * 6,
             "s_m1_m0": [0.2] * 6, "s_m0_m1": [0.1] * 6, "rebalance_m0": both, "rebalance_m1": both}
    return {"name": name, "config": {"policy": policy, "alpha": 0.01, "seed": 0},
            "epochs": [{"epoch": e, "train_acc": 0.5, "val_acc": 0.4, "val_acc_m0": 0.3, "val_acc_m1": 0.2}
                       for e in range(3)],
            "cur": {"u_m1_given_m0": 0.3, "u_m0_given_m1": 0.1,
                    "intervals": {"u_m1_given_m0": [0.2, 0.45], "u_m0_given_m1": [0.05, 0.12]}},
            "summary": {"trace": trace, "d_speed_by_regular_step": [0.1, 0.0, -0.1]}}


ROWS = [{"policy": p, "u_m1_given_m0": 0.1 * s, "u_m0_given_m1": 0.2, "d_util": 0.1 * s - 0.2, "d_speed_final": s,
         "d_speed_stage": s, "d_util_ci": [0.1 * s - 0.3, 0.1 * s - 0.1]} for p in ("vanilla", "balanced")
        for s in range(3)]
PAIRS = [{"policy": p, "views": v, "d_util": (m, 0.1), "d_speed_final": (m / 10, float("nan"))}
         for p, m in (("vanilla", -0.6), ("balanced", 0.2)) for v in ([0, 6], [0, 3])]
FIGURES = {  # plot, its argument, labels it must show
    "d_speed": (plots.plot_d_speed, [run("a"), run("b")], {"d_speed (log10)", "training step"}),
    "d_speed_by_regular_steps": (plots.plot_d_speed_by_regular_steps, [run("a")],
                                 {"cumulative d_speed (log10)", "regular steps so far"}),
    "speeds": (plots.plot_speeds, [run("a")], {"conditional learning speed (log10)", "training step"}),
    "accuracy": (plots.plot_accuracy, [run(f"r{i}") for i in range(6)], {"accuracy (fraction)", "epoch"}),
    "cur": (plots.plot_cur, [run("a"), run("b")], {"u (relative accuracy gain)"}),
    "cur_by_policy": (plots.plot_cur_by_policy, ROWS, {"u (relative accuracy gain)"}),
    "d_speed_vs_d_util": (plots.plot_speed_vs_util, ROWS, {"d_util (best.pt)", "final d_speed (log10)"}),
    "view_pairs": (plots.plot_view_pairs, PAIRS, {"first view (m0)", "second view (m1)", "d_util, mean over seeds"}),
}


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """Every figure of FIGURES drawn once into one folder: {stem: (the figure, its PNG path)}."""
    folder = tmp_path_factory.mktemp("figures")
    figures = {}
    save = plots._save

    def keep(fig, path):
        figures[Path(path).stem] = fig
        return save(fig, path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plots, "_save", keep)
        paths = {name: plot(data, folder / f"{name}.png") for name, (plot, data, _) in FIGURES.items()}
    return {name: (figures[name], paths[name]) for name in FIGURES}


@pytest.mark.parametrize("name", FIGURES)
def test_each_figure_fits_a_page_with_readable_labelled_text_as_png_and_pdf(name, drawn):
    fig, path = drawn[name]
    labels = FIGURES[name][2]
    width, height = fig.get_size_inches()
    assert width <= 7.0 and height <= 9.0
    assert Image.open(path).size == (round(width * plots.DPI), round(height * plots.DPI))
    assert path.with_suffix(".pdf").read_bytes().startswith(b"%PDF")
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert texts and min(t.get_fontsize() for t in texts) >= 8
    shown = {ax.get_xlabel() for ax in fig.axes} | {ax.get_ylabel() for ax in fig.axes} | \
        {ax.xaxis.label.get_text() for ax in fig.axes}
    assert labels <= shown
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary left


def test_both_rebalancing_markers_show_where_they_coincide(drawn):
    fig, path = drawn["d_speed"]
    for ax in fig.axes:
        marks = {c.get_label(): c.get_offsets() for c in ax.collections
                 if isinstance(c, PathCollection) and c.get_label().startswith("re-balance")}
        if marks:
            m0, m1 = marks["re-balance m0"], marks["re-balance m1"]
            assert list(m0[:, 0]) == list(m1[:, 0]) == [20, 30, 50, 60]  # the same steps...
            assert set(m0[:, 1]) != set(m1[:, 1])                        # ...in rows of their own
    legend = {t.get_text() for legend in fig.legends for t in legend.get_texts()}
    assert {"re-balance m0", "re-balance m1", "cumulative", "windowed", "±α"} <= legend
    # and in the pixels: both colours are drawn
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(int)
    for colour in ((214, 39, 40), (31, 119, 180)):  # tab:red, tab:blue
        assert (np.abs(pixels - colour).sum(1) < 30).sum() > 50, colour


def test_cur_bars_carry_their_intervals(drawn):
    (ax,) = drawn["cur"][0].axes
    spans = sorted(tuple(np.round(seg[:, 1], 6)) for bars in ax.containers if getattr(bars, "errorbar", None)
                   for seg in bars.errorbar.lines[2][0].get_segments())
    assert spans == [(0.05, 0.12)] * 2 + [(0.2, 0.45)] * 2  # runs a and b


def test_view_pair_heat_maps_share_one_colour_scale_per_measure(drawn):
    images = [ax.images[0] for ax in drawn["view_pairs"][0].axes if ax.images]
    d_util = {im.get_clim() for im in images if "d_util" in im.axes.get_title()}
    d_speed = {im.get_clim() for im in images if "d_speed" in im.axes.get_title()}
    assert d_util == {(-0.6, 0.6)} and d_speed == {(-0.06, 0.06)}


def test_a_failed_write_leaves_the_previous_figure_whole(tmp_path, monkeypatch):
    path = plots.plot_cur([run("a")], tmp_path / "cur.png")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    from matplotlib.figure import Figure

    def disk_full(self, f, **kwargs):
        f.write(b"\x89PNG half a figure")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Figure, "savefig", disk_full)
    with pytest.raises(UserError, match="no space left"):  # the one error line a full disk gives, nothing half-written
        plots.plot_cur([run("b")], path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
