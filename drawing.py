"""How every figure is drawn and written: headless (Agg) unless asked to show them,
in LHCb's style (mplhep) where it is installed, laid out under the experiment's
label (--label), drawn once and cropped to what it draws, as PNG and optionally PDF,
at 150 dpi; the panels' labels, titles
and legends (decorate, legend_below: a legend where it covers no data); drawing a
list of figures in worker processes (draw_figures).  The figures themselves are in
plots.py and diagnostic_plots.py."""
import contextlib
import logging
import multiprocessing
import os
import signal
import warnings

import numpy as np


def pyplot(show=False):
    import matplotlib
    if not show:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


@contextlib.contextmanager
def style():
    """LHCb's plot style (mplhep's LHCb2), a little smaller for panels with titles and
    legends; matplotlib's own where mplhep is not installed."""
    plt = pyplot()
    with _sheet():
        yield plt


@contextlib.contextmanager
def _sheet():
    """style()'s settings alone (no backend chosen): for drawing as for making a figure,
    since text resolves its font family ("serif") when drawn."""
    import matplotlib.style
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)  # style's fallbacks
    try:
        import mplhep
        sheet = [mplhep.style.LHCb2, {"font.size": 12, "axes.titlesize": 11,
                                      "axes.labelsize": 12, "legend.fontsize": 9,
                                      "xtick.labelsize": 10, "ytick.labelsize": 10}]
    except ImportError:
        sheet = ["default"]
    # headroom: no marker or curve on the frame (the LHCb style's margins are 0)
    sheet.append({"axes.xmargin": 0.04, "axes.ymargin": 0.06})
    with matplotlib.style.context(sheet), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a log axis over an empty class
        yield


def save_figure(out, path, fig, keep=False, formats=("png",), label=""):
    """Write `fig` as path's stem in each format through `out`
    (outputs.AtomicOutputs); close it unless it is kept to be shown.  Returns the
    file names written."""
    stem = os.path.splitext(path)[0]
    write_figure(fig, [out.tmp(f"{stem}.{fmt}") for fmt in formats], keep, label)
    return [os.path.basename(f"{stem}.{fmt}") for fmt in formats]


def write_figure(fig, files, keep=False, label=""):
    """Lay `fig` out under the experiment's `label` (--label: "LHCb simulation"; ""
    for none) at its top left, write it to each of `files` (a format each, by
    extension) in the style it was made in, and close it unless it is kept.

    One layout pass and one rendering: the figure is drawn once on the Agg canvas at
    the written dpi, cropped to what it draws (its ink, plus the style's
    savefig.pad_inches) and written as PNG from that buffer; a PDF is drawn with the
    same box.  (savefig(bbox_inches="tight") would measure every tick and text again
    for the box, then draw once more on a canvas of the box's size.)  Ink that
    reaches the canvas's edge may go on beyond it: then the box is matplotlib's
    tight bounding box, and every format is drawn by savefig."""
    with _sheet():
        top = 1.0
        if label:
            text = fig.text(0.01, 0.995, label, ha="left", va="top", fontweight="bold")
            top -= 1.6 * text.get_fontsize() / 72 / fig.get_figheight()
        engine = fig.get_layout_engine()  # a figure may bring its own (constrained)
        if engine is None:
            _tight_below(fig, top)
        else:
            engine.set(rect=(0, 0, 1, top))
        own_dpi = fig.get_dpi()
        fig.set_dpi(DPI)
        try:
            if engine is not None:
                engine.execute(fig)
            # laid out for good: no engine left, so that drawing does not lay it out again
            fig.set_layout_engine(None)
            _write_laid_out(fig, files)
        finally:
            fig.set_dpi(own_dpi)
            if engine is not None:
                fig.set_layout_engine(engine)
    if not keep:
        pyplot().close(fig)


def _write_laid_out(fig, files):
    """write_figure's rendering and writing, of a figure laid out at DPI."""
    import matplotlib
    import matplotlib.image
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())
    box = ink_box(pixels, fig.get_facecolor())
    pad = matplotlib.rcParams["savefig.pad_inches"]
    if box is None:  # ink at the edge: matplotlib's box, each format drawn by savefig
        bbox = fig.get_tightbbox(fig.canvas.get_renderer()).padded(pad)
        for path in files:
            fig.savefig(path, dpi=DPI, bbox_inches=bbox)
        return
    p = int(round(pad * DPI))
    x0, y0, x1, y1 = box[0] - p, box[1] - p, box[2] + p, box[3] + p  # rows from the top
    height = pixels.shape[0]
    for path in files:
        if path.lower().endswith(".png"):
            crop = np.full((y1 - y0, x1 - x0, 4), pixels[0, 0], dtype=np.uint8)
            inside = pixels[max(y0, 0):y1, max(x0, 0):x1]
            crop[max(-y0, 0):max(-y0, 0) + inside.shape[0],
                 max(-x0, 0):max(-x0, 0) + inside.shape[1]] = inside
            matplotlib.image.imsave(path, crop, format="png", dpi=DPI,
                                    pil_kwargs={"compress_level": PNG_COMPRESSION})
        else:  # the same box in inches, from the bottom left
            from matplotlib.transforms import Bbox
            fig.savefig(path, dpi=DPI, bbox_inches=Bbox.from_extents(
                x0 / DPI, (height - y1) / DPI, x1 / DPI, (height - y0) / DPI))


def ink_box(pixels, facecolor):
    """(x0, y0, x1, y1) in pixels, rows counted from the top, of what is drawn on
    an RGBA canvas `pixels` of background `facecolor`; None where it reaches an
    edge (it may be cut there) or nothing is drawn."""
    from matplotlib.colors import to_rgba
    background = np.round(np.asarray(to_rgba(facecolor)) * 255).astype(np.uint8)
    ink = (pixels != background).any(axis=2)
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if len(rows) == 0 or rows[0] == 0 or cols[0] == 0 or rows[-1] == ink.shape[0] - 1 \
            or cols[-1] == ink.shape[1] - 1:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _tight_below(fig, top):
    """fig.tight_layout(rect=(0, 0, 1, top)) in one layout pass, not two: matplotlib
    lays the figure out whole, then again inside the rect with the margins and gaps
    it found (the same, as nothing moved in between); here the first pass's subplot
    parameters are moved into the rect instead."""
    fig.tight_layout()
    p = fig.subplotpars
    rows = max((ax.get_subplotspec().get_gridspec().nrows for ax in fig.axes
                if ax.get_subplotspec() is not None), default=1)
    gap = p.hspace * (p.top - p.bottom) / (rows + p.hspace * (rows - 1))  # between rows
    new_top = p.top - (1 - top)
    height = (new_top - p.bottom - gap * (rows - 1)) / rows  # of each row's axes
    fig.subplots_adjust(top=new_top, hspace=gap / height if rows > 1 else p.hspace)


DPI = 150  # every figure written
# zlib's level for PNGs: files 15 % larger than at matplotlib's 6, written in 70 % of the time
PNG_COMPRESSION = 3
BELOW_PT = 40  # a legend below an axes starts this far under its frame: past the x label


def decorate(ax, what, title, xlabel, ylabel, logy=False, loc="best", ncol=1):
    """Labels, title, grid and legend; loc="below": the legend under the axes, where
    it covers no data."""
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{what}\n{title}" if title else what)
    ax.grid(alpha=0.3)
    if loc != "below":
        return ax.legend(loc=loc, ncol=ncol)
    from matplotlib.transforms import ScaledTranslation
    down = ScaledTranslation(0, -BELOW_PT / 72, ax.figure.dpi_scale_trans)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0), bbox_transform=ax.transAxes + down,
              ncol=ncol, frameon=False)


def legend_below(fig, ncol=3):
    """One legend for every panel of `fig` (each label once) below them, in a
    constrained layout: it covers no data."""
    entries = {}
    for ax in fig.axes:
        entries.update({label: h for h, label in zip(*ax.get_legend_handles_labels())
                        if label not in entries})
        if ax.get_legend():
            ax.get_legend().remove()
    fig.set_layout_engine("constrained")
    if entries:  # nothing drawn (e.g. every bin empty): no legend
        fig.legend(entries.values(), entries.keys(), loc="outside lower center",
                   frameon=False, ncol=min(ncol, len(entries)))


def _draw_job(job, targets, keep=False, label=""):
    """Draw one job and write it to its temporary files; the Figure if kept."""
    stem, draw, _ = job
    with style() as plt:
        fig = draw(plt)
        write_figure(fig, targets, keep, label)
    return fig if keep else None


_JOBS = []  # what forked workers draw: (job, temporary files, label), set before the fork


def _quiet_worker():
    """A figure worker leaves SIGINT and SIGTERM to the run: Ctrl-C reaches the whole
    process group, and the run, stopping, ends its workers (PendingFigures.cancel)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _draw_in_worker(index):
    job, targets, label = _JOBS[index]
    _draw_job(job, targets, label=label)
    return index


class PendingFigures:
    """Figures being drawn, in forked worker processes or already here; wait()
    returns ([(file names, caption)], figures kept open)."""

    def __init__(self, written, kept, pool=None, result=None):
        self.written, self.kept, self.pool, self.result = written, kept, pool, result

    def wait(self):
        if self.pool is not None:
            try:
                self.result.get()
            finally:
                self.cancel()
        return self.written, self.kept

    def cancel(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


def draw_figures(jobs, plots_dir, out, show=False, formats=("png",), workers=None, label=""):
    """Start drawing `jobs` (figure_jobs) into plots_dir through `out`
    (outputs.AtomicOutputs), each under `label` (write_figure): with several cores,
    in forked worker processes (one per core, at most one per figure), so the
    caller can write its other outputs meanwhile; here, one by one, when there is
    one core or the figures are to be shown.  Returns a PendingFigures."""
    written, targets = [], []
    for stem, _, caption in jobs:
        files = [out.tmp(os.path.join(plots_dir, f"{stem}.{fmt}")) for fmt in formats]
        targets.append(files)
        written.append(([f"{stem}.{fmt}" for fmt in formats], caption))
    if workers is None:
        workers = min(len(os.sched_getaffinity(0)), len(jobs))
    if show or workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        kept = [_draw_job(job, files, show, label) for job, files in zip(jobs, targets)]
        return PendingFigures(written, [f for f in kept if f is not None])
    with style():  # matplotlib, mplhep and the fonts loaded once, before the fork
        pass
    _JOBS[:] = [(job, files, label) for job, files in zip(jobs, targets)]
    pool = multiprocessing.get_context("fork").Pool(workers, initializer=_quiet_worker)
    return PendingFigures(written, [], pool, pool.map_async(_draw_in_worker, range(len(jobs)),
                                                            chunksize=1))
