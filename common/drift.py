"""Measured drift: how much the top successors of a pair change between consecutive windows.

docs/contracts.md "Evaluation": the mean Jaccard similarity of each well-supported pair's top-5
successors between consecutive 30-day windows (the paper measured 0.17 month over month).
Windows are consecutive, non-overlapping and full, counted from the first day with counts; a pair is
well-supported when it has at least `min_support` transitions in both windows. Successors are
ranked by count, ties by cluster id, so the number is deterministic.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

EPOCH = dt.date(1970, 1, 1)


def _group_starts(keys: np.ndarray) -> np.ndarray:
    """Index of the first row of every run of equal values in a sorted array."""
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else keys


def drift_series(
    transitions: pa.Table, window_days: int = 30, min_support: int = 20, top: int = 5
) -> dict:
    """Jaccard of top-`top` successors between each two consecutive full windows, and the mean.

    Returns {"windows": [{"start", "next_start", "pairs", "mean_jaccard"}, ...],
    "mean_jaccard": mean over window pairs (None when no window pair has a supported pair),
    "window_days", "min_support", "top"}. Vectorised with numpy over packed integer keys
    (window, c1, c2, c3): four months of a 10M-event log are millions of rows.
    """
    out: dict = {"window_days": window_days, "min_support": min_support, "top": top,
                 "windows": [], "mean_jaccard": None}
    if transitions.num_rows == 0:
        return out
    days = pc.cast(pc.cast(transitions["day"], pa.date32()), pa.int32()).to_numpy()
    first_day = int(days.min())
    n_full = (int(days.max()) - first_day + 1) // window_days
    window = (days - first_day) // window_days
    keep = window < n_full
    cs = [transitions[c].to_numpy()[keep].astype(np.int64) for c in ("c1", "c2", "c3")]
    # Dense codes in id order (ties still break by cluster id): sparse ids such as 5_000_000
    # would otherwise make the packed key overflow.
    ids, codes = np.unique(np.concatenate(cs), return_inverse=True)
    cs = np.split(codes.astype(np.int64), 3)
    width = max(len(ids), 1)
    if n_full * width**3 >= 2**62:
        raise ValueError(f"{width} distinct clusters: too many to pack (window, c1, c2, c3)")
    # key = ((window * W + c1) * W + c2) * W + c3: sorting it groups rows by pair, then c3.
    pair = (window[keep].astype(np.int64) * width + cs[0]) * width + cs[1]
    keys, inverse = np.unique(pair * width + cs[2], return_inverse=True)
    count = np.bincount(inverse, weights=transitions["count"].to_numpy()[keep])
    pairs = keys // width
    starts = _group_starts(pairs)
    group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(pairs)]))
    support = np.add.reduceat(count, starts) if len(starts) else count
    # Successors of a pair by count (descending), ties by cluster id; keep the first `top`.
    order = np.lexsort((keys % width, -count, pairs))
    rank = np.arange(len(order)) - starts[group[order]]
    chosen = order[(rank < top) & (support[group[order]] >= min_support)]
    top_keys = np.sort(keys[chosen])
    top_pairs = top_keys // width
    # A window-w top successor is shared when the same (c1, c2, c3) is a window-(w+1) top one.
    shared = np.isin(top_keys, top_keys - width**3)
    uniq_pairs, size = np.unique(top_pairs, return_counts=True)
    inter = np.bincount(np.searchsorted(uniq_pairs, top_pairs), weights=shared,
                        minlength=len(uniq_pairs))
    has_next = np.isin(uniq_pairs, uniq_pairs - width**2)
    nxt = np.searchsorted(uniq_pairs, uniq_pairs[has_next] + width**2)
    a, i = size[has_next], inter[has_next]
    jaccard = i / (a + size[nxt] - i)
    pair_window = uniq_pairs[has_next] // width**2
    first = EPOCH + dt.timedelta(days=first_day)
    values = []
    for w in range(n_full - 1):
        row = {"start": first + dt.timedelta(days=w * window_days),
               "next_start": first + dt.timedelta(days=(w + 1) * window_days),
               "pairs": 0, "mean_jaccard": None}
        mine = jaccard[pair_window == w]
        if len(mine):
            row["pairs"] = int(len(mine))
            row["mean_jaccard"] = float(mine.mean())
            values.append(row["mean_jaccard"])
        out["windows"].append(row)
    if values:
        out["mean_jaccard"] = float(sum(values) / len(values))
    return out


def plot_drift(report: dict, path: str) -> None:
    """drift.png: Jaccard per consecutive window pair (matplotlib Agg, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [w for w in report["windows"] if w["mean_jaccard"] is not None]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    # Dates, not strings: matplotlib's date axis (strings log a "categorical units" notice).
    starts = [dt.date.fromisoformat(str(w["next_start"])) for w in rows]
    ax.plot(starts, [w["mean_jaccard"] for w in rows], marker="o")
    ax.axhline(0.17, color="grey", linestyle="--", label="paper: 0.17")
    ax.set_ylim(0, 1)
    ax.set_xlabel("start of the later window")
    ax.set_ylabel(f"mean Jaccard of top-{report['top']}")
    ax.set_title(f"Successor drift between consecutive {report['window_days']}-day windows")
    ax.legend()
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
