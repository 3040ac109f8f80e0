"""Write a realistic synthetic Allen `kalman_validator` file (the schema: README.md, "Data").

Real files are LHCb-internal Monte Carlo, so the demo and every test run on this one:
directory `kalman_validator`, tree `kalman_ip_tree`, one entry per track, every branch a
32-bit float. The physics is a plausible caricature: ghosts have larger chi2/ndof, fewer
hits, lower momentum and worse matching residuals; real matching tracks follow the magnet
kick; a few ghosts are nearly straight (huge best_pt); a small fraction of tracks carries
a NaN or inf.

The features are drawn from explicit class-conditional densities, each feature given the
ones before it (TrackDensity), so the generator knows the exact log-likelihood ratio
log p(features | ghost) - log p(features | real) of every track: the branch `truth_llr`,
the best any classifier of these features can do (never a feature itself). The other
branches are drawn afterwards, from the features and hidden variables.

    python make_sample.py -o sample.root --tracks 200000 --track matching
"""

import os
import time

import numpy as np
from scipy.special import betaln, gammaln, logsumexp, ndtr

from cli import Parser, run_cli
from features import DEFAULT_TREE, LIMIT, TRACK_TYPES, features_for, own_branches
from outputs import AtomicOutputs, check_output_file
from report import print_headline, sample_headline
from rootwrite import write_root
from utils import GhostError, log

# Every branch of the real tree, in the order written, and the generator's truth.
BRANCHES = [
    # track state and fit
    "z", "x", "y", "tx", "ty", "qop", "first_qop", "best_qop", "best_pt",
    "chi2", "chi2V", "chi2T", "chi2UT", "ndof", "ndofV", "ndofT",
    # impact parameters
    "kalman_ip", "kalman_ipx", "kalman_ipy", "kalman_ip_chi2", "kalman_docaz",
    "velo_ip", "velo_ipx", "velo_ipy", "velo_ip_chi2", "velo_docaz",
    # hit counts
    "n_velo", "n_ut", "n_scifi",
    # pattern recognition
    "pr_forward_quality", "pr_match_chi2", "pr_match_dtx", "pr_match_dty",
    "pr_match_dx", "pr_match_dy", "pr_seed_chi2", "pr_velo_ut_chi2",
    # simulation truth
    "ghost", "mcp_p", "mcp_x", "mcp_y", "mcp_z",
    # this generator's truth: log p(features | ghost) / p(features | real)
    LIMIT,
]
COUNTERS = ["n_velo", "n_ut", "n_scifi", "ndof", "ndofV", "ndofT"]
# Branches that may carry a NaN/inf besides the features (never counters or truth).
NONFINITE_EXTRA = ["tx", "ty", "best_qop", "chi2V", "chi2T", "kalman_ip",
                   "kalman_ip_chi2", "velo_ip", "velo_ip_chi2", "pr_velo_ut_chi2"]
MAGNET_KICK = 1.2e3  # MeV: pr_match_dtx ~ 1.2 GeV * qop for real matching tracks
LOG_2PI = np.log(2 * np.pi)
REAL, GHOST = 0, 1


def _log_normal_pdf(x, mu, sigma):
    return -0.5 * ((x - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * LOG_2PI


def _log_gamma_pdf(x, shape, scale):
    return (shape - 1) * np.log(x) - x / scale - gammaln(shape) - shape * np.log(scale)


def _log_beta_pdf(x, a, b):
    return (a - 1) * np.log(x) + (b - 1) * np.log1p(-x) - betaln(a, b)


def _log_lognormal_pdf(x, mu, sigma):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, _log_normal_pdf(np.log(np.maximum(x, 1e-300)), mu, sigma)
                        - np.log(np.maximum(x, 1e-300)), -np.inf)


def _log_within_pdf(x, sigma, limit):
    """A normal residual inside the pattern recognition's cut |x| < limit, where the
    tracks outside it are replaced by a uniform draw inside (see _within)."""
    outside = 2 * ndtr(-limit / sigma)
    dens = np.exp(_log_normal_pdf(x, 0.0, sigma)) + outside / (2 * limit)
    return np.where(np.abs(x) < limit, np.log(dens), -np.inf)


def _within(rng, x, limit):
    """Keep |x| < limit (the pattern-recognition cut): redraw outliers uniformly inside."""
    out = np.abs(x) >= limit
    x[out] = rng.uniform(-limit, limit, out.sum())
    return x


class TrackDensity:
    """The features' density for one class (REAL or GHOST): every feature is drawn
    given the ones before it, and log_density is the exact sum of the conditional
    log densities (a mixture over the one hidden flag, the straight ghosts)."""

    # per class (real, ghost)
    VELO_HITS = ((12.5, 2.5), (11.0, 3.0))              # normal, rounded, in [3, 23]
    SCIFI_HITS = ((0.10, 0.25, 0.65), (0.16, 0.30, 0.54))  # P(10, 11, 12)
    UT_HITS = ((0.05, 0.03, 0.07, 0.30, 0.55), (0.15, 0.08, 0.17, 0.30, 0.30))  # P(0..4)
    MOMENTUM = ((np.log(10000.0), 0.7), (np.log(6000.0), 0.75))  # log-normal p (MeV)
    STRAIGHT = (0.0, 0.02)         # fraction of nearly straight tracks: qop ~ N(0, 3e-6)
    FIRST_QOP = (0.06, 0.09)       # relative resolution of first_qop around qop
    SIN_THETA = (0.55, 0.65)       # logit-normal width of best_pt * |qop| ~ sin(theta)
    CHI2 = ((1.2, 1.0, 0.01, 4.0, 0.8), (1.5, 0.5, 0.06, 8.0, 1.2))
    # chi2: Gamma(mean scale * ndof, shape k * ndof / 2), and a tail of that fraction
    # with chi2 / ndof log-normal around its median, width
    FORWARD_QUALITY = ((1.6, 9.0), (2.2, 5.0))          # Beta(a, b)
    MATCH_CHI2 = ((1.3, 5.0), (1.4, 4.4))               # 2 * Beta(a, b)
    SEED_CHI2 = ((np.log(0.6), 1.0), (np.log(1.1), 1.5))  # log-normal
    GHOST_DTX = (0.18, 0.11)       # ghosts: +-kick of an unrelated seed, normal around it

    def __init__(self, cls, track):
        self.c, self.track = cls, track
        mu, sigma = self.VELO_HITS[cls]
        k = np.arange(3, 24)
        cdf = ndtr((np.r_[k - 0.5, 23.5] - mu) / sigma)
        cdf[0], cdf[-1] = 0.0, 1.0  # the rounding clips at 3 and 23
        self.velo_pmf = np.diff(cdf)

    # --- sampling ---------------------------------------------------------------
    def sample(self, rng, n):
        """n tracks of this class: (features, hidden) dicts of float64 arrays."""
        c = self.c
        x = {"n_velo": rng.choice(np.arange(3.0, 24.0), n, p=self.velo_pmf),
             "n_scifi": rng.choice([10.0, 11.0, 12.0], n, p=self.SCIFI_HITS[c])}
        n_ut = rng.choice(np.arange(5.0), n, p=self.UT_HITS[c])
        x["ndof"] = 2 * x["n_velo"] - 4 + x["n_scifi"] + n_ut - 1
        straight = rng.random(n) < self.STRAIGHT[c]
        qop = rng.choice([-1.0, 1.0], n) / rng.lognormal(*self.MOMENTUM[c], n)
        qop[straight] = rng.normal(0, 3e-6, straight.sum())
        x["qop"] = qop
        spread = np.where(straight, 5e-6, self.FIRST_QOP[c] * np.abs(qop))
        x["first_qop"] = qop + rng.normal(0, 1, n) * spread
        sin_theta = 1 / (1 + np.exp(-rng.normal(-1.66, self.SIN_THETA[c], n)))
        x["best_pt"] = sin_theta / np.abs(qop)
        x["chi2"] = self._sample_chi2(rng, x["ndof"])
        if self.track == "forward":
            x["pr_forward_quality"] = rng.beta(*self.FORWARD_QUALITY[c], n)
        else:
            self._sample_matching(rng, x)
        return x, {"n_ut": n_ut, "sin_theta": sin_theta}

    def _sample_chi2(self, rng, ndof):
        scale, k, tail, median, width = self.CHI2[self.c]
        chi2 = rng.gamma(k * ndof / 2, 2 * scale / k)
        in_tail = rng.random(len(ndof)) < tail
        chi2[in_tail] = ndof[in_tail] * rng.lognormal(np.log(median), width, in_tail.sum())
        return chi2

    def _sample_matching(self, rng, x):
        n, aq = len(x["qop"]), np.abs(x["qop"]) * 1e4  # errors grow at low momentum
        if self.c == REAL:  # dtx follows the magnet kick of the track's own qop
            x["pr_match_dtx"] = MAGNET_KICK * x["qop"] + rng.normal(0, 1, n) * (0.055 + 0.03 * aq)
        else:  # a VELO track paired with another particle's seed: an unrelated kick
            kick, width = self.GHOST_DTX
            x["pr_match_dtx"] = rng.choice([-kick, kick], n) + rng.normal(0, width, n)
        for name, limit, (real, ghost) in self._residuals(aq):
            x[name] = _within(rng, rng.normal(0, 1, n) * (real if self.c == REAL else ghost),
                              limit)
        x["pr_match_chi2"] = 2 * rng.beta(*self.MATCH_CHI2[self.c], n)
        x["pr_seed_chi2"] = rng.lognormal(*self.SEED_CHI2[self.c], n)

    @staticmethod
    def _residuals(aq):
        """(branch, cut, (real width, ghost width)) of the matching residuals."""
        return (("pr_match_dty", 0.02, (0.004, 0.0055)),
                ("pr_match_dx", 20.0, (2.5 + 1.5 * aq, 4.5)),
                ("pr_match_dy", 150.0, (25 + 10 * aq, 40.0)))

    # --- exact log density ------------------------------------------------------
    def log_density(self, x):
        """log p(features | this class) of every track (float64)."""
        c = self.c
        n_ut = x["ndof"] - (2 * x["n_velo"] - 4) - x["n_scifi"] + 1
        logp = (np.log(self.velo_pmf[(x["n_velo"] - 3).astype(int).clip(0, 20)])
                + np.log(np.take(self.SCIFI_HITS[c], (x["n_scifi"] - 10).astype(int).clip(0, 2)))
                + np.log(np.take(self.UT_HITS[c], n_ut.astype(int).clip(0, 4))))
        logp = logp + self._log_momentum(x) + self._log_chi2(x["chi2"], x["ndof"])
        if self.track == "forward":
            return logp + _log_beta_pdf(x["pr_forward_quality"], *self.FORWARD_QUALITY[c])
        return logp + self._log_matching(x)

    def _log_momentum(self, x):
        """qop, first_qop and best_pt: a mixture over 'nearly straight'."""
        c, qop = self.c, x["qop"]
        aqop = np.abs(qop)
        u = x["best_pt"] * aqop  # ~ sin(theta), logit-normal; best_pt = u / |qop|
        with np.errstate(divide="ignore", invalid="ignore"):
            log_pt = (_log_normal_pdf(np.log(u / (1 - u)), -1.66, self.SIN_THETA[c])
                      - np.log(u * (1 - u)) + np.log(aqop))
        log_pt = np.where((u > 0) & (u < 1), log_pt, -np.inf)
        with np.errstate(divide="ignore", invalid="ignore"):
            p = 1 / aqop  # qop = +-1 / p: density of p times |dp/dqop| = p^2, sign 1/2
            main = (_log_lognormal_pdf(p, *self.MOMENTUM[c]) + 2 * np.log(p) + np.log(0.5)
                    + _log_normal_pdf(x["first_qop"], qop, self.FIRST_QOP[c] * aqop))
        parts = [np.log1p(-self.STRAIGHT[c]) + main]
        if self.STRAIGHT[c] > 0:
            parts.append(np.log(self.STRAIGHT[c]) + _log_normal_pdf(qop, 0.0, 3e-6)
                         + _log_normal_pdf(x["first_qop"], qop, 5e-6))
        return logsumexp(np.stack(parts), axis=0) + log_pt

    def _log_chi2(self, chi2, ndof):
        scale, k, tail, median, width = self.CHI2[self.c]
        with np.errstate(divide="ignore", invalid="ignore"):
            main = np.log1p(-tail) + _log_gamma_pdf(chi2, k * ndof / 2, 2 * scale / k)
            tails = np.log(tail) + _log_lognormal_pdf(chi2 / ndof, np.log(median), width) \
                - np.log(ndof)
        return np.logaddexp(main, tails)

    def _log_matching(self, x):
        c, aq = self.c, np.abs(x["qop"]) * 1e4
        dtx = x["pr_match_dtx"]
        if c == REAL:
            logp = _log_normal_pdf(dtx, MAGNET_KICK * x["qop"], 0.055 + 0.03 * aq)
        else:
            kick, width = self.GHOST_DTX
            logp = np.log(0.5) + np.logaddexp(_log_normal_pdf(dtx, -kick, width),
                                              _log_normal_pdf(dtx, kick, width))
        for name, limit, widths in self._residuals(aq):
            logp = logp + _log_within_pdf(x[name], widths[c], limit)
        with np.errstate(divide="ignore", invalid="ignore"):
            logp = logp + _log_beta_pdf(x["pr_match_chi2"] / 2, *self.MATCH_CHI2[c]) - np.log(2)
            logp = logp + _log_lognormal_pdf(x["pr_seed_chi2"], *self.SEED_CHI2[c])
        return logp


def truth_llr(features, track):
    """log p(features | ghost) - log p(features | real) under this generator."""
    return (TrackDensity(GHOST, track).log_density(features)
            - TrackDensity(REAL, track).log_density(features))


def draw_features(rng, ghost, track):
    """The features of every track, each class from its own density."""
    n = len(ghost)
    feats, hidden = {}, {}
    for cls in (REAL, GHOST):
        rows = np.flatnonzero(ghost == cls)
        x, h = TrackDensity(cls, track).sample(rng, len(rows))
        for out, part in ((feats, x), (hidden, h)):
            for name, values in part.items():
                out.setdefault(name, np.zeros(n))[rows] = values
    return feats, hidden


def draw_other_branches(rng, ghost, x, hidden):
    """Every branch that is not a feature, from the features and hidden variables:
    slopes, the fit's parts, origin and impact parameters, truth."""
    n = len(ghost)
    b = {}
    sin_theta = np.minimum(hidden["sin_theta"], 0.95)
    phi = rng.uniform(0, 2 * np.pi, n)
    tan_theta = sin_theta / np.sqrt(1 - sin_theta**2)
    b["tx"], b["ty"] = tan_theta * np.cos(phi), tan_theta * np.sin(phi)
    b["best_qop"] = np.sign(x["qop"]) * sin_theta / x["best_pt"]  # best_pt = sin / |best_qop|
    b["n_ut"] = hidden["n_ut"]
    b["ndofV"] = 2 * x["n_velo"] - 4
    b["ndofT"] = x["n_scifi"] + b["n_ut"] - 1
    share = rng.gamma(np.stack([b["ndofV"], b["ndofT"] - b["n_ut"], b["n_ut"]]) + 1e-3)
    share /= share.sum(axis=0)  # the fit's chi2 split over VELO, T stations and UT
    b["chi2V"], b["chi2T"], b["chi2UT"] = x["chi2"] * share
    p = 1 / np.maximum(np.abs(x["qop"]), 1e-9)
    # origin: most real tracks from the PV, some from b/c decays; ghosts have none
    flight = np.where(rng.random(n) < 0.12, rng.exponential(8.0, n), 0.0)
    origin = (rng.normal(0, 0.015, n) + flight * b["tx"],
              rng.normal(0, 0.015, n) + flight * b["ty"], rng.normal(0, 45, n) + flight)
    b["z"] = origin[2] + np.where(ghost, rng.normal(0, 40, n), rng.normal(0, 0.3, n))
    b["x"] = np.where(ghost, rng.normal(0, 0.12, n), origin[0]) + rng.normal(0, 0.012, n)
    b["y"] = np.where(ghost, rng.normal(0, 0.12, n), origin[1]) + rng.normal(0, 0.012, n)
    b.update(_impact_parameters(rng, ghost, sin_theta * p, flight * tan_theta))
    b["pr_velo_ut_chi2"] = np.where(b["n_ut"] > 0, np.where(
        ghost, rng.gamma(1.5, 2.0, n), rng.gamma(1.5, 0.8, n)), 0.0)
    b["ghost"] = ghost.astype(float)  # truth, in Allen's convention: ghosts carry zeros
    for name, value in zip(("mcp_p", "mcp_x", "mcp_y", "mcp_z"), (p, *origin)):
        b[name] = np.where(ghost, 0.0, value)
    return b


def _impact_parameters(rng, ghost, pt, transverse_flight):
    """Kalman and VELO impact parameters w.r.t. the PV (mm); resolution ~ 12 um +
    20 um / pT[GeV], ghosts 2.5 times worse and displaced."""
    n = len(ghost)
    sigma = 0.012 + 0.020 / (np.maximum(pt, 50.0) / 1e3)
    disp = np.where(ghost, rng.exponential(0.08, n),
                    transverse_flight * rng.uniform(0.1, 1.0, n))
    phi = rng.uniform(0, 2 * np.pi, n)
    smear = sigma * np.where(ghost, 2.5, 1.0)
    ipx = disp * np.cos(phi) + rng.normal(0, 1, n) * smear
    ipy = disp * np.sin(phi) + rng.normal(0, 1, n) * smear
    b = {}
    for pre, ix, iy, s in (("kalman", ipx, ipy, sigma),
                           ("velo", ipx + rng.normal(0, 1, n) * sigma * 1.3,
                            ipy + rng.normal(0, 1, n) * sigma * 1.3, sigma * 1.6)):
        ip = np.hypot(ix, iy)
        b[f"{pre}_ip"], b[f"{pre}_ipx"], b[f"{pre}_ipy"] = ip, ix, iy
        b[f"{pre}_ip_chi2"] = (ip / s) ** 2
        along = np.abs(ix * np.cos(phi) + iy * np.sin(phi))
        b[f"{pre}_docaz"] = along + np.abs(rng.normal(0, 0.2 * s, n))
    return b


def break_some(rng, cols, features, nonfinite):
    """A few broken fits: one NaN or inf in one branch of each affected track."""
    n = len(cols["ghost"])
    bad = rng.permutation(n)[:round(nonfinite * n)]
    candidates = [b for b in features if b not in COUNTERS] + NONFINITE_EXTRA
    which = rng.integers(0, len(candidates), bad.size)
    value = rng.choice(np.array([np.nan, np.inf, -np.inf], dtype=np.float32), bad.size)
    for i, name in enumerate(candidates):
        sel = which == i
        cols[name][bad[sel]] = value[sel]


def generate(tracks=200000, track="matching", ghost_rate=0.15, seed=42, nonfinite=0.002):
    """Columns of a synthetic kalman_ip_tree: dict branch -> float32 array (no writing)."""
    features = features_for(track)  # a clear ValueError for an unknown track type
    if int(tracks) < 1:
        raise ValueError(f"tracks must be >= 1, got {tracks}")
    if not 0 < ghost_rate < 1:
        raise ValueError(f"ghost rate must be in (0, 1), got {ghost_rate}")
    if not 0 <= nonfinite < 1:
        raise ValueError(f"non-finite fraction must be in [0, 1), got {nonfinite}")
    n = int(tracks)
    rng = np.random.default_rng(seed)
    ghost = np.zeros(n, dtype=bool)
    ghost[rng.permutation(n)[:round(ghost_rate * n)]] = True  # exactly round(rate * n)
    x, hidden = draw_features(rng, ghost, track)
    branches = {**draw_other_branches(rng, ghost, x, hidden), **x}
    for name in (name for other in TRACK_TYPES for name in own_branches(other)):
        branches.setdefault(name, np.zeros(n))  # the other type's pr_* stay 0, as in Allen
    branches[LIMIT] = truth_llr(x, track)
    cols = {name: np.ascontiguousarray(branches[name], dtype=np.float32) for name in BRANCHES}
    break_some(rng, cols, features, nonfinite)
    return cols


def make_sample(path="sample.root", tracks=200000, track="matching", ghost_rate=0.15,
                seed=42, fmt="ttree", nonfinite=0.002):
    """Generate and write one file (TTree or RNTuple); return a small summary dict."""
    if fmt not in ("ttree", "rntuple"):
        raise ValueError(f"unknown format {fmt!r}: use ttree or rntuple")
    t0 = time.time()
    cols = generate(tracks, track, ghost_rate, seed, nonfinite)
    # ROOT 6.40 writes an RNTuple inside a TDirectory, so both formats live at the same
    # path, kalman_validator/kalman_ip_tree, and readers open either by name.
    # ZSTD level 1: 1M tracks in a few seconds (the default takes twice as long).
    with AtomicOutputs() as out:
        write_root(out.tmp(path), DEFAULT_TREE, cols, fmt=fmt, zstd_level=1, shown=path)
    bad = np.zeros(len(cols["ghost"]), dtype=bool)
    for v in cols.values():
        bad |= ~np.isfinite(v)
    nonfin = int(bad.sum())
    return {"path": os.path.abspath(path), "tracks": len(cols["ghost"]),
            "ghosts": int(cols["ghost"].sum()), "nonfinite": nonfin,
            "seconds": time.time() - t0}


OUTPUTS = [("files named by options:", [
    ("-o/--output FILE.root", "every branch of the schema (README, \"Data\") and the "
     f"generator's {LIMIT}, one entry per track, all float32")])]


def main(argv=None):
    ap = Parser("Write a synthetic Allen kalman_validator file (tree\n"
                "kalman_validator/kalman_ip_tree, all branches float32).", OUTPUTS)
    ap.add_argument("-o", "--output", default="sample.root", help="output ROOT file")
    ap.add_argument("--tracks", type=int, default=200000, help="number of tracks")
    ap.add_argument("--track", choices=TRACK_TYPES, default="matching",
                    help="track type: which pr_* branches are filled")
    ap.add_argument("--ghost-rate", type=float, default=0.15, help="ghost fraction, in (0,1)")
    ap.add_argument("--seed", type=int, default=42, help="random seed")
    ap.add_argument("--format", choices=["ttree", "rntuple"], default="ttree", dest="fmt",
                    help="storage format (same path for both)")
    ap.add_argument("--nonfinite", type=float, default=0.002,
                    help="fraction of tracks with one NaN/inf value, in [0,1)")
    args = ap.parse_args(argv)
    if args.tracks < 1:
        raise GhostError(f"--tracks must be >= 1, got {args.tracks}")
    if not 0 < args.ghost_rate < 1:
        raise GhostError(f"--ghost-rate must be in (0, 1), got {args.ghost_rate}")
    if not 0 <= args.nonfinite < 1:
        raise GhostError(f"--nonfinite must be in [0, 1), got {args.nonfinite}")
    check_output_file(args.output, "-o", (".root",))
    log(f"generating {args.tracks:,} {args.track} tracks for {args.output} ...")
    s = make_sample(args.output, args.tracks, args.track, args.ghost_rate, args.seed,
                    args.fmt, args.nonfinite)
    print_headline(*sample_headline(s, args.track, args.fmt))


if __name__ == "__main__":
    run_cli(main)
