"""A cluster dropped from the catalog while the window still has its transitions: neither the
published backoff nor a loaded version may name it, so the server never answers it with a 5xx."""

from __future__ import annotations

import asyncio
import json
import logging

import pyarrow as pa
from serve_tables import write_version

from common.catalog import Catalog
from common.lookup import Lookup
from common.publish import build_backoff
from serve.app import NextInterest, next_answer


def catalog(ids) -> Catalog:
    return Catalog(tuple(ids), tuple(f"Cluster {c}" for c in ids), ("",) * len(ids))


def backoff_table(rows) -> pa.Table:
    """rows: (c2, rank, c3, score)."""
    c2, rank, c3, score = zip(*rows, strict=True)
    return pa.table(
        {
            "c2": pa.array(c2, pa.int32()),
            "rank": pa.array(rank, pa.int16()),
            "c3": pa.array(c3, pa.int32()),
            "score": pa.array(score, pa.float32()),
        }
    )


def no_transitions() -> pa.Table:
    return pa.table(
        {
            "day": pa.array([], pa.date32()),
            "c1": pa.array([], pa.int32()),
            "c2": pa.array([], pa.int32()),
            "c3": pa.array([], pa.int32()),
            "count": pa.array([], pa.int64()),
        }
    )


def test_build_backoff_keeps_only_catalog_clusters_and_ranks_again():
    # 9 is no longer a cluster: the snapshot still has it as 1's best successor and as a c2.
    snapshot = backoff_table(
        [(1, 1, 9, 0.5), (1, 2, 2, 0.25), (1, 3, 3, 0.125), (1, 4, 0, 0.0625), (9, 1, 1, 1.0)]
    )
    back = build_backoff(snapshot, no_transitions(), catalog(range(4)), k=2)
    per_c2 = [row for row in back.to_pylist() if row["c2"] != -1]
    # 9 dropped; 2 and 3 move up to ranks 1 and 2, so c2 = 1 still gets k = 2 successors.
    assert per_c2 == [
        {"c2": 1, "rank": 1, "c3": 2, "score": 0.25},
        {"c2": 1, "rank": 2, "c3": 3, "score": 0.125},
    ]
    assert set(back["c3"].to_pylist()) <= {0, 1, 2, 3}


def test_from_tables_drops_rows_naming_clusters_missing_from_the_catalog(caplog):
    table = pa.table(
        {
            "c1": pa.array([0, 0, 0, 7], pa.int32()),
            "c2": pa.array([1, 1, 1, 1], pa.int32()),
            "rank": pa.array([1, 2, 3, 1], pa.int16()),
            "c3": pa.array([7, 2, 3, 2], pa.int32()),
            "score": pa.array([0.5, 0.25, 0.125, 1.0], pa.float32()),
            "source": ["llm", "frequency", "frequency", "llm"],
        }
    )
    back = backoff_table([(2, 1, 7, 0.5), (2, 2, 3, 0.25), (7, 1, 0, 1.0), (-1, 1, 7, 1.0),
                          (-1, 2, 0, 0.5)])  # fmt: skip
    items = pa.table({"item_id": ["a", "b"], "cluster_id": pa.array([1, 7], pa.int32())})
    with caplog.at_level(logging.WARNING, logger="common.lookup"):
        lookup = Lookup.from_tables("v", table, back, catalog(range(4)), items)
    # (0, 1) loses its rank-1 answer 7 and takes the source of the first row left.
    assert lookup.answer(0, 1, 5) == ("frequency", [(2, 0.25), (3, 0.125)])
    assert (7, 1) not in lookup.pairs
    assert lookup.backoff == {2: ((3, 0.25),), -1: ((0, 0.5),)}
    assert lookup.item_clusters == {"a": 1}
    assert "dropped 2 table rows, 3 backoff rows and 1 items" in caplog.text


def test_a_backoff_naming_a_dropped_cluster_is_answered_200(root):
    """Published as the reviewer found it (backoff.parquet is not validated at publish): the
    replica answers from the rest of the list, on the fast path and through the handler."""
    write_version(
        root,
        "v1",
        backoff={2: [(42, 0.9), (1, 0.5)], 42: [(3, 0.5)], -1: [(42, 1.0), (0, 0.5), (8, 0.25)]},
    )

    async def scenario():
        cls = NextInterest.func_or_class
        replica = cls.__new__(cls)
        await replica.__init__({"root": root, "poll_interval_s": 60})
        try:
            lookup = replica.watcher.lookup
            assert next_answer(lookup, 6, 2, 5)["clusters"] == [
                {"cluster_id": 1, "name": "Cluster 1", "score": 0.5},
                {"cluster_id": 0, "name": "Cluster 0", "score": 0.5},
                {"cluster_id": 8, "name": "Cluster 8", "score": 0.25},
            ]
            fast = replica.fast_next(b"history=6,2&k=5")
            handler = await replica.next_single(history="5,9", k=5)
            return fast, handler.status_code, json.loads(handler.body)
        finally:
            replica.watcher.stop()

    fast, status, body = asyncio.run(scenario())
    assert json.loads(fast)["source"] == "backoff_c2"
    assert [c["cluster_id"] for c in json.loads(fast)["clusters"]] == [1, 0, 8]
    assert status == 200
    assert (body["source"], [c["cluster_id"] for c in body["clusters"]]) == (
        "backoff_global",
        [0, 8],
    )
