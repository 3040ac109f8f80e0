"""What a track type means for the toolkit: its ROOT branches, label, tree and bounds.

The one place these are defined; make_dataset.py, training.py and inference.py all
ask this module.  Feature lists are the original study's (see docs in README.md).
"""

# Default location of the tracks in an Allen kalman_validator file.
DEFAULT_TREE = "kalman_validator/kalman_ip_tree"

# Truth label: 1.0 for a ghost, 0.0 for a real track.
LABEL = "ghost"

# Track type -> feature branches, in column order.
TRACK_FEATURES = {
    "forward": [
        "best_pt", "chi2", "first_qop", "n_scifi", "n_velo", "ndof",
        "pr_forward_quality", "qop",
    ],
    "matching": [
        "best_pt", "chi2", "first_qop", "n_scifi", "n_velo", "ndof",
        "pr_match_chi2", "pr_match_dtx", "pr_match_dty", "pr_match_dx",
        "pr_match_dy", "pr_seed_chi2", "qop",
    ],
}
TRACK_TYPES = tuple(TRACK_FEATURES)

# Fixed min-max bounds used instead of the training split's own min/max.
# Values outside are clipped, so the heavy tails do not squash the bulk.
FIXED_BOUNDS = {
    "best_pt": (0.0, 1.0e4),
    "chi2": (0.0, 400.0),
}

# Features whose distribution has a heavy tail (plotted on a log scale).
HEAVY_TAILED = {"best_pt", "chi2", "pr_seed_chi2"}


def features_for(track):
    """Feature branch names of a track type; a clear error for an unknown one."""
    if track not in TRACK_FEATURES:
        raise ValueError(
            f"unknown track type {track!r}: valid types are {', '.join(TRACK_TYPES)}")
    return list(TRACK_FEATURES[track])
