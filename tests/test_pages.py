"""pages.py: the index.html of every folder a run writes (make_dataset.py --plot's
features, training.py --save's report, inference.py's analysis): every link resolves to
a file, every figure and data file of the folder is linked, the pages link each other,
the training page shows the run, the model, the data set, the hyperparameters, the
search and training.py's table; every text is escaped."""
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("href", "src")]


def check_page(page):
    """Every href and src of `page` is relative and names an existing file, and every
    file of the page's folder is linked: the files linked (resolved)."""
    parser = _Links()
    parser.feed(page.read_text())
    targets = set()
    for href in parser.links:
        assert not urlparse(href).scheme and not href.startswith("/"), (page, href)
        target = (page.parent / unquote(href)).resolve()
        assert target.is_file(), (page, href)
        targets.add(target)
    unlinked = [n for n in os.listdir(page.parent)
                if n != "index.html" and (page.parent / n).resolve() not in targets]
    assert not unlinked, (page, unlinked)
    return targets


def cells(page, first, after=""):
    """The cells of the first table row of `page` (after the text `after`) whose first
    cell is `first`."""
    for row in re.findall(r"<tr>(.*?)</tr>", page[page.index(after):]):
        found = re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row)
        if found and found[0] == first:
            return found
    raise AssertionError(f"no row {first!r}")


def test_every_link_resolves_and_every_file_is_linked(trained_model, feature_plots,
                                                      analysis_run):
    """The pages of one run (conftest): make_dataset.py --plot's features page,
    training.py --save's report, inference.py's analysis of the dataset (INT8
    compared, the ranking)."""
    prefix, plots = feature_plots
    data, models = Path(prefix).parent, trained_model.models
    features = check_page(plots / "index.html")
    assert (data / "ds_features.json").resolve() in features
    assert (data / "ds_test_labels.npy").resolve() in features
    report = check_page(models / "training_report" / "index.html")
    for name in ("ghost_model.onnx", "ghost_model.pth", "ghost_model_int8_config.json"):
        assert (models / name).resolve() in report, name
    analysis = check_page(analysis_run / "index.html")
    for page in ("training_report/index.html", "index.html"):  # the run's other pages
        assert (models / page if "training" in page else plots / page).resolve() \
            in analysis, page
    assert (models / "ghost_model.onnx").resolve() in analysis  # the input card
    text = (analysis_run / "index.html").read_text()
    for name in ("metrics.json", "thresholds.csv", "comparison.csv", "ranking.csv"):
        assert f'<a href="{name}">{name}</a>' in text, name
    assert "Other pages of this run" in text and "ROC AUC" in text and "git commit" in text
    assert json.loads((data / "ds_features.json").read_text())["features_page"] == str(
        plots / "index.html")


def test_training_page_shows_the_run_model_data_and_the_four_classifiers(trained_model):
    page = (trained_model.models / "training_report" / "index.html").read_text()
    config = json.loads((trained_model.models / "ghost_model_config.json").read_text())
    int8 = json.loads((trained_model.models / "ghost_model_int8_config.json").read_text())
    prov = config["provenance"]
    assert cells(page, "git commit")[1] == prov["commit"]
    assert cells(page, "date")[1] == prov["created"]
    assert cells(page, "multiply-adds per track")[1] == f"{config['macs']:,}"
    for split, counts in prov["dataset"]["counts"].items():
        assert cells(page, split)[1:] == [f"{counts['ghost']:,}", f"{counts['real']:,}",
                                          f"{counts['ghost'] + counts['real']:,}"]
    for key in ("lr", "weight_decay"):  # the chosen trial's hyperparameters
        assert cells(page, key)[1] == f"{prov['hyperparameters'][key]:.4g}"
    assert cells(page, "activation")[1] == config["activation"]
    assert cells(page, "trials")[1] == str(prov["search"]["trials"])
    for row, record in (("test", config["metrics"]["test"]),
                        ("test (INT8)", int8["metrics"]["test"]),
                        ("baseline (test)", config["metrics"]["baseline"]),
                        ("limit (test)", config["metrics"]["limit"])):
        shown = cells(page, row, "as training.py printed them")  # loss, acc, AUC, rej@...
        assert shown[3] == f"{record['auc']:.4f}" and shown[6] == \
            f"{record['rejection@0.99']:.4f}", row
    # the accuracy's cut named as training.py used it: each model's own threshold
    assert "accuracy at each model&#x27;s threshold, its 99.0% working point" in page
    assert "accuracy at 0.5" not in page
    trials = (trained_model.models / "training_report" / "search_trials.csv").read_text()
    head = trials.splitlines()[0].split(",")
    assert f"<tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>" in page
    assert "the chosen network:" in page and "gap to the limit" in page


def test_text_is_escaped_and_links_quoted(tmp_path):
    from pages import Parts, facts, features_page, link, render
    parts = Parts(("<b>head</b>", ["a < b & c"]), sections=[("<i>card</i>", facts({"<k>": "<v>"}))],
                  files=[(str(tmp_path / "a b#1.csv"), "<what>")])
    page = render("<script>x</script>", parts, [(["f&g.png"], "<cap>")], str(tmp_path))
    for raw in ("<script>", "<b>head", "<i>card", "<k>", "<v>", "<what>", "<cap>"):
        assert raw not in page, raw
    assert "&lt;script&gt;" in page and "a &lt; b &amp; c" in page
    assert '<a href="a%20b%231.csv">a b#1.csv</a>' in page and 'src="f%26g.png"' in page
    assert link(str(tmp_path / "x" / "y.png"), str(tmp_path / "z")) == \
        '<a href="../x/y.png">y.png</a>'
    (tmp_path / "ds_features.json").write_text('{"features_page": "nowhere/index.html"}')
    assert features_page(str(tmp_path / "ds")) is None  # a page that is gone: no link
    Path(tmp_path / "index.html").write_text("")
    (tmp_path / "ds_features.json").write_text(
        json.dumps({"features_page": str(tmp_path / "index.html")}))
    assert features_page(str(tmp_path / "ds")) == str(tmp_path / "index.html")
    (tmp_path / "ds_features.json").write_text("[")
    assert features_page(str(tmp_path / "ds")) is None and features_page(7) is None
