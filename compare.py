"""Several classifiers on the same tracks: the model inference.py analyses, the
models of --compare (float and INT8, other architectures), and the known optimum
where the input has it (the generator's log-likelihood ratio).  One curve each;
a table and the numbers of the comparison figure."""
import os
from dataclasses import dataclass

import numpy as np

from metrics import EFFICIENCIES, Roc, SortedScores, rejection_at
from utils import GhostError


@dataclass
class Curve:
    """One classifier's ROC and figures of merit on the shared tracks."""
    name: str
    fpr: np.ndarray         # real tracks called ghost, ascending (metrics.Roc.kept)
    tpr: np.ndarray         # ghosts called ghost
    auc: float
    rejection: list         # metrics.rejection_at
    macs: int = None        # multiply-adds per track, where known

    @classmethod
    def of(cls, name, scores, labels, macs=None):
        ss = SortedScores.of(scores, labels)
        roc = Roc(ss)
        ss.scores = ss.labels = None  # each class's sorted scores are all rejection_at needs
        return cls(name, *roc.kept(), roc.auc(), rejection_at(ss), macs)

    @classmethod
    def from_analysis(cls, name, analysis, macs=None):
        fpr, tpr, _ = analysis.roc
        return cls(name, fpr, tpr, analysis.auc, analysis.rejection, macs)

    def rejection_at(self, efficiency):
        return next(r["ghost_rejection"] for r in self.rejection
                    if r["target_efficiency"] == efficiency)

    def record(self):
        return {"name": self.name, "auc": self.auc, "macs": self.macs,
                "ghost_rejection": self.rejection}


def curve_names(paths):
    """Short names for the models' curves: the file name, with its folder where two
    file names are the same."""
    base = [os.path.basename(p) for p in paths]
    return [os.path.join(os.path.basename(os.path.dirname(os.path.abspath(p))), b)
            if base.count(b) > 1 else b for p, b in zip(paths, base)]


def compared_model_paths(paths):
    """--compare arguments as (model, config or None): an .onnx describes itself, a
    .pth needs its ghost_model_config.pkl/.json beside it."""
    out = []
    for path in paths:
        if not path.endswith((".pth", ".pt")):
            out.append((path, None))
            continue
        stem = os.path.splitext(path)[0]
        configs = [f"{stem}_config{ext}" for ext in (".pkl", ".json")
                   if os.path.isfile(f"{stem}_config{ext}")]
        if not configs:
            raise GhostError(f"--compare {path}: a .pth model needs its config beside it "
                             f"({stem}_config.pkl or .json); or compare the .onnx file")
        out.append((path, configs[0]))
    return out


def gap_to_limit(model, limit):
    """How close a model comes to the optimum: AUC difference and the fraction of the
    optimum's ghost rejection reached at each efficiency."""
    return {"auc_gap": limit.auc - model.auc,
            **{f"rejection_fraction@{e:g}": (model.rejection_at(e) / limit.rejection_at(e)
                                              if limit.rejection_at(e) > 0 else float("nan"))
               for e in EFFICIENCIES}}


def format_comparison(curves, n):
    heads = ["AUC"] + [f"rej@{e:.1%}" for e in EFFICIENCIES] + ["MACs"]
    lines = [f"comparison on the same {n:,} tracks:",
             f"  {'':<32}" + "".join(f"{h:>10}" for h in heads)]
    for c in curves:
        cells = [c.auc] + [c.rejection_at(e) for e in EFFICIENCIES]
        lines.append(f"  {c.name[:32]:<32}" + "".join(f"{v:>10.4f}" for v in cells)
                     + f"{'' if c.macs is None else f'{c.macs:,}':>10}")
    return "\n".join(lines)


def comparison_csv(curves):
    heads = ["model", "auc"] + [f"rejection@{e:g}" for e in EFFICIENCIES] + ["macs"]
    lines = [",".join(heads)]
    for c in curves:
        cells = [c.name.replace(",", ";"), f"{c.auc:.6g}"]
        cells += [f"{c.rejection_at(e):.6g}" for e in EFFICIENCIES]
        lines.append(",".join(cells + ["" if c.macs is None else str(c.macs)]))
    return "\n".join(lines) + "\n"
