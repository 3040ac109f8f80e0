"""The HTML pages, one writer for all: every plots folder's index.html (inference.py's
analysis, training.py's report, make_dataset.py --plot's features), readable offline.
A page says the answer first (a headline block of report.py), then what the run was
made of in small tables (input, model, data set, hyperparameters), the wide tables,
every data file and the run's other pages as relative links, and every figure in a
grid that fits a laptop screen.  Every text is escaped here; markup made here is Html."""
import csv
import datetime
import io
import os
from dataclasses import dataclass, field
from html import escape
from urllib.parse import quote

from dataset import SPLITS, load_meta, meta_path, spectators_path, split_paths
from provenance import toolkit_version
from utils import GhostError

PAGE = "index.html"  # every plots folder's page
REPORT = "training_report"  # training.py --save's report folder, beside the model files
STYLE = """body{font-family:"DejaVu Sans",Arial,sans-serif;max-width:1400px;margin:0 auto;
padding:0 16px 24px;color:#222;font-size:14px}h1{font-size:21px;margin:14px 0 8px}
h2{font-size:16px;margin:16px 0 6px}nav,.headline{background:#eef3f9;border:1px solid #c9d6e6;
border-radius:4px;padding:6px 12px;margin:6px 0}.headline ul{margin:4px 0;padding-left:20px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:0 20px}
table.facts{width:100%}.facts th{width:30%}
.wide{overflow-x:auto}table{border-collapse:collapse;margin:2px 0 6px;font-size:13px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f6f6f6}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:14px}
figure{margin:0;border:1px solid #ddd;padding:6px}img{max-width:100%;height:auto;display:block}
figcaption{font-size:13px;margin-top:4px}"""


class Html(str):
    """Markup made here, its text escaped already: put in a page as it is."""


@dataclass
class Parts:
    """What a page shows beside its figures: the `headline` (title, lines), small
    `sections` and full-width `tables` [(heading, Html)], the data `files` and the
    run's other `pages` [(path, what)] (paths absolute or relative to the working
    directory: linked relative to the page's folder), its `title` (None: the caller's)."""
    headline: tuple = None
    sections: list = field(default_factory=list)
    tables: list = field(default_factory=list)
    files: list = field(default_factory=list)
    pages: list = field(default_factory=list)
    title: str = None


def _cell(v, tag="td", align=False):
    """One cell; with `align`, a number is right-aligned."""
    if isinstance(v, Html):
        return f"<{tag}>{v}</{tag}>"
    text = str(v)
    try:
        float(text.replace(",", "").rstrip("%"))
        number = align
    except ValueError:
        number = False
    return f"<{tag}{' class=n' if number else ''}>{escape(text)}</{tag}>"


def table(head, rows):
    """A table of text (escaped) or Html cells, under the `head` cells (None: none)."""
    lines = [("<tr>" + "".join(_cell(c, "th") for c in head) + "</tr>") if head else ""]
    lines += ["<tr>" + "".join(_cell(c, align=True) for c in r) + "</tr>" for r in rows]
    return Html(f'<div class="wide"><table>{"".join(lines)}</table></div>')


def facts(pairs):
    """A two-column table of (name, value) pairs or a dict; None values left out."""
    items = pairs.items() if isinstance(pairs, dict) else pairs
    return Html('<table class="facts">' + "".join(f"<tr>{_cell(k, 'th')}{_cell(v)}</tr>"
                                    for k, v in items if v is not None) + "</table>")


def _short(cell):
    """A CSV cell for reading: a number with a fraction to 4 significant digits."""
    try:
        return f"{float(cell):.4g}" if "." in cell else cell
    except ValueError:
        return cell


def csv_table(text):
    """A CSV file's text (its first line the head) as a table, fractions to 4 digits."""
    rows = list(csv.reader(io.StringIO(text)))
    return table(rows[0], [[_short(c) for c in r] for r in rows[1:]])


def link(path, folder, text=None):
    """An <a> to `path`, relative to `folder` (the page's), showing `text` (default
    the file's name)."""
    target = quote(os.path.relpath(path, folder).replace(os.sep, "/"))
    return Html(f'<a href="{escape(target)}">{escape(text or os.path.basename(path))}</a>')


def render(title, parts, figures, folder):
    """The page's text: `figures` [(file names in `folder`, caption)], the first
    name shown, every name linked."""
    nav = " &middot; ".join(f"{link(p, folder, what)}" for p, what in parts.pages)
    title = parts.title or title
    body = [f"<h1>{escape(title)}</h1>"]
    body += [f"<nav>Other pages of this run: {nav}</nav>"] if parts.pages else []
    if parts.headline:
        head, lines = parts.headline
        body.append(f'<div class="headline"><b>{escape(head)}</b><ul>'
                    + "".join(f"<li>{escape(line)}</li>" for line in lines) + "</ul></div>")
    if parts.sections:
        body.append('<div class="cards">' + "".join(f"<section><h2>{escape(h)}</h2>{html}"
                                                    "</section>" for h, html in parts.sections)
                    + "</div>")
    body += [f"<h2>{escape(h)}</h2>{html}" for h, html in parts.tables]
    shown = [(names, caption) for names, caption in figures if names]  # none: not drawn
    if shown:
        body.append('<h2>Figures</h2><div class="grid">' + "".join(
            f'<figure><img src="{escape(quote(names[0]))}" alt="{escape(names[0])}">'
            f"<figcaption>{escape(caption)} "
            + " ".join(link(os.path.join(folder, n), folder) for n in names)
            + "</figcaption></figure>" for names, caption in shown) + "</div>")
    if parts.files:
        body.append("<h2>Files</h2>" + table(["file", "what it holds"], [
            (link(p, folder), what) for p, what in parts.files]))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(title)}</title>\n<style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write(out, folder, title, parts, figures=()):
    """`folder`'s index.html through `out` (outputs.AtomicOutputs)."""
    out.save_bytes(os.path.join(folder, PAGE), render(title, parts, figures, folder).encode())


def run_facts():
    """When and with which version of the toolkit a page was made."""
    version, commit = toolkit_version()
    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "toolkit": f"ghost-tracks {version}", "git commit": commit}


def features_page(prefix):
    """make_dataset.py --plot's page of the dataset `prefix`, where its JSON names one
    that exists (None otherwise: only a link is at stake)."""
    try:
        page = load_meta(prefix).features_page if isinstance(prefix, str) else None
    except GhostError:
        return None
    return page if page and os.path.isfile(page) else None


def _input_file(f, folder):
    """A dataset's input file as recorded: provenance.file_record's name, size and
    hash (no path: not linked), or an older toolkit's path (linked where it exists)."""
    if isinstance(f, dict):
        return escape(f"{f.get('name')} ({f.get('bytes', 0):,} bytes, SHA-256 "
                      f"{str(f.get('sha256'))[:12]}...)")
    return link(f, folder) if os.path.isfile(f) else escape(f)


def dataset_parts(meta, prefix, folder):
    """The data set (dataset.DatasetMeta of `prefix`) for a page in `folder`: (its facts
    and its tracks per class and split, Html; its files [(path, what)])."""
    weights, counts = meta.class_weights, meta.counts
    info = facts({
        "prefix": os.path.relpath(prefix, folder) if prefix else None, "track type": meta.track,
        "features": f"{len(meta.features)}: {', '.join(meta.features)}" if meta.features
        else None,
        "input files": Html(", ".join(_input_file(f, folder) for f in meta.input_files)),
        "tracks read": f"{meta.tracks_read:,}" if meta.tracks_read is not None else None,
        "dropped (a non-finite value)": (f"{meta.tracks_dropped_nonfinite:,}"
                                         if meta.tracks_dropped_nonfinite is not None else None),
        "balance": f"{meta.balance}: {meta.mix()}",
        "class weights": (f"ghost {weights['ghost']:.3f}, real {weights['real']:.3f}"
                          if weights else None),
        "normalized": "yes (min-max)" if meta.normalized else "no", "seed": meta.seed})
    split_table = table(["split", "ghosts", "real tracks", "total"], [
        (s, f"{n['ghost']:,}", f"{n['real']:,}", f"{n['ghost'] + n['real']:,}")
        for s, n in counts.items()]) if counts else ""
    files = [(meta_path(prefix), "the data set's record: features, input files, counts, "
              "balance, scalings")] if prefix else []
    for split in SPLITS if prefix else ():
        files += [(p, f"the {split} split's {what}") for p, what in zip(
            split_paths(prefix, split), ("features", "labels (1 = ghost)"))]
        files += [(spectators_path(prefix, split), f"the {split} split's spectators "
                   f"({', '.join(meta.spectators)})")] if meta.spectators else []
    return Html(info + split_table), files


def inference_parts(context, folder, source, model):
    """inference.py's page beside its analysis: the input (`source`, a file or a data
    set's prefix), the model (file) and the run (from the evaluation's context, which
    names files without their paths), the model's training report and the data set's
    features page where they exist."""
    is_dataset = context["input_kind"] == "dataset"
    shown = meta_path(source) if is_dataset else source
    tracks = context["tracks"]
    rate = context.get("tracks_per_second")
    section = facts({
        "input": link(shown, folder) if os.path.isfile(shown) else source,
        "kind": "a data set's test split" if is_dataset else
                "ROOT files, every entry, file after file" if "files" in context["input"]
                else "a ROOT file, every entry",
        "tracks": f"{tracks:,} ({context['tracks_nonfinite']:,} with a non-finite feature"
                  f"{' or derived input' if context.get('derived') else ''})",
        "track type": context.get("track"),
        "features": ", ".join(context.get("features") or ()),
        "derived inputs": "; ".join(f"{d['name']} := {d['fit'] or d['expression']}"
                                    for d in context.get("derived") or ()) or None,
        "model": link(model, folder) if os.path.isfile(model) else model,
        "model kind": f"{context.get('model_kind')}{' (INT8)' if context.get('int8') else ''}",
        "network": context.get("network"),
        "multiply-adds per track": (f"{context['macs_per_track']:,}"
                                    if context.get("macs_per_track") else None),
        "scoring": context.get("scoring"),
        "speed": f"{rate / 1e6:,.2f} M tracks/s" if rate else None})
    pages = []
    report = os.path.join(os.path.dirname(model), REPORT, PAGE)
    if os.path.isfile(report):
        pages.append((report, "the model's training report"))
    features = features_page(source) if is_dataset else None
    pages += [(features, "the data set's features")] if features else []
    return Parts(sections=[("Input", section), ("Run", facts(run_facts()))], pages=pages)
