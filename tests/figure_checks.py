"""A figure's defects, found after layout on the Agg canvas: check(fig) -> [one line
per defect], none for a clean figure.  The rules:

- text: no two text artists overlap (titles, the suptitle, axis labels, the tick
  labels drawn, offset texts, annotations, legend texts and titles, colorbar
  labels); none is cut at the image's edge, as drawing.write_figure saves what the
  figure draws, whole (its ink, or the tight bounding box where ink reaches an edge);
- frame: every data point lies inside its axes' frame with headroom, a marker's
  whole size inside (Line2D points and markers, errorbar bars and caps, scatter
  offsets, bars, stairs and histogram outlines).  Exempt: a coordinate an artist
  pins to the frame on purpose (its sticky edge: a bar's base, a histogram's
  range), the part of a curve without markers beyond limits set by hand (a zoom),
  values a log axis cannot draw (<= 0);
- legend: no legend's box holds a drawn data point, curves sampled every 2 px;
- integer axes: an axis whose locator is integer-only (MaxNLocator(integer=True)),
  one named by the caller, or a linear one whose points all sit at whole numbers
  ticks at whole numbers only;
- fonts: every text resolves to one font family, the style's when given.

Tests call it on the figures the tools write (recording: drawing.write_figure checked
before it saves), and on defective figures to show each rule catches its defect.
"""
import contextlib
import json
import os
import re

import numpy as np

HEADROOM_PT = 1.0  # a data point's distance from the frame, at least
OVERLAP_PX = 1.0   # two texts overlap when their boxes share more than this each way
NO_MARKER = (None, "None", "none", "", " ")


def check(fig, family=None, integer_x=False):
    """The defects of `fig` (laid out), one line each: see the module's rules.
    family: the font family every text must resolve to; integer_x: every axes'
    x axis counts (ticks at whole numbers only)."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    px = fig.dpi / 72.0
    texts = _texts(fig)
    boxes = [(name, t.get_window_extent(r)) for name, t in texts]
    defects = _overlaps(boxes)  # none is cut at the edge: write_figure saves it whole
    legends = [leg for leg in [ax.get_legend() for ax in fig.axes] + fig.legends if leg]
    for ax in _data_axes(fig):
        defects += _clipped(ax, px)
        for leg in legends:
            defects += _covered(ax, leg.get_window_extent(r))
        for axis, name in ((ax.xaxis, "x"), (ax.yaxis, "y")):
            defects += _fractional_ticks(ax, axis, name, integer_x and name == "x")
    defects += _fonts(texts, family)
    return defects


def style_family():
    """The font family of drawing.style()'s text."""
    from matplotlib.font_manager import FontProperties

    from drawing import style
    with style():
        return _family(FontProperties())


# --- text ----------------------------------------------------------------------

def _texts(fig):
    """[(name, Text)] of every non-empty visible text the figure draws."""
    found = []

    def add(t, where):
        if (t is not None and t.get_visible() and t.get_text().strip()
                and all(t is not other for _, other in found)):  # the suptitle: a text too
            found.append((f"{where}: {t.get_text()[:40]}", t))

    def add_legend(leg, where):
        if leg is not None and leg.get_visible():
            add(leg.get_title(), f"{where} legend title")
            for t in leg.get_texts():
                add(t, f"{where} legend")

    add(fig._suptitle, "suptitle")
    for t in fig.texts:
        add(t, "figure text")
    for leg in fig.legends:
        add_legend(leg, "figure")
    for i, ax in enumerate(fig.axes):
        if not ax.get_visible():
            continue
        where = f"axes {i}"
        for t in (ax.title, ax._left_title, ax._right_title, *ax.texts):
            add(t, where)
        for axis, name in ((ax.xaxis, "x"), (ax.yaxis, "y")):
            add(axis.label, f"{where} {name} label")
            add(axis.get_offset_text(), f"{where} {name} offset")
            for tick in axis._update_ticks():  # the ticks drawn: inside the view
                for label in (tick.label1, tick.label2):
                    add(label, f"{where} {name} tick")
        add_legend(ax.get_legend(), where)
    return found


def _overlaps(boxes):
    defects = []
    for i, (a, ba) in enumerate(boxes):
        for b, bb in boxes[i + 1:]:
            w = min(ba.x1, bb.x1) - max(ba.x0, bb.x0)
            h = min(ba.y1, bb.y1) - max(ba.y0, bb.y0)
            if w > OVERLAP_PX and h > OVERLAP_PX:
                defects.append(f"text {a!r} overlaps {b!r}")
    return defects


def _family(props):
    from matplotlib.font_manager import findfont, get_font
    return get_font(findfont(props)).family_name


def _fonts(texts, family):
    seen = {}
    for name, t in texts:
        seen.setdefault(_family(t.get_fontproperties()), name)
    want = family or next(iter(seen), None)
    return [f"text {name!r} in font {f!r}, not {want!r}" for f, name in seen.items()
            if f != want]


# --- data ----------------------------------------------------------------------

def _data_axes(fig):
    """The axes that plot data: not a colorbar's, not an image's."""
    return [ax for ax in fig.axes if ax.get_visible() and not ax.images
            and not hasattr(ax, "_colorbar")]


def _artists(ax, px):
    """[(name, artist, data points (n, 2), transform, margin px (x, y), kind)] of every
    data artist of `ax`; kind: "marker", "curve" (a line without markers) or "edge"
    (bars, outlines, error bars)."""
    from matplotlib.collections import LineCollection, PathCollection
    found = []
    for line in ax.lines:
        xy = np.asarray(line.get_xydata(), dtype=float).reshape(-1, 2)
        if not line.get_visible() or not len(xy):
            continue
        name = f"line {line.get_label()!r}"
        if line.get_marker() not in NO_MARKER:
            half = (line.get_markersize() + line.get_markeredgewidth()) / 2 * px
            thin = line.get_markeredgewidth() / 2 * px
            margin = {"_": (half, thin), "|": (thin, half)}.get(line.get_marker(), (half, half))
            found.append((name, line, xy, line.get_transform(), margin, "marker"))
        if line.get_linestyle() not in NO_MARKER:
            found.append((name, line, xy, line.get_transform(), (0, 0), "curve"))
    for c in ax.collections:
        if not c.get_visible():
            continue
        if isinstance(c, PathCollection) and len(c.get_offsets()):
            half = np.sqrt(np.max(c.get_sizes())) / 2 * px
            found.append((f"scatter {c.get_label()!r}", c, np.asarray(c.get_offsets(), float),
                          c.get_offset_transform(), (half, half), "marker"))
        elif isinstance(c, LineCollection) and c.get_segments():
            xy = np.concatenate([np.asarray(s, float) for s in c.get_segments()])
            found.append(("error bars" if c.get_label().startswith("_") else
                          f"lines {c.get_label()!r}", c, xy, c.get_transform(), (0, 0), "edge"))
    for p in ax.patches:
        if not p.get_visible():
            continue
        xy = p.get_patch_transform().transform(p.get_path().vertices)
        found.append((f"{type(p).__name__} {p.get_label()!r}", p, xy, p.get_data_transform(),
                      (0, 0), "edge"))
    return found


def _clipped(ax, px):
    """Data points outside the frame or on it (see the module's rules)."""
    defects, box = [], ax.bbox
    room = HEADROOM_PT * px
    hand = (not ax.get_autoscalex_on(), not ax.get_autoscaley_on())
    for name, artist, xy, transform, margin, kind in _artists(ax, px):
        if transform != ax.transData:  # axvline, axvspan: drawn in axes coordinates
            continue
        sticky = (artist.sticky_edges.x, artist.sticky_edges.y)
        bad = np.zeros(len(xy), dtype=bool)
        for d, (scale, lo, hi) in enumerate(((ax.get_xscale(), box.x0, box.x1),
                                             (ax.get_yscale(), box.y0, box.y1))):
            if kind == "curve" and hand[d]:
                continue
            v = xy[:, d]
            ok = np.isfinite(v) & ((v > 0) if scale == "log" else True)
            for s in sticky[d]:
                ok &= ~np.isclose(v, s, rtol=1e-9, atol=1e-12)
            at = ax.transData.transform(np.where(ok[:, None], xy, 1.0))[:, d]
            # a side of the frame on the artist's sticky edge (a histogram's base) holds it
            pins = [_display(ax, d, s) for s in sticky[d]]
            if not any(abs(p - lo) < 1 for p in pins):
                bad |= ok & (at < lo + margin[d] + room)
            if not any(abs(p - hi) < 1 for p in pins):
                bad |= ok & (at > hi - margin[d] - room)
        if bad.any():
            x, y = xy[bad][0]
            defects.append(f"{name} cut by the frame or on it: {int(bad.sum())} points, "
                           f"e.g. ({x:.4g}, {y:.4g})")
    return defects


def _display(ax, d, value):
    xy = [value, 1.0] if d == 0 else [1.0, value]
    with np.errstate(all="ignore"):
        return ax.transData.transform([xy])[0, d]


def _covered(ax, legend_box):
    """Data points of ax drawn inside a legend's box."""
    defects = []
    inner = legend_box.padded(-1)
    for name, _, xy, transform, _, kind in _artists(ax, 1.0):
        with np.errstate(all="ignore"):
            at = transform.transform(xy)
        if kind != "marker":
            at = _densify(at)
        at = at[np.isfinite(at).all(axis=1)]
        inside = ((at[:, 0] > ax.bbox.x0) & (at[:, 0] < ax.bbox.x1)
                  & (at[:, 1] > ax.bbox.y0) & (at[:, 1] < ax.bbox.y1))
        under = (inside & (at[:, 0] > inner.x0) & (at[:, 0] < inner.x1)
                 & (at[:, 1] > inner.y0) & (at[:, 1] < inner.y1))
        if under.any():
            defects.append(f"legend covers {name} ({int(under.sum())} points)")
    return defects


def _densify(at, step=2.0):
    """Points every `step` px along the polyline `at` (display coordinates)."""
    if len(at) < 2:
        return at
    out = [at[:1]]
    for a, b in zip(at[:-1], at[1:]):
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            continue
        n = int(min(np.hypot(*(b - a)) // step, 5000)) + 1
        out.append(a + (b - a) * np.linspace(0, 1, n + 1)[1:, None])
    return np.concatenate(out)


def _fractional_ticks(ax, axis, name, integer):
    from matplotlib.ticker import MaxNLocator
    locator = axis.get_major_locator()
    if not integer and isinstance(locator, MaxNLocator):
        integer = locator._integer
    if not integer and axis.get_scale() == "linear":
        values = [np.asarray(line.get_xydata(), float)[:, 0 if name == "x" else 1]
                  for line in ax.lines if line.get_transform() == ax.transData
                  and len(line.get_xydata())]
        v = np.concatenate(values) if values else np.array([])
        v = v[np.isfinite(v)]
        integer = len(np.unique(v)) > 1 and np.array_equal(v, np.round(v))
    if not integer:
        return []
    lo, hi = sorted(axis.get_view_interval())
    ticks = [t for t in axis.get_majorticklocs() if lo <= t <= hi]
    bad = [t for t in ticks if not float(t).is_integer()]
    return [f"{name} axis counts but ticks at {bad}"] if bad else []


# --- the tools' figures ------------------------------------------------------------

def stem_of(path):
    """The figure's file stem of a final or temporary (outputs.AtomicOutputs) path."""
    base = os.path.basename(path)
    hidden = re.fullmatch(r"\.(.+)\.tmp\d+_\d+\.\w+", base)
    return hidden.group(1) if hidden else os.path.splitext(base)[0]


# the figures whose x axis counts: hits, degrees of freedom, epochs
COUNTING = {"n_velo", "n_scifi", "ndof", "kinematics_n_velo", "kinematics_n_scifi", "history"}


@contextlib.contextmanager
def recording(folder, integer_x=COUNTING):
    """While open, every figure drawing.write_figure writes (in forked workers too) is
    checked once saved: folder/<stem>.json holds its defects.  integer_x: the stems
    whose x axes count."""
    import drawing
    os.makedirs(folder, exist_ok=True)
    family = style_family()
    original = drawing.write_figure

    def write(fig, files, keep=False, label=""):
        stem, canvas, found = stem_of(files[0]), fig.canvas, {}
        draw = canvas.draw

        def checked_draw(*args, **kwargs):  # checked as drawn: laid out, at the written
            draw(*args, **kwargs)           # dpi, in the style it is drawn in
            if not found:
                found["defects"] = None  # check() draws too
                found.update(defects=check(fig, family, stem in integer_x),
                             texts=[t.get_text() for t in fig.texts if t is not fig._suptitle])

        canvas.draw = checked_draw
        original(fig, files, True, label)
        del canvas.draw
        found["formats"] = [os.path.splitext(f)[1][1:] for f in files if os.path.isfile(f)]
        with open(os.path.join(folder, f"{stem}.json"), "w") as f:
            json.dump(found, f)
        if not keep:
            drawing.pyplot().close(fig)

    drawing.write_figure = write
    try:
        yield folder
    finally:
        drawing.write_figure = original


def recorded(folder):
    """{stem: {"defects": [...], "formats": [written], "texts": [the figure's own]}} of
    what recording wrote into folder."""
    return {name[:-5]: json.loads(open(os.path.join(folder, name)).read())
            for name in sorted(os.listdir(folder)) if name.endswith(".json")}
