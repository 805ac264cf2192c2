"""An independent, plain-Python reading of docs/contracts.md "Transitions", used as the oracle in
tests.

Deliberately naive: one loop per user over Python datetimes, no numpy, no Arrow compute, so that
it shares no code (and no bugs) with jobs/aggregate.py and common/inputs.py.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

UTC = dt.UTC


def to_utc(ts) -> dt.datetime | None:
    """The instant of a ts value in UTC, or None when missing or unparseable."""
    if ts is None:
        return None
    if isinstance(ts, bool):
        return None
    if isinstance(ts, int):
        return dt.datetime.fromtimestamp(ts, UTC)
    if isinstance(ts, dt.datetime):
        return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    if isinstance(ts, str):
        try:
            parsed = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except ValueError:
            return None
        return to_utc(parsed)
    return None


def reference_counts(rows, item_cluster: dict) -> Counter:
    """rows: (user_id, item_id, ts) in input order (files by path, then rows in a file).

    Returns Counter {(day, c1, c2, c3): count}. Ids are compared by their text, so the integer 7
    and the string "7" are the same user, as when one file of a log is CSV and another Parquet.
    """
    per_user: dict[str, list] = {}
    for index, (user, item, ts) in enumerate(rows):
        when = to_utc(ts)
        if user is None or item is None or when is None:
            continue
        cluster = item_cluster.get(str(item))
        if cluster is None:
            continue
        per_user.setdefault(str(user), []).append((when, index, cluster))
    counts: Counter = Counter()
    for events in per_user.values():
        events.sort(key=lambda e: (e[0], e[1]))
        seq: list[tuple[int, dt.datetime]] = []
        for when, _, cluster in events:
            if not seq or seq[-1][0] != cluster:
                seq.append((cluster, when))
        for i in range(2, len(seq)):
            c1, c2, (c3, when) = seq[i - 2][0], seq[i - 1][0], seq[i]
            if c3 not in (c1, c2):
                counts[(when.date(), c1, c2, c3)] += 1
    return counts


def table_counts(table) -> Counter:
    """A transitions Arrow table as the same Counter (keys unique, counts summed defensively)."""
    out: Counter = Counter()
    for r in table.to_pylist():
        out[(r["day"], r["c1"], r["c2"], r["c3"])] += r["count"]
    return out
