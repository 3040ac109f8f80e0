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

from features import DEFAULT_TREE, TRACK_TYPES, features_for
from utils import AtomicOutputs, GhostError, log, run_cli, write_root

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
TRUTH = ["ghost", "mcp_p", "mcp_x", "mcp_y", "mcp_z"]
FORWARD_ONLY = ["pr_forward_quality"]
MATCHING_ONLY = ["pr_match_chi2", "pr_match_dtx", "pr_match_dty", "pr_match_dx",
                 "pr_match_dy", "pr_seed_chi2"]
# Branches that may carry a NaN/inf besides the features (never counters or truth).
NONFINITE_EXTRA = ["tx", "ty", "best_qop", "chi2V", "chi2T", "kalman_ip",
                   "kalman_ip_chi2", "velo_ip", "velo_ip_chi2", "pr_velo_ut_chi2"]
MAGNET_KICK = 1.2e3  # MeV: pr_match_dtx ~ 1.2 GeV * qop for real matching tracks


def generate(tracks=200000, track="matching", ghost_rate=0.15, seed=42, nonfinite=0.002):
    """Columns of a synthetic kalman_ip_tree: dict branch -> float32 array (no writing)."""
    features = features_for(track)  # a clear ValueError for an unknown track type
    if int(tracks) < 1:
        raise ValueError(f"tracks must be >= 1, got {tracks}")
    if not 0 < ghost_rate < 1:
        raise ValueError(f"ghost rate must be in (0, 1), got {ghost_rate}")
    if not 0 <= nonfinite < 1:
        raise ValueError(f"non-finite fraction must be in [0, 1), got {nonfinite}")
    rng = np.random.default_rng(seed)
    n = int(tracks)
    g = np.zeros(n, dtype=bool)
    g[rng.permutation(n)[:round(ghost_rate * n)]] = True  # exactly round(rate*N) ghosts
    c = {}

    def pick(real, fake):
        """Per track: `real` where real track, `fake` where ghost."""
        return np.where(g, fake, real)

    # --- momentum and direction (MeV, mm) ---
    p = pick(2300 + rng.lognormal(np.log(8000), 0.8, n),
             2000 + rng.lognormal(np.log(4500), 0.75, n))
    q = rng.choice([-1.0, 1.0], n)
    qop_true = q / p
    tx = rng.normal(0, 0.15, n)
    ty = rng.normal(0, 0.12, n)
    # measured curvature: real tracks ~0.5-3 % resolution, ghosts much worse
    qop = qop_true * (1 + pick(rng.normal(0, 0.008, n), rng.normal(0, 0.12, n)))
    first_qop = qop_true * (1 + pick(rng.normal(0, 0.06, n), rng.normal(0, 0.09, n)))
    best_qop = qop * (1 + pick(rng.normal(0, 0.004, n), rng.normal(0, 0.05, n)))
    # a few ghosts are nearly straight: qop ~ 0, hence the huge best_pt tail
    straight = g & (rng.random(n) < 0.02)
    k = straight.sum()
    qop[straight] = rng.normal(0, 3e-6, k)
    first_qop[straight] = qop[straight] + rng.normal(0, 5e-6, k)
    best_qop[straight] = qop[straight] * (1 + rng.normal(0, 0.05, k))
    best_qop[straight & (rng.random(n) < 0.1)] = 1e-9  # (almost) no curvature at all
    t2 = tx**2 + ty**2
    sin_theta = np.sqrt(t2 / (1 + t2))
    best_pt = sin_theta / np.maximum(np.abs(best_qop), 1e-12)
    c.update(tx=tx, ty=ty, qop=qop, first_qop=first_qop, best_qop=best_qop, best_pt=best_pt)

    # --- hits: ghosts are shorter in the VELO and lose SciFi/UT hits more often ---
    n_velo = np.clip(np.rint(pick(rng.normal(12.5, 2.5, n), rng.normal(11.0, 3.0, n))), 3, 23)
    n_scifi = pick(rng.choice([10.0, 11.0, 12.0], n, p=[0.10, 0.25, 0.65]),
                   rng.choice([10.0, 11.0, 12.0], n, p=[0.16, 0.30, 0.54]))
    n_ut = pick(rng.choice([0.0, 1, 2, 3, 4], n, p=[0.05, 0.03, 0.07, 0.30, 0.55]),
                rng.choice([0.0, 1, 2, 3, 4], n, p=[0.15, 0.08, 0.17, 0.30, 0.30]))
    # ndof: 2 VELO measurements per hit, 1 per UT/SciFi hit, 5 track parameters
    ndofV = 2 * n_velo - 4
    ndofT = n_scifi + n_ut - 1
    ndof = np.maximum(ndofV + ndofT, 2)
    c.update(n_velo=n_velo, n_ut=n_ut, n_scifi=n_scifi, ndof=ndof, ndofV=ndofV, ndofT=ndofT)

    # --- chi2: real ~ chi2(ndof) * 1-1.5; ghosts larger with a heavy tail ---
    scale = pick(rng.lognormal(np.log(1.2), 0.15, n), rng.lognormal(np.log(1.5), 0.5, n))
    tail = g & (rng.random(n) < 0.04)
    scale[tail] *= 1 + rng.pareto(1.1, tail.sum()) * 5
    scale = np.minimum(scale, 450)  # largest chi2 ~ 2.6e4, as seen on real data
    chi2V = scale * rng.chisquare(ndofV)
    chi2T = scale * rng.chisquare(ndofT) * pick(1.0, rng.lognormal(0.2, 0.3, n))
    chi2UT = np.where(n_ut > 0, scale * rng.chisquare(np.maximum(n_ut, 1)), 0.0)
    c.update(chi2=chi2V + chi2T + chi2UT, chi2V=chi2V, chi2T=chi2T, chi2UT=chi2UT)

    # --- origin: most real tracks from the PV, some from b/c decays; ghosts have none ---
    pv_z = rng.normal(0, 45, n)
    flight = np.where(rng.random(n) < 0.12, rng.exponential(8.0, n), 0.0)
    mcp_x = rng.normal(0, 0.015, n) + flight * tx
    mcp_y = rng.normal(0, 0.015, n) + flight * ty
    mcp_z = pv_z + flight
    # state at the point closest to the beam line
    c["z"] = mcp_z + pick(rng.normal(0, 0.3, n), rng.normal(0, 40, n))
    c["x"] = pick(mcp_x, rng.normal(0, 0.12, n)) + rng.normal(0, 0.012, n)
    c["y"] = pick(mcp_y, rng.normal(0, 0.12, n)) + rng.normal(0, 0.012, n)

    # --- impact parameters w.r.t. the PV (mm); resolution ~ 12 um + 20 um/pT[GeV] ---
    pt_gev = np.maximum(sin_theta * p, 50.0) / 1e3
    sigma = 0.012 + 0.020 / pt_gev
    disp = pick(flight * np.sqrt(t2) * rng.uniform(0.1, 1.0, n), rng.exponential(0.08, n))
    phi = rng.uniform(0, 2 * np.pi, n)
    ipx = disp * np.cos(phi) + rng.normal(0, 1, n) * sigma * pick(1.0, 2.5)
    ipy = disp * np.sin(phi) + rng.normal(0, 1, n) * sigma * pick(1.0, 2.5)
    vx = ipx + rng.normal(0, 1, n) * sigma * 1.3  # straight VELO line: worse
    vy = ipy + rng.normal(0, 1, n) * sigma * 1.3
    for pre, ix, iy, s in (("kalman", ipx, ipy, sigma), ("velo", vx, vy, sigma * 1.6)):
        ip = np.hypot(ix, iy)
        c[f"{pre}_ip"], c[f"{pre}_ipx"], c[f"{pre}_ipy"] = ip, ix, iy
        c[f"{pre}_ip_chi2"] = (ip / s) ** 2
        along = np.abs(ix * np.cos(phi) + iy * np.sin(phi))
        c[f"{pre}_docaz"] = along + np.abs(rng.normal(0, 0.2 * s, n))
    c["pr_velo_ut_chi2"] = np.where(
        n_ut > 0, pick(rng.gamma(1.5, 0.8, n), rng.gamma(1.5, 2.0, n)), 0.0)

    # --- pattern recognition of the chosen track type; the other type's stays 0 ---
    zeros = np.zeros(n)
    for name in FORWARD_ONLY + MATCHING_ONLY:
        c[name] = zeros
    if track == "forward":
        c["pr_forward_quality"] = pick(rng.beta(1.6, 9.0, n), rng.beta(2.2, 5.0, n))
    else:
        aq = np.abs(qop_true) * 1e4  # extrapolation errors grow at low momentum
        kick = MAGNET_KICK * qop
        # dtx: real follows the magnet kick of its own qop; a ghost pairs a VELO track with
        # another particle's SciFi seed, so its kick is unrelated to the track's qop
        other_qop = rng.choice([-1.0, 1.0], n) / (2000 + rng.lognormal(np.log(4500), 0.75, n))
        c["pr_match_dtx"] = pick(kick + rng.normal(0, 0.055 + 0.03 * aq, n),
                                 MAGNET_KICK * other_qop + rng.normal(0, 0.06, n))
        # position/slope residuals at the matching plane, inside the matching cuts
        c["pr_match_dty"] = _within(
            rng, pick(rng.normal(0, 0.004, n), rng.normal(0, 0.0055, n)), 0.02)
        c["pr_match_dx"] = _within(
            rng, pick(rng.normal(0, 2.5 + 1.5 * aq, n), rng.normal(0, 4.5, n)), 20)
        c["pr_match_dy"] = _within(
            rng, pick(rng.normal(0, 25 + 10 * aq, n), rng.normal(0, 40, n)), 150)
        c["pr_match_chi2"] = 2 * pick(rng.beta(1.3, 5.0, n), rng.beta(1.4, 4.4, n))
        c["pr_seed_chi2"] = np.clip(pick(rng.lognormal(np.log(0.6), 1.0, n),
                                         rng.lognormal(np.log(1.1), 1.5, n)), 0.004, 1.3e3)

    # --- truth (Allen convention: ghosts carry zeros) ---
    c["ghost"] = g.astype(float)
    c["mcp_p"] = np.where(g, 0.0, p)
    c["mcp_x"] = np.where(g, 0.0, mcp_x)
    c["mcp_y"] = np.where(g, 0.0, mcp_y)
    c["mcp_z"] = np.where(g, 0.0, mcp_z)

    cols = {name: np.ascontiguousarray(c[name], dtype=np.float32) for name in BRANCHES}

    # --- a few broken fits: one non-finite value in one branch per affected track ---
    bad = rng.permutation(n)[:round(nonfinite * n)]
    candidates = [b for b in features if b not in COUNTERS] + NONFINITE_EXTRA
    which = rng.integers(0, len(candidates), bad.size)
    value = rng.choice(np.array([np.nan, np.inf, -np.inf], dtype=np.float32), bad.size)
    for i, name in enumerate(candidates):
        sel = which == i
        cols[name][bad[sel]] = value[sel]
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
