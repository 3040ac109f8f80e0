"""Write a realistic synthetic Allen `kalman_validator` file (schema: shared/docs/ghost-data.md).

Real files are LHCb-internal Monte Carlo, so the demo and every test run on this one:
directory `kalman_validator`, tree `kalman_ip_tree`, one entry per track, every branch a
32-bit float. The physics is a plausible caricature, tuned so that ghost/real is neither
trivial nor hopeless: a small MLP on the default features reaches ROC AUC ~0.96
(matching) and ~0.93 (forward), and no single feature gives more than ~0.8.

    python make_sample.py -o sample.root --tracks 200000 --track matching
"""

import argparse
import os
import time

import numpy as np

from features import DEFAULT_TREE, TRACK_TYPES, features_for, own_branches
from outputs import AtomicOutputs
from rootio import write_root
from utils import GhostError, log, run_cli

# Every branch of the real tree, in the order written.
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
]
COUNTERS = ["n_velo", "n_ut", "n_scifi", "ndof", "ndofV", "ndofT"]
# Branches that may carry a NaN/inf besides the features (never counters or truth).
NONFINITE_EXTRA = ["tx", "ty", "best_qop", "chi2V", "chi2T", "kalman_ip",
                   "kalman_ip_chi2", "velo_ip", "velo_ip_chi2", "pr_velo_ut_chi2"]
MAGNET_KICK = 1.2e3  # MeV: pr_match_dtx ~ 1.2 GeV * qop for real matching tracks


class Tracks:
    """The tracks being generated: the random stream, which are ghosts, and the
    branches drawn so far.  Each draw_* step adds branches in a fixed order of
    random draws, so a seed always gives the same file."""

    def __init__(self, n, ghost_rate, seed):
        self.rng = np.random.default_rng(seed)
        self.n = n
        self.ghost = np.zeros(n, dtype=bool)
        self.ghost[self.rng.permutation(n)[:round(ghost_rate * n)]] = True  # exactly
        self.branches = {}

    def pick(self, real, fake):
        """Per track: `real` for a real track, `fake` for a ghost."""
        return np.where(self.ghost, fake, real)


def draw_kinematics(t):
    """Momentum, charge, slopes and the three curvature estimates (MeV, mm).
    Returns the true momentum and q/p, which later steps depend on."""
    rng, n = t.rng, t.n
    p = t.pick(2300 + rng.lognormal(np.log(8000), 0.8, n),
               2000 + rng.lognormal(np.log(4500), 0.75, n))
    qop_true = rng.choice([-1.0, 1.0], n) / p
    tx = rng.normal(0, 0.15, n)
    ty = rng.normal(0, 0.12, n)
    # measured curvature: real tracks ~0.5-3 % resolution, ghosts much worse
    qop = qop_true * (1 + t.pick(rng.normal(0, 0.008, n), rng.normal(0, 0.12, n)))
    first_qop = qop_true * (1 + t.pick(rng.normal(0, 0.06, n), rng.normal(0, 0.09, n)))
    best_qop = qop * (1 + t.pick(rng.normal(0, 0.004, n), rng.normal(0, 0.05, n)))
    # a few ghosts are nearly straight: qop ~ 0, hence the huge best_pt tail
    straight = t.ghost & (rng.random(n) < 0.02)
    k = straight.sum()
    qop[straight] = rng.normal(0, 3e-6, k)
    first_qop[straight] = qop[straight] + rng.normal(0, 5e-6, k)
    best_qop[straight] = qop[straight] * (1 + rng.normal(0, 0.05, k))
    best_qop[straight & (rng.random(n) < 0.1)] = 1e-9  # (almost) no curvature at all
    slope2 = tx**2 + ty**2
    best_pt = np.sqrt(slope2 / (1 + slope2)) / np.maximum(np.abs(best_qop), 1e-12)
    t.branches.update(tx=tx, ty=ty, qop=qop, first_qop=first_qop, best_qop=best_qop,
                      best_pt=best_pt)
    return p, qop_true


def draw_hits(t):
    """Hit counts and degrees of freedom: ghosts are shorter in the VELO and lose
    SciFi/UT hits more often."""
    rng, n = t.rng, t.n
    n_velo = np.clip(np.rint(t.pick(rng.normal(12.5, 2.5, n), rng.normal(11.0, 3.0, n))), 3, 23)
    n_scifi = t.pick(rng.choice([10.0, 11.0, 12.0], n, p=[0.10, 0.25, 0.65]),
                     rng.choice([10.0, 11.0, 12.0], n, p=[0.16, 0.30, 0.54]))
    n_ut = t.pick(rng.choice([0.0, 1, 2, 3, 4], n, p=[0.05, 0.03, 0.07, 0.30, 0.55]),
                  rng.choice([0.0, 1, 2, 3, 4], n, p=[0.15, 0.08, 0.17, 0.30, 0.30]))
    # ndof: 2 VELO measurements per hit, 1 per UT/SciFi hit, 5 track parameters
    ndofV = 2 * n_velo - 4
    ndofT = n_scifi + n_ut - 1
    t.branches.update(n_velo=n_velo, n_ut=n_ut, n_scifi=n_scifi,
                      ndof=np.maximum(ndofV + ndofT, 2), ndofV=ndofV, ndofT=ndofT)


def draw_fit_chi2(t):
    """Fit chi2 per sub-detector: real ~ chi2(ndof) x 1-1.5, ghosts larger with a
    heavy tail."""
    rng, n, b = t.rng, t.n, t.branches
    scale = t.pick(rng.lognormal(np.log(1.2), 0.15, n), rng.lognormal(np.log(1.5), 0.5, n))
    tail = t.ghost & (rng.random(n) < 0.04)
    scale[tail] *= 1 + rng.pareto(1.1, tail.sum()) * 5
    scale = np.minimum(scale, 450)  # largest chi2 ~ 2.6e4, as seen on real data
    chi2V = scale * rng.chisquare(b["ndofV"])
    chi2T = scale * rng.chisquare(b["ndofT"]) * t.pick(1.0, rng.lognormal(0.2, 0.3, n))
    chi2UT = np.where(b["n_ut"] > 0, scale * rng.chisquare(np.maximum(b["n_ut"], 1)), 0.0)
    b.update(chi2=chi2V + chi2T + chi2UT, chi2V=chi2V, chi2T=chi2T, chi2UT=chi2UT)


def draw_origin_and_ip(t, p):
    """Origin (most real tracks from the PV, some from b/c decays; ghosts have none),
    the state at the beam line and impact parameters; returns the true origin."""
    rng, n, b = t.rng, t.n, t.branches
    pv_z = rng.normal(0, 45, n)
    flight = np.where(rng.random(n) < 0.12, rng.exponential(8.0, n), 0.0)
    origin_x = rng.normal(0, 0.015, n) + flight * b["tx"]
    origin_y = rng.normal(0, 0.015, n) + flight * b["ty"]
    origin_z = pv_z + flight
    b["z"] = origin_z + t.pick(rng.normal(0, 0.3, n), rng.normal(0, 40, n))
    b["x"] = t.pick(origin_x, rng.normal(0, 0.12, n)) + rng.normal(0, 0.012, n)
    b["y"] = t.pick(origin_y, rng.normal(0, 0.12, n)) + rng.normal(0, 0.012, n)
    # impact parameters w.r.t. the PV (mm); resolution ~ 12 um + 20 um/pT[GeV]
    slope2 = b["tx"]**2 + b["ty"]**2
    pt_gev = np.maximum(np.sqrt(slope2 / (1 + slope2)) * p, 50.0) / 1e3
    sigma = 0.012 + 0.020 / pt_gev
    disp = t.pick(flight * np.sqrt(slope2) * rng.uniform(0.1, 1.0, n), rng.exponential(0.08, n))
    phi = rng.uniform(0, 2 * np.pi, n)
    ipx = disp * np.cos(phi) + rng.normal(0, 1, n) * sigma * t.pick(1.0, 2.5)
    ipy = disp * np.sin(phi) + rng.normal(0, 1, n) * sigma * t.pick(1.0, 2.5)
    vx = ipx + rng.normal(0, 1, n) * sigma * 1.3  # straight VELO line: worse
    vy = ipy + rng.normal(0, 1, n) * sigma * 1.3
    for pre, ix, iy, s in (("kalman", ipx, ipy, sigma), ("velo", vx, vy, sigma * 1.6)):
        ip = np.hypot(ix, iy)
        b[f"{pre}_ip"], b[f"{pre}_ipx"], b[f"{pre}_ipy"] = ip, ix, iy
        b[f"{pre}_ip_chi2"] = (ip / s) ** 2
        along = np.abs(ix * np.cos(phi) + iy * np.sin(phi))
        b[f"{pre}_docaz"] = along + np.abs(rng.normal(0, 0.2 * s, n))
    b["pr_velo_ut_chi2"] = np.where(
        b["n_ut"] > 0, t.pick(rng.gamma(1.5, 0.8, n), rng.gamma(1.5, 2.0, n)), 0.0)
    return origin_x, origin_y, origin_z


def draw_pattern_recognition(t, track, qop_true):
    """The chosen track type's pr_* branches; the other type's stay 0, as in Allen."""
    rng, n, b = t.rng, t.n, t.branches
    for name in (name for other in TRACK_TYPES for name in own_branches(other)):
        b[name] = np.zeros(n)
    if track == "forward":
        b["pr_forward_quality"] = t.pick(rng.beta(1.6, 9.0, n), rng.beta(2.2, 5.0, n))
        return
    aq = np.abs(qop_true) * 1e4  # extrapolation errors grow at low momentum
    # dtx: real follows the magnet kick of its own qop; a ghost pairs a VELO track with
    # another particle's SciFi seed, so its kick is unrelated to the track's qop
    other_qop = rng.choice([-1.0, 1.0], n) / (2000 + rng.lognormal(np.log(4500), 0.75, n))
    b["pr_match_dtx"] = t.pick(MAGNET_KICK * b["qop"] + rng.normal(0, 0.055 + 0.03 * aq, n),
                               MAGNET_KICK * other_qop + rng.normal(0, 0.06, n))
    # position/slope residuals at the matching plane, inside the matching cuts
    b["pr_match_dty"] = _within(
        rng, t.pick(rng.normal(0, 0.004, n), rng.normal(0, 0.0055, n)), 0.02)
    b["pr_match_dx"] = _within(
        rng, t.pick(rng.normal(0, 2.5 + 1.5 * aq, n), rng.normal(0, 4.5, n)), 20)
    b["pr_match_dy"] = _within(
        rng, t.pick(rng.normal(0, 25 + 10 * aq, n), rng.normal(0, 40, n)), 150)
    b["pr_match_chi2"] = 2 * t.pick(rng.beta(1.3, 5.0, n), rng.beta(1.4, 4.4, n))
    b["pr_seed_chi2"] = np.clip(t.pick(rng.lognormal(np.log(0.6), 1.0, n),
                                       rng.lognormal(np.log(1.1), 1.5, n)), 0.004, 1.3e3)


def break_some(t, cols, features, nonfinite):
    """A few broken fits: one NaN or inf in one branch of each affected track."""
    rng, n = t.rng, t.n
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
    t = Tracks(int(tracks), ghost_rate, seed)
    p, qop_true = draw_kinematics(t)
    draw_hits(t)
    draw_fit_chi2(t)
    origin = draw_origin_and_ip(t, p)
    draw_pattern_recognition(t, track, qop_true)
    # truth, in Allen's convention: ghosts carry zeros
    b = t.branches
    b["ghost"] = t.ghost.astype(float)
    for name, value in zip(("mcp_p", "mcp_x", "mcp_y", "mcp_z"), (p, *origin)):
        b[name] = np.where(t.ghost, 0.0, value)
    cols = {name: np.ascontiguousarray(b[name], dtype=np.float32) for name in BRANCHES}
    break_some(t, cols, features, nonfinite)
    return cols


def _within(rng, x, limit):
    """Keep |x| < limit (the pattern-recognition cut): redraw outliers uniformly inside."""
    out = np.abs(x) >= limit
    x[out] = rng.uniform(-limit, limit, out.sum())
    return x


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


def main(argv=None):
    ap = argparse.ArgumentParser(description="Write a synthetic Allen kalman_validator file "
                                 "(tree kalman_validator/kalman_ip_tree, all branches float32).")
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

    def fail(msg):  # argparse's own complaints: one line too, no usage dump
        raise GhostError(msg)

    ap.error = fail
    args = ap.parse_args(argv)
    if args.tracks < 1:
        fail(f"--tracks must be >= 1, got {args.tracks}")
    if not 0 < args.ghost_rate < 1:
        fail(f"--ghost-rate must be in (0, 1), got {args.ghost_rate}")
    if not 0 <= args.nonfinite < 1:
        fail(f"--nonfinite must be in [0, 1), got {args.nonfinite}")
    s = make_sample(args.output, args.tracks, args.track, args.ghost_rate, args.seed,
                    args.fmt, args.nonfinite)
    log(f"wrote {s['tracks']} {args.track} tracks ({s['ghosts']} ghosts, "
        f"{s['nonfinite']} with non-finite values) in {s['seconds']:.1f} s "
        f"-> {s['path']} [{args.fmt}]")


if __name__ == "__main__":
    run_cli(main)
