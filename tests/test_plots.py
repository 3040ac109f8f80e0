"""drawing.py, plots.py and diagnostic_plots.py: every figure the tools write passes
figure_checks.check (no text over text, no data cut by the frame, no legend over
data, integer axes at whole ticks, one font family), under the --label text, in
each --format; and the checker catches each defect it is for."""
import os

import numpy as np
from figure_checks import check, recorded, recording, style_family

from dataset import load_meta
from features import DERIVED, features_for


def test_every_figure_of_a_run_passes_the_checks(trained_model, analysis_run, matching_file,
                                                 tmp_path):
    """make_dataset.py --plot (as PDF only, --label ''), training.py --save's report
    (checked as the trained_model fixture wrote it: PNG and PDF, the default label)
    and inference.py with --compare and --ranking (--label 'LHCb preliminary': checked
    as the analysis_run fixture wrote it): every figure written, checked as it was
    saved."""
    import make_dataset
    checks = tmp_path / "checks"
    with recording(checks / "features"):
        make_dataset.main(["-f", matching_file, "--output", str(tmp_path / "ds"), "--track",
                           "matching", "--plot", "--plots-dir", str(tmp_path / "features"),
                           "--format", "pdf", "--label", ""])
    models = trained_model.models
    runs = {"features": (checks / "features", tmp_path / "features", ["pdf"], []),
            "training report": (models.parent / "figure_checks", models / "training_report",
                                ["png", "pdf"], ["LHCb simulation"]),
            "inference": (analysis_run.parent / "figure_checks", analysis_run, ["png"],
                          ["LHCb preliminary"])}
    defects = {}
    for run, (folder, plots, formats, label) in runs.items():
        found = recorded(folder)
        for fmt in formats:  # every figure written was checked, in every format
            assert {f[:-4] for f in os.listdir(plots) if f.endswith(f".{fmt}")} == set(found)
        assert not any(f.endswith(".png") for f in os.listdir(plots)) or "png" in formats
        for stem, r in found.items():
            assert r["formats"] == formats and r["texts"] == label, (run, stem)
            defects.update({f"{run}/{stem}": r["defects"]} if r["defects"] else {})
    # a figure per feature and per derived input (the dataset's: matching's defaults)
    inputs = load_meta(str(tmp_path / "ds")).inputs()
    assert inputs == features_for("matching") + [t.split(" := ")[0] for t in DERIVED["matching"]]
    assert set(recorded(checks / "features")) == set(inputs)
    assert all((tmp_path / "features" / f"{n}.pdf").read_bytes().startswith(b"%PDF")
               for n in inputs)
    assert {"search_front", "history", "ranking", "correlations", "overtraining", "scores",
            "roc", "rejection", "thresholds", "confusion", "compare", "kinematics_p",
            "kinematics_n_velo", "kinematics_n_scifi"} <= set(recorded(models.parent /
                                                                     "figure_checks"))
    assert {"compare", "ranking", "kinematics_eta", "overtraining"} <= set(
        recorded(analysis_run.parent / "figure_checks"))
    assert not defects, "\n".join(f"{k}: {line}" for k, v in defects.items() for line in v)


def _figure(plt, **kw):
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.arange(10.0), np.arange(10.0) ** 0.5, "o-", label="data", **kw)
    ax.set_xlabel("x [cm]")
    ax.set_ylabel("y")
    return fig, ax


def test_the_checker_catches_each_defect():
    """A clean figure passes; text over text, a marker on the frame, a histogram's
    peak cut, a legend over a curve, half-integer ticks on a counter, a second font
    each give their defect."""
    from matplotlib.ticker import MultipleLocator

    from drawing import style
    family = style_family()
    with style() as plt:
        fig, ax = _figure(plt)
        ax.legend(loc="lower right")
        fig.tight_layout()
        assert check(fig, family) == []

        ax.set_title("a title")
        ax.text(0.5, 1.01, "on the title", transform=ax.transAxes, ha="center")
        assert any("overlaps" in d for d in check(fig, family))
        plt.close(fig)

        fig, ax = _figure(plt)
        ax.set_xlim(0, 9.5)  # the first marker centred on the frame
        assert any("cut by the frame" in d and "(0, 0)" in d for d in check(fig, family))
        plt.close(fig)

        fig, ax = _figure(plt, ls="none")
        ax.hist(np.repeat([2.0, 3.0], [50, 200]), bins=5, histtype="step")
        ax.set_ylim(0, 100)  # the peak above the frame
        assert any("Polygon" in d for d in check(fig, family))
        plt.close(fig)

        fig, ax = _figure(plt)
        ax.legend(loc="upper left", fontsize=30)  # over the rising curve
        assert any("legend covers line 'data'" in d for d in check(fig, family))
        plt.close(fig)

        fig, ax = _figure(plt)
        ax.xaxis.set_major_locator(MultipleLocator(2.5))  # 2.5, 7.5 hits
        assert any("x axis counts" in d for d in check(fig, family, integer_x=True))
        plt.close(fig)

        fig, ax = _figure(plt)
        ax.set_title("another font", family="DejaVu Sans")
        assert any("in font 'DejaVu Sans'" in d for d in check(fig, family))
        plt.close(fig)


def test_figures_are_drawn_in_their_style_with_the_label(tmp_path):
    """A figure made in the style but saved outside it drew its "serif" text in
    another family (the four report figures written after style() had closed);
    write_figure draws it in the style, under the label, in a constrained layout
    too."""
    import drawing
    family = style_family()
    with drawing.style() as plt:
        made = [plt.subplots()[0] for _ in range(3)]
        for fig in made:
            fig.suptitle("a suptitle")
            fig.axes[0].plot([0.5, 2], [0.5, 2], label="line")
            fig.axes[0].legend()
        made[2].set_layout_engine("constrained")
    assert any("in font" in d for d in check(made[0], family))
    with recording(tmp_path / "checks", integer_x=()):
        drawing.write_figure(made[1], [str(tmp_path / "one.png")], label="LHCb simulation")
        drawing.write_figure(made[2], [str(tmp_path / "two.pdf")], label="")
    found = recorded(tmp_path / "checks")
    assert found["one"] == {"defects": [], "formats": ["png"], "texts": ["LHCb simulation"]}
    assert found["two"] == {"defects": [], "formats": ["pdf"], "texts": []}
    assert (tmp_path / "two.pdf").read_bytes().startswith(b"%PDF")


def test_the_one_pass_layout_is_tight_layouts_in_the_rect(tmp_path):
    """write_figure lays a figure out in one pass (drawing._tight_below): the axes
    sit where matplotlib's two-pass tight_layout(rect=...) puts them, for one row,
    one column and a grid, with and without a suptitle; a kept figure keeps its own
    dpi and layout engine."""
    import drawing
    with drawing.style() as plt:
        for rows, cols, title in ((1, 1, ""), (1, 2, ""), (2, 2, "a suptitle"), (3, 1, "t")):
            pair = []
            for _ in range(2):
                fig, axes = plt.subplots(rows, cols, figsize=(3 * cols + 3, 2.5 * rows + 1))
                for i, ax in enumerate(np.ravel(axes)):
                    ax.plot([0, 10 ** i], [0, 1], label="line")
                    ax.set_title(f"panel {i}\nsecond line")
                    ax.set_xlabel("x"), ax.set_ylabel("y")
                if title:
                    fig.suptitle(title)
                pair.append(fig)
            top = 1 - 0.4 / pair[0].get_figheight()
            pair[0].tight_layout(rect=(0, 0, 1, top))
            drawing._tight_below(pair[1], top)
            for a, b in zip(pair[0].axes, pair[1].axes):
                np.testing.assert_allclose(a.get_position().bounds, b.get_position().bounds,
                                           atol=1e-9)
            for fig in pair:
                plt.close(fig)
        fig, ax = plt.subplots(layout="constrained")
        ax.plot([0, 1], [0, 1])
        dpi, engine = fig.get_dpi(), fig.get_layout_engine()
        drawing.write_figure(fig, [str(tmp_path / "kept.png")], keep=True, label="LHCb")
        assert (fig.get_dpi(), fig.get_layout_engine()) == (dpi, engine)
        plt.close(fig)


def _ink_margins(path):
    """(left, top, right, bottom) blank pixels around what a written PNG draws."""
    import PIL.Image
    pixels = np.asarray(PIL.Image.open(path).convert("RGBA"))
    ink = (pixels != pixels[0, 0]).any(axis=2)
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    return (int(cols[0]), int(rows[0]), ink.shape[1] - 1 - int(cols[-1]),
            ink.shape[0] - 1 - int(rows[-1]))


def test_a_figure_is_written_as_what_it_draws_and_the_pad(tmp_path):
    """write_figure draws once and crops the canvas to its ink and the style's
    savefig.pad_inches on every side: the PNG holds the canvas's own pixels, at
    150 dpi, the size savefig(bbox_inches="tight") gives to a few pixels (its box
    holds the text's blank ascent and descent, not a thick line's antialiased
    edge); the PDF has the PNG's size."""
    import re

    import matplotlib
    import PIL.Image

    import drawing

    def made(plt):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([1, 10, 100], [0.2, 0.5, 0.9], "o-", label="a curve")
        ax.set_xscale("log")
        drawing.decorate(ax, "what", "a title", "x [GeV]", "y", loc="below")
        return fig

    with drawing.style() as plt:
        pad = round(matplotlib.rcParams["savefig.pad_inches"] * drawing.DPI)
        drawing.write_figure(made(plt), [str(tmp_path / "a.png"), str(tmp_path / "a.pdf")],
                             label="LHCb simulation")
        fig = made(plt)
        drawing.write_figure(fig, [str(tmp_path / "kept.png")], keep=True, label="LHCb simulation")
        fig.savefig(tmp_path / "tight.png", dpi=drawing.DPI, bbox_inches="tight")
        plt.close(fig)
    assert pad == 45  # LHCb's 0.3 inch
    png = PIL.Image.open(tmp_path / "a.png")
    assert _ink_margins(tmp_path / "a.png") == (pad, pad, pad, pad)
    assert np.allclose(png.info["dpi"], drawing.DPI, atol=0.02)  # PNG: dots per metre
    tight = PIL.Image.open(tmp_path / "tight.png").size
    assert all(abs(s - t) <= 25 for s, t in zip(png.size, tight)), (png.size, tight)
    box = re.search(rb"/MediaBox \[\s*0 0 ([\d.]+) ([\d.]+)\s*\]",
                    (tmp_path / "a.pdf").read_bytes())
    assert np.allclose([float(box.group(1)), float(box.group(2))],
                       np.array(png.size) / drawing.DPI * 72, atol=0.01)


def test_a_figure_that_draws_beyond_its_canvas_is_written_whole(tmp_path):
    """Ink at the canvas's edge may go on beyond it: write_figure then saves
    matplotlib's tight bounding box, larger than the canvas, with every text whole."""
    import PIL.Image

    import drawing
    with drawing.style() as plt:
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.plot([0, 1], [0, 1])
        fig.text(0.97, 0.5, "a note beyond the right edge", ha="left")
        drawing.write_figure(fig, [str(tmp_path / "wide.png")], label="")
    width = PIL.Image.open(tmp_path / "wide.png").size[0]
    assert width > 4 * drawing.DPI + 100
    assert min(_ink_margins(tmp_path / "wide.png")) > 0
