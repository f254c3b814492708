import os

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from tubervae import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _rng():
    return np.random.default_rng(0)


def _images(*shape):
    return _rng().random(shape + (3,)).astype(np.float32)


def _image_axes(fig):
    return [ax for ax in fig.axes if ax.images]


# --------------------------------------------------------------------------- traversal


def test_traversal_latents_by_hand():
    codes = plots.traversal_latents([1.0, -0.5], [-2.0, 0.0, 2.0])
    expected = np.array(
        [
            [[-1.0, -0.5], [1.0, -0.5], [3.0, -0.5]],  # component 0 moves
            [[1.0, -2.5], [1.0, -0.5], [1.0, 1.5]],  # component 1 moves
        ]
    )
    assert codes.shape == (2, 3, 2)
    np.testing.assert_allclose(codes, expected)


def test_traversal_latents_rejects_matrix():
    with pytest.raises(ValueError, match="z0 must be 1-d"):
        plots.traversal_latents(np.zeros((2, 2)), [0.0])


def _tick_labels(axis) -> list[str]:
    return [t.get_text() for t in axis.get_ticklabels()]


def test_traversal_figure_grid_and_labels():
    images = _images(3, 5, 4, 4)
    fig = plots.traversal_figure(images, kl=[0.5, 0.004, 1.25])
    assert isinstance(fig, Figure)
    (ax,) = _image_axes(fig)
    assert _tick_labels(ax.yaxis) == ["z0  KL=0.50", "z1  KL=0.00", "z2  KL=1.25"]
    assert _tick_labels(ax.xaxis) == ["-2", "-1", "+0", "+1", "+2"]  # default offsets -2..2 in 5 steps
    mosaic = ax.images[0].get_array()
    assert mosaic.shape == (3 * 4 + 2, 5 * 4 + 4, 3)  # 1-pixel gaps between 4-pixel cells
    np.testing.assert_allclose(mosaic[5:9, 10:14], images[1, 2])  # row 1, column 2
    # Each tick sits on the centre of its cell.
    np.testing.assert_allclose(ax.get_yticks(), [1.5, 6.5, 11.5])
    np.testing.assert_allclose(ax.get_xticks(), [1.5, 6.5, 11.5, 16.5, 21.5])


def test_traversal_figure_names_a_guided_component():
    fig = plots.traversal_figure(_images(3, 5, 4, 4), kl=[0.5, 0.004, 1.25], guided=0)
    (ax,) = _image_axes(fig)
    assert _tick_labels(ax.yaxis) == ["z0  KL=0.50  guided: good/bad", "z1  KL=0.00", "z2  KL=1.25"]
    with pytest.raises(ValueError, match=r"guided must be a component index in 0..2, got 3"):
        plots.traversal_figure(_images(3, 5, 4, 4), guided=3)


def test_traversal_figure_accepts_uint8_and_scales_it():
    images = np.full((1, 2, 2, 2, 3), 255, dtype=np.uint8)
    fig = plots.traversal_figure(images)
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), 1.0)


@pytest.mark.parametrize(
    "images, kwargs, message",
    [
        (np.zeros((3, 5, 4, 4)), {}, "images must have shape"),
        (np.full((1, 2, 2, 2, 3), 1.5), {}, r"\[0, 1\]"),
        (np.zeros((3, 5, 4, 4, 3)), {"kl": [0.1, 0.2]}, "kl must have length 3"),
        (np.zeros((3, 5, 4, 4, 3)), {"values": [0.0]}, "values must have length 5"),
    ],
)
def test_traversal_figure_rejects_bad_input(images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plots.traversal_figure(images, **kwargs)


# --------------------------------------------------------------------------- image grids


def test_image_mosaic_by_hand():
    a = np.zeros((2, 2, 3), np.float32)
    b = np.full((1, 2, 3), 0.5, np.float32)  # smaller than its cell: top-left corner
    mosaic, row_origins, col_origins = plots.image_mosaic([[a, b], [a]], gap=1, fill=1.0)
    assert mosaic.shape == (5, 5, 3)
    np.testing.assert_array_equal(row_origins, [0, 3])
    np.testing.assert_array_equal(col_origins, [0, 3])
    expected = np.array(
        [
            [0, 0, 1, 0.5, 0.5],
            [0, 0, 1, 1, 1],
            [1, 1, 1, 1, 1],
            [0, 0, 1, 1, 1],  # the short second row leaves its second cell blank
            [0, 0, 1, 1, 1],
        ]
    )
    np.testing.assert_array_equal(mosaic[..., 0], expected)


@pytest.mark.parametrize("rows, gap, message", [([], 1, "at least one image"), ([[np.zeros((2, 2, 3))]], -1, "gap")])
def test_image_mosaic_rejects_bad_input(rows, gap, message):
    with pytest.raises(ValueError, match=message):
        plots.image_mosaic(rows, gap=gap)


def test_image_grid_ragged_rows_and_per_image_titles():
    rows = [_images(3, 4, 4), _images(1, 4, 4)]
    fig = plots.image_grid_figure(rows, titles=[["a", "b", "c"], ["d"]], row_labels=["r0", "r1"])
    (ax,) = _image_axes(fig)
    assert [t.get_text() for t in ax.texts] == ["a", "b", "c", "d"]
    assert _tick_labels(ax.yaxis) == ["r0", "r1"]
    # Each title sits just above its own cell: the cells are 4 pixels wide, 1 pixel apart.
    positions = [t.get_position() for t in ax.texts]
    assert [x for x, _ in positions] == [1.5, 6.5, 11.5, 1.5]
    row_top = [0, 4 + 1]  # the gap grows to one pixel at this size
    assert all(y < row_top[r] for (_, y), r in zip(positions, [0, 0, 0, 1]))
    assert positions[3][1] > 3  # the second row's title is below the first row's cells


def test_image_grid_rejects_wrong_title_count():
    with pytest.raises(ValueError, match="titles must have 2 entries"):
        plots.image_grid_figure([_images(2, 4, 4)], titles=["only one"])


def test_reconstruction_figure_keeps_first_n_pairs():
    originals = _images(5, 4, 4)
    fig = plots.reconstruction_figure(originals, originals[::-1].copy(), n=3)
    (ax,) = _image_axes(fig)
    mosaic = ax.images[0].get_array()
    assert mosaic.shape == (2 * 4 + 1, 3 * 4 + 2, 3)  # two rows of three
    np.testing.assert_allclose(mosaic[0:4, 10:14], originals[2])
    np.testing.assert_allclose(mosaic[5:9, 0:4], originals[4])  # reversed copy
    assert _tick_labels(ax.yaxis) == ["original", "reconstruction"]


def test_reconstruction_figure_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        plots.reconstruction_figure(_images(2, 4, 4), _images(3, 4, 4))


# --------------------------------------------------------------------------- distributions


def test_distribution_figure_solid_informative_faint_rest():
    mu = [1.5, 0.0, -1.0]
    logvar = [np.log(0.04), 0.0, np.log(0.25)]
    fig = plots.distribution_figure(mu, logvar, kl=[2.0, 0.001, 0.8])
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert sorted(lines) == ["prior N(0, 1)", "uninformative (1)", "z0  KL=2.00", "z2  KL=0.80"]
    assert lines["uninformative (1)"].get_alpha() < 0.5
    assert lines["z0  KL=2.00"].get_alpha() is None  # solid
    assert lines["prior N(0, 1)"].get_linestyle() == "--"
    # the narrow component peaks at 1/(sigma sqrt(2 pi)) with sigma = 0.2, at x = mu
    x, y = lines["z0  KL=2.00"].get_data()
    assert x[np.argmax(y)] == pytest.approx(1.5, abs=1e-3)
    assert y.max() == pytest.approx(1 / (0.2 * np.sqrt(2 * np.pi)), rel=1e-4)


def test_distribution_figure_falls_back_to_per_image_kl():
    # N(0, 1) posterior has KL 0: uninformative; mu = 1, sigma = 1 has KL 0.5
    fig = plots.distribution_figure([0.0, 1.0], [0.0, 0.0])
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["z1  KL=0.50", "uninformative (1)", "prior N(0, 1)"]


def test_distribution_figure_rejects_length_mismatch():
    with pytest.raises(ValueError, match="logvar must have length 2"):
        plots.distribution_figure([0.0, 1.0], [0.0])


# --------------------------------------------------------------------------- heat maps


def test_similarity_heatmap_masks_uninformative_and_prints_values():
    matrix = np.array([[0.9, 0.1, 0.2], [0.3, 0.8, 0.05], [0.4, 0.6, 0.7]])
    fig = plots.similarity_heatmap(matrix, [True, False, True], [True, True, False], title="pair")
    ax = fig.axes[0]
    shown = ax.images[0].get_array()
    expected_mask = np.array([[False, False, True], [True, True, True], [False, False, True]])
    np.testing.assert_array_equal(np.ma.getmaskarray(shown), expected_mask)
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == ["0.10", "0.40", "0.60", "0.90"]
    assert ax.get_title() == "pair"
    assert "model A" in ax.get_ylabel() and "model B" in ax.get_xlabel()


@pytest.mark.parametrize(
    "matrix, inf_a, inf_b, message",
    [
        (np.zeros(3), [True] * 3, [True] * 3, "matrix must be a non-empty 2-d"),
        (np.zeros((2, 2)), [True] * 3, [True] * 2, "informative_a must be .* length 2"),
        (np.zeros((2, 2)), [True] * 2, [0, 2], "informative_b must hold booleans"),
    ],
)
def test_similarity_heatmap_rejects_bad_input(matrix, inf_a, inf_b, message):
    with pytest.raises(ValueError, match=message):
        plots.similarity_heatmap(matrix, inf_a, inf_b)


def test_importance_heatmap_labels_components_and_factors():
    df = pd.DataFrame([[0.7, 0.0], [0.1, 0.5], [0.0, 0.25]], columns=["x", "size"], index=[0, 1, 2])
    fig = plots.importance_heatmap(df)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["x", "size"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2"]
    assert len(ax.texts) == 6 and "0.25" in {t.get_text() for t in ax.texts}


def test_importance_heatmap_rejects_text():
    with pytest.raises(ValueError, match="only numbers"):
        plots.importance_heatmap(pd.DataFrame({"x": ["a", "b"]}))


# --------------------------------------------------------------------------- tables


def test_table_figure_formats_floats_to_two_decimals():
    df = pd.DataFrame({"model type": ["beta_vae"], "param": [4], "#top": [7], "seed_0": [0.3851], "udr": [0.4]})
    fig = plots.table_figure(df, title="UDR")
    table = fig.axes[0].tables[0]
    cells = table.get_celld()
    assert [cells[0, j].get_text().get_text() for j in range(5)] == list(df.columns)
    assert [cells[1, j].get_text().get_text() for j in range(5)] == ["beta_vae", "4", "7", "0.39", "0.40"]
    assert fig.axes[0].get_title() == "UDR"


def test_table_figure_rejects_empty():
    with pytest.raises(ValueError, match="at least one row"):
        plots.table_figure(pd.DataFrame({"udr": []}))


# --------------------------------------------------------------------------- scatter and lines


def test_scatter_threshold_colours_and_line():
    values = np.array([[0.0, 1.0], [0.5, 0.2], [1.0, 0.3]])
    fig = plots.scatter_threshold_figure(values, [False, True, True], ["z0", "z3"], threshold=0.1)
    ax = fig.axes[0]
    good, bad = ax.collections
    np.testing.assert_allclose(good.get_offsets(), values[[0]])
    np.testing.assert_allclose(bad.get_offsets(), values[[1, 2]])
    (line,) = ax.get_lines()
    assert np.allclose(line.get_xdata(), 0.1)  # vertical line at x = 0.1
    assert ax.get_xlabel() == "z0" and ax.get_ylabel() == "z3"


def test_scatter_of_a_two_cut_rule_draws_both_cuts_and_its_title():
    fig = plots.scatter_threshold_figure(
        np.zeros((2, 2)), [0, 1], ["z9", "z5"], threshold=0.5, other_threshold=-1.0, title="bad if z9 < 0.5 or z5 > -1"
    )
    vertical, horizontal = fig.axes[0].get_lines()
    assert np.allclose(vertical.get_xdata(), 0.5) and np.allclose(horizontal.get_ydata(), -1.0)
    assert fig.axes[0].get_title() == "bad if z9 < 0.5 or z5 > -1"


def test_scatter_threshold_on_y_axis_is_horizontal():
    fig = plots.scatter_threshold_figure(np.zeros((2, 2)), [0, 1], ["a", "b"], threshold=-1.0, threshold_axis=1)
    (line,) = fig.axes[0].get_lines()
    assert np.allclose(line.get_ydata(), -1.0)


@pytest.mark.parametrize(
    "values, bad, kwargs, message",
    [
        (np.zeros((2, 3)), [0, 1], {}, r"values_2d must have shape \(n, 2\)"),
        (np.zeros((2, 2)), [0, 1, 1], {}, "labels_bad must be .* length 2"),
        (np.zeros((2, 2)), [0, 1], {"threshold_axis": 2}, "threshold_axis must be 0"),
    ],
)
def test_scatter_threshold_rejects_bad_input(values, bad, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plots.scatter_threshold_figure(values, bad, ["a", "b"], **kwargs)


def test_metric_vs_param_groups_and_infeasible():
    fig = plots.metric_vs_param_figure(
        [1, 2, 4, 8],
        [0.3, 0.4, 0.5, 0.2],
        groups=["vae", "vae", "tc", "tc"],
        infeasible=[False, False, False, True],
        xlabel="beta",
        ylabel="UDR",
        logx=True,
    )
    ax = fig.axes[0]
    counts = {c.get_label(): len(c.get_offsets()) for c in ax.collections}
    assert counts == {"vae": 2, "tc": 1, "infeasible (1)": 1}
    assert ax.get_xscale() == "log"


def test_metric_vs_param_secondary_axis_shows_the_scaled_value():
    fig = plots.metric_vs_param_figure(
        [1, 4, 16], [0.3, 0.4, 0.5], xlabel="β", ylabel="UDR", logx=True, secondary=("normalised β", 0.01)
    )
    ax = fig.axes[0]
    (top,) = [child for child in ax.child_axes if child.get_xlabel() == "normalised β"]
    fig.canvas.draw()
    assert top.get_xlim() == pytest.approx(tuple(0.01 * v for v in ax.get_xlim()))
    with pytest.raises(ValueError, match="positive"):
        plots.metric_vs_param_figure([1, 2], [0.1, 0.2], xlabel="β", ylabel="UDR", secondary=("x", 0.0))


def test_metric_vs_param_rejects_nonpositive_x_on_log_axis():
    with pytest.raises(ValueError, match="x must be positive"):
        plots.metric_vs_param_figure([0, 1], [0.1, 0.2], xlabel="beta", ylabel="UDR", logx=True)


def test_history_running_best_skips_failed_trials():
    fig = plots.history_figure([0.2, np.nan, 0.5, 0.4, 0.6])
    ax = fig.axes[0]
    (best,) = ax.get_lines()
    np.testing.assert_allclose(best.get_ydata(), [0.2, 0.2, 0.5, 0.5, 0.6])
    assert len(ax.collections[0].get_offsets()) == 4
    fig = plots.history_figure([0.2, 0.1, 0.5], maximize=False)
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), [0.2, 0.1, 0.1])


def test_label_efficiency_one_errorbar_line_per_method():
    df = pd.DataFrame(
        {
            "method": ["threshold", "threshold", "forest", "forest"],
            "n_labels": [100, 20, 20, 100],
            "mean": [0.8, 0.7, 0.6, 0.9],
            "std": [0.01, 0.05, 0.04, 0.02],
        }
    )
    fig = plots.label_efficiency_figure(df)
    ax = fig.axes[0]
    by_label = {bars.get_label(): bars for bars in ax.containers}
    assert sorted(by_label) == ["forest", "threshold"]
    np.testing.assert_allclose(by_label["threshold"].lines[0].get_ydata(), [0.7, 0.8])  # sorted by n_labels
    np.testing.assert_allclose(by_label["forest"].lines[0].get_xdata(), [20, 100])
    # error bars span mean +- std
    (segments,) = [c.get_segments() for c in by_label["threshold"].lines[2]]
    np.testing.assert_allclose([s[1, 1] - s[0, 1] for s in segments], [0.10, 0.02])


def test_label_efficiency_rejects_missing_column():
    with pytest.raises(ValueError, match=r"missing \['std'\]"):
        plots.label_efficiency_figure(pd.DataFrame({"method": ["a"], "n_labels": [1], "mean": [0.5]}))


def test_rank_scatter_spearman_title_and_top_annotations():
    x = [1, 2, 3, 4]
    y = [10.0, 30.0, 20.0, 40.0]  # ranks 1 3 2 4 -> rho = 1 - 6*2/(4*15) = 0.8
    fig = plots.rank_scatter_figure(x, y, labels=list("abcd"), xlabel="within", ylabel="a2a", annotate_top=2)
    ax = fig.axes[0]
    assert "0.80" in ax.get_title()
    assert [t.get_text() for t in ax.texts] == ["1", "2"]  # numbered points
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["d", "b"]  # best first
    fig = plots.rank_scatter_figure(
        x, y, labels=list("abcd"), xlabel="x", ylabel="y", annotate_top=1, higher_is_better=False
    )
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a"]


def test_rank_scatter_constant_input_reports_na():
    fig = plots.rank_scatter_figure([1, 2, 3], [5, 5, 5], xlabel="x", ylabel="y")
    assert "n/a" in fig.axes[0].get_title()


# --------------------------------------------------------------------------- saving


def test_save_figure_writes_png_atomically(tmp_path):
    fig = plots.history_figure([0.1, 0.2])
    target = tmp_path / "deep" / "er" / "history.png"
    returned = plots.save_figure(fig, target)
    assert returned == target
    assert target.read_bytes()[:8] == PNG_SIGNATURE
    assert os.listdir(target.parent) == ["history.png"]  # no temp file left behind


def test_save_figure_rejects_other_suffix_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="must end in .png"):
        plots.save_figure(plots.history_figure([0.1]), tmp_path / "out" / "fig.jpg")
    assert not (tmp_path / "out").exists()


def test_history_ticks_are_whole_trials_and_a_narrow_log_axis_reads_plain_numbers():
    fig = plots.history_figure([0.4, 0.6])
    fig.canvas.draw()
    ticks = fig.axes[0].get_xticks()
    assert len(ticks) and all(float(t).is_integer() for t in ticks)  # no trial 0.2, 0.4, …

    fig = plots.metric_vs_param_figure(
        [2.23, 3.57], [0.43, 0.59], xlabel="β", ylabel="UDR", logx=True, secondary=("normalised β", 0.0033)
    )
    fig.canvas.draw()
    labels = [t.get_text() for ax in fig.axes for t in ax.xaxis.get_ticklabels(which="both") if t.get_text()]
    assert labels and not [text for text in labels if "10^" in text or "times" in text or "×" in text], labels
    assert "3" in labels  # within one decade the minor ticks carry plain numbers


@pytest.mark.parametrize(("mean", "std"), [(0.0, 1.0), (1.5, 0.05), (-2.0, 3.0)])
def test_the_distribution_figures_normal_density_is_scipys(mean, std):
    from scipy.stats import norm

    x = np.linspace(-8.0, 8.0, 2001)
    expected = norm.pdf(x, loc=mean, scale=std)
    np.testing.assert_allclose(plots._normal_pdf(x, mean, std), expected, rtol=1e-12, atol=1e-12 * expected.max())
