"""Hit rate of a published table over logged transitions (docs/contracts.md "Evaluation").

Each held-out transition (c1, c2) -> c3 scores 1 at k when c3 is among the first k answers the
server gives for (c1, c2): `Lookup.answer`, with its backoff, so a number here is exactly what
Serve would have achieved. Events are weighted by their count. Shared by the guards of
`jobs.infer`, `jobs.evaluate` and the replay of `jobs.pipeline`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from common.lookup import Lookup

DEFAULT_KS = (1, 5, 10)


def event_counts(transitions: pa.Table) -> pa.Table:
    """(c1, c2, c3, count) summed over days: the events to score, one row per distinct triple."""
    if transitions.num_rows == 0:
        return pa.table(
            {
                "c1": pa.array([], pa.int32()),
                "c2": pa.array([], pa.int32()),
                "c3": pa.array([], pa.int32()),
                "count": pa.array([], pa.int64()),
            }
        )
    grouped = transitions.group_by(["c1", "c2", "c3"]).aggregate([("count", "sum")])
    return grouped.rename_columns(["c1", "c2", "c3", "count"])


def hit_rates(
    lookup: Lookup, transitions: pa.Table, ks: tuple[int, ...] = DEFAULT_KS
) -> dict[str, float | int]:
    """{"hit_rate@k" for k in ks, "coverage", "n_events"} of lookup over the transitions.

    `transitions` needs c1, c2, c3, count (any days; they are summed). With no events every rate
    is 0.0 and n_events is 0, so callers can tell "no data" from "no hits".
    Cost: one `answer` per distinct pair (at most n_clusters^2), then a vectorised rank lookup.
    """
    events = event_counts(transitions)
    kmax = max(ks)
    c1 = events["c1"].to_numpy()
    c2 = events["c2"].to_numpy()
    c3 = events["c3"].to_numpy()
    counts = events["count"].to_numpy().astype(np.float64)
    total = float(counts.sum())
    out: dict[str, float | int] = {}
    if total == 0:
        out.update({f"hit_rate@{k}": 0.0 for k in ks})
        out.update({"coverage": 0.0, "n_events": 0})
        return out

    # Rank (1-based) of c3 in the served answer of its pair; 0 when absent from the first kmax.
    ranks = np.zeros(len(c1), dtype=np.int64)
    covered = np.zeros(len(c1), dtype=bool)
    answers: dict[tuple[int, int], dict[int, int]] = {}
    for i, (a, b, c) in enumerate(zip(c1.tolist(), c2.tolist(), c3.tolist(), strict=True)):
        key = (a, b)
        ranking = answers.get(key)
        if ranking is None:
            _, served = lookup.answer(a, b, kmax)
            ranking = {cid: r for r, (cid, _) in enumerate(served, start=1)}
            answers[key] = ranking
        ranks[i] = ranking.get(c, 0)
        covered[i] = key in lookup.pairs
    for k in ks:
        hits = (ranks > 0) & (ranks <= k)
        out[f"hit_rate@{k}"] = float(counts[hits].sum() / total)
    out["coverage"] = float(counts[covered].sum() / total)
    out["n_events"] = int(total)
    return out
