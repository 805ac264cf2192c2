"""Measured drift: how much the top successors of a pair change between consecutive windows.

SYSTEM.md "Evaluation": the mean Jaccard similarity of each well-supported pair's top-5 successors
between consecutive 30-day windows (the paper measured 0.17 month over month). Windows are
consecutive, non-overlapping and full, counted from the first day with counts; a pair is
well-supported when it has at least `min_support` transitions in both windows. Successors are
ranked by count, ties by cluster id, so the number is deterministic.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

EPOCH = dt.date(1970, 1, 1)


def _tops(df: pd.DataFrame, top: int) -> pd.DataFrame:
    """Rows (window, c1, c2, c3) of each pair's `top` most frequent successors per window."""
    agg = df.groupby(["window", "c1", "c2", "c3"], as_index=False, sort=False)["count"].sum()
    agg = agg.sort_values(["window", "c1", "c2", "count", "c3"],
                          ascending=[True, True, True, False, True], kind="stable")
    return agg.groupby(["window", "c1", "c2"], sort=False).head(top)


def drift_series(
    transitions: pa.Table, window_days: int = 30, min_support: int = 20, top: int = 5
) -> dict:
    """Jaccard of top-`top` successors between each two consecutive full windows, and the mean.

    Returns {"windows": [{"start", "next_start", "pairs", "mean_jaccard"}, ...],
    "mean_jaccard": mean over window pairs (None when no window pair has a supported pair),
    "window_days", "min_support", "top"}. Vectorised with pandas: a month of counts of a 10M-event
    log has millions of rows.
    """
    out: dict = {"window_days": window_days, "min_support": min_support, "top": top,
                 "windows": [], "mean_jaccard": None}
    if transitions.num_rows == 0:
        return out
    days = pc.cast(pc.cast(transitions["day"], pa.date32()), pa.int32()).to_numpy()
    first_day = int(days.min())
    n_full = (int(days.max()) - first_day + 1) // window_days
    df = pd.DataFrame({"window": (days - first_day) // window_days,
                       "c1": transitions["c1"].to_numpy(), "c2": transitions["c2"].to_numpy(),
                       "c3": transitions["c3"].to_numpy(),
                       "count": transitions["count"].to_numpy()})
    df = df[df["window"] < n_full]
    support = df.groupby(["window", "c1", "c2"])["count"].sum()
    supported = support[support >= min_support].reset_index()[["window", "c1", "c2"]]
    tops = _tops(df, top).merge(supported, on=["window", "c1", "c2"])
    size = tops.groupby(["window", "c1", "c2"]).size().rename("n").reset_index()
    nxt = tops.assign(window=tops["window"] - 1)
    inter = (tops.merge(nxt, on=["window", "c1", "c2", "c3"])
             .groupby(["window", "c1", "c2"]).size().rename("inter").reset_index())
    both = size.merge(size.assign(window=size["window"] - 1), on=["window", "c1", "c2"],
                      suffixes=("", "_next"))
    both = both.merge(inter, on=["window", "c1", "c2"], how="left").fillna({"inter": 0})
    both["jaccard"] = both["inter"] / (both["n"] + both["n_next"] - both["inter"])
    per_window = both.groupby("window")["jaccard"].agg(["mean", "size"])
    first = EPOCH + dt.timedelta(days=first_day)
    values = []
    for w in range(n_full - 1):
        row = {"start": first + dt.timedelta(days=w * window_days),
               "next_start": first + dt.timedelta(days=(w + 1) * window_days),
               "pairs": 0, "mean_jaccard": None}
        if w in per_window.index:
            row["pairs"] = int(per_window.loc[w, "size"])
            row["mean_jaccard"] = float(per_window.loc[w, "mean"])
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
    ax.plot([str(w["next_start"]) for w in rows], [w["mean_jaccard"] for w in rows], marker="o")
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
