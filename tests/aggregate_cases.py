"""Small interaction logs with every edge case of the transition definition, and their writers.

Items 1..12 belong to clusters (item - 1) // 2, i.e. 0..5; item 99 is unknown. Every case states
the sequence it produces, so a reader can check the expected counts by hand.
"""

from __future__ import annotations

import datetime as dt
import os

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

UTC = dt.UTC
PLUS2 = dt.timezone(dt.timedelta(hours=2))
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def item_of(cluster: int) -> int:
    return 2 * cluster + 1


ITEM_CLUSTER = {str(i): (i - 1) // 2 for i in range(1, 13)}

# (user, item, ts as an aware datetime or None), in input order.
EDGE_ROWS = [
    # user 1: clusters 0 0 1 1 2 1 2 0 -> collapsed 0 1 2 1 2 0: (0,1,2) and (1,2,0) are novel,
    # the A-B-A steps (1,2,1) and (2,1,2) are not.
    *[(1, item_of(c), at(i)) for i, c in enumerate([0, 0, 1, 1, 2, 1, 2, 0])],
    # user 2: a tie at minute 5 keeps input order (3 then 4): 0 3 4 5 -> (0,3,4), (3,4,5).
    (2, item_of(0), at(1)), (2, item_of(3), at(5)), (2, item_of(4), at(5)), (2, item_of(5), at(9)),
    # user 3: a single event makes no transition.
    (3, item_of(2), at(3)),
    # user 4: either side of UTC midnight, written in +02:00: 0 at 23:50Z, 1 at 23:59:59Z (Mar 1),
    # 2 at 00:00:01Z (Mar 2) -> (0,1,2) on Mar 2; 3 at 00:10Z -> (1,2,3) on Mar 2.
    (4, item_of(0), dt.datetime(2026, 3, 2, 1, 50, tzinfo=PLUS2)),
    (4, item_of(2), dt.datetime(2026, 3, 2, 2, 0, 1, tzinfo=PLUS2)),
    (4, item_of(1), dt.datetime(2026, 3, 2, 1, 59, 59, tzinfo=PLUS2)),
    (4, item_of(3), dt.datetime(2026, 3, 2, 2, 10, tzinfo=PLUS2)),
    # nulls and an unknown item: dropped and counted, the rest of user 5 still counts.
    (None, item_of(1), at(2)),
    (5, None, at(2)),
    (5, item_of(1), None),
    (5, 99, at(3)),
    # user 5, listed newest first; by ts the sequence is 3 5 4 5 -> (3,5,4) is novel, (5,4,5)
    # is not.
    (5, item_of(5), at(40)), (5, item_of(4), at(30)), (5, item_of(5), at(20)),
    (5, item_of(3), at(10)),
]
EDGE_DROPS = {"null_user_id": 1, "null_item_id": 1, "null_ts": 1, "bad_ts": 0, "unknown_item": 1}


def items_table(string_ids: bool = False) -> pa.Table:
    ids = list(range(1, 13))
    return pa.table({
        "item_id": pa.array([str(i) for i in ids] if string_ids else ids,
                            pa.string() if string_ids else pa.int64()),
        "cluster_id": pa.array([(i - 1) // 2 for i in ids], pa.int32()),
    })


def clusters_table() -> pa.Table:
    return pa.table({"cluster_id": pa.array(range(6), pa.int32()),
                     "name": [f"cluster {i}" for i in range(6)], "description": [""] * 6})


def _ts_column(values, kind: str) -> pa.Array:
    if kind == "epoch":
        return pa.array([None if v is None else int(v.timestamp()) for v in values], pa.int64())
    if kind == "timestamp_plus2":
        return pa.array([None if v is None else v.astimezone(PLUS2) for v in values],
                        pa.timestamp("us", tz="+02:00"))
    if kind == "timestamp_naive":
        return pa.array([None if v is None else v.astimezone(UTC).replace(tzinfo=None)
                         for v in values], pa.timestamp("ms"))
    if kind == "iso":
        return pa.array([None if v is None else v.isoformat() for v in values], pa.string())
    raise ValueError(kind)


def write_log(folder: str, rows, fmt: str = "parquet", ts_kind: str = "epoch",
              string_ids: bool = False, n_files: int = 2) -> list:
    """Split rows into n_files files in path order; returns rows as written (ids may be text)."""
    os.makedirs(folder, exist_ok=True)
    written = []
    size = -(-len(rows) // n_files)
    for k in range(n_files):
        chunk = rows[k * size:(k + 1) * size]
        users = [None if u is None else (f"u{u}" if string_ids else u) for u, _, _ in chunk]
        items = [None if i is None else (str(i) if string_ids else i) for _, i, _ in chunk]
        typ = pa.string() if string_ids else pa.int64()
        table = pa.table({"user_id": pa.array(users, typ), "item_id": pa.array(items, typ),
                          "ts": _ts_column([t for _, _, t in chunk], ts_kind),
                          "extra": pa.array(["x"] * len(chunk))})
        path = os.path.join(folder, f"part-{k}.{'csv' if fmt == 'csv' else 'parquet'}")
        if fmt == "csv":
            pacsv.write_csv(table, path)
        else:
            pq.write_table(table, path)
        written += list(zip(users, items, [t for _, _, t in chunk], strict=True))
    return written
