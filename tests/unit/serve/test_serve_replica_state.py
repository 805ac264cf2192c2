"""A replica's life apart from answering: its first load, its health, config updates, the size
of its answer cache, and the defaults and edge answers docs/serve.md states."""

from __future__ import annotations

import asyncio
import json
import threading

import pyarrow as pa
import pytest
from fastapi import HTTPException
from serve_tables import V2_PAIRS, write_version

from common import storage
from common.catalog import Catalog
from common.lookup import Lookup
from serve import app as serve_app
from serve.app import NextInterest, json_bytes, next_answer
from serve.watcher import TableWatcher


async def start_replica(**args):
    """A NextInterest as Serve builds it (the class under the ingress wrapper), no Ray."""
    cls = NextInterest.func_or_class
    replica = cls.__new__(cls)
    await replica.__init__({"poll_interval_s": 60, **args})
    return replica


def watcher_threads() -> int:
    return sum(t.name == "table-watcher" and t.is_alive() for t in threading.enumerate())


def test_a_failed_first_load_is_retried_on_the_next_poll(root):
    """With no table to serve, a transient error must not cost retry_failed_s (60 s here)."""
    write_version(root, "v1")
    watcher = TableWatcher(root, poll_interval_s=60, retry_failed_s=60)

    def s3_timeout(root, version):
        raise OSError("S3 read timed out")

    watcher._load = s3_timeout
    assert watcher.check_once() is False and watcher.lookup is None
    assert "S3 read timed out" in watcher.last_error
    watcher._load = Lookup.load
    assert watcher.check_once() is True and watcher.lookup.version == "v1"
    # Once a table is served, a failed version waits retry_failed_s again.
    write_version(root, "v2", pairs=V2_PAIRS)
    watcher._load = s3_timeout
    assert watcher.check_once() is False
    watcher._load = Lookup.load
    assert watcher.check_once() is False and watcher.lookup.version == "v1"


def test_unready_reason_tells_no_table_published_from_one_not_loaded(root):
    watcher = TableWatcher(root, poll_interval_s=60)
    assert watcher.unready_reason() is not None  # CURRENT never read
    watcher.check_once()
    assert watcher.unready_reason() is None  # nothing published: the 503 is the answer

    def unreachable(root):
        raise OSError("connection refused")

    watcher._read_pointer = unreachable
    watcher.check_once()
    assert "connection refused" in watcher.unready_reason()


def test_check_health_fails_while_current_is_not_loaded(root, tmp_path):
    async def scenario():
        # CURRENT names a version that cannot be loaded and there is no other: unhealthy.
        storage.makedirs(storage.table_dir(root, "broken"))
        storage.swap_current(root, "broken")
        replica = await start_replica(root=root, retry_failed_s=60)
        with pytest.raises(RuntimeError, match="broken failed to load"):
            replica.check_health()
        write_version(root, "v1")
        replica.watcher.check_once()
        replica.check_health()  # loaded: healthy
        storage.swap_current(root, "broken")
        replica.watcher.check_once()
        replica.check_health()  # a broken publish later: v1 keeps serving, still healthy
        replica.watcher.stop()
        # Nothing published at all: healthy, and /v1/next is the documented 503.
        empty = await start_replica(root=str(tmp_path / "nothing"))
        empty.check_health()
        with pytest.raises(HTTPException) as no_table:
            await empty.next_single(history="1,2", k=1)
        empty.watcher.stop()
        return no_table.value.status_code

    assert asyncio.run(scenario()) == 503


def test_reconfigure_to_a_root_without_a_table_keeps_the_old_one(root, tmp_path):
    broken = str(tmp_path / "broken")
    storage.makedirs(storage.table_dir(broken, "b"))
    storage.swap_current(broken, "b")

    async def scenario():
        replica = await start_replica(root=root, max_k=20)
        write_version(root, "v1")
        replica.watcher.check_once()
        old, threads = replica.watcher, watcher_threads()
        for bad, message in [(str(tmp_path / "typo"), "no tables/CURRENT"),
                             (broken, "b failed to load")]:  # fmt: skip
            with pytest.raises(RuntimeError, match=message):
                replica.reconfigure({"root": bad, "max_k": 3})
            assert replica.watcher is old and not old._stop.is_set()
            assert watcher_threads() == threads  # the new watcher was not left polling
        # Nothing changed: same root, same limits, same table.
        assert (replica.args.root, replica.args.max_k) == (root, 20)
        response = await replica.next_single(history="1,2", k=10)
        replica.watcher.stop()
        return response.status_code, json.loads(response.body)["version"]

    assert asyncio.run(scenario()) == (200, "v1")


def test_user_config_applies_over_the_start_args_not_the_last_config(root):
    """A key removed from user_config goes back to the value the replica started with, as on
    a replica Serve starts after the change."""
    write_version(root, "v1")

    async def scenario():
        replica = await start_replica(root=root, max_k=20)
        replica.reconfigure({"max_k": 3, "poll_interval_s": 5})
        assert (replica.args.max_k, replica.watcher.poll_interval_s) == (3, 5)
        with pytest.raises(HTTPException) as too_big:
            await replica.next_single(history="1,2", k=10)
        assert too_big.value.status_code == 400
        replica.reconfigure({"default_k": 2})
        assert (replica.args.max_k, replica.args.default_k) == (20, 2)
        assert replica.watcher.poll_interval_s == 60
        response = await replica.next_single(history="1,2", k=10)
        replica.reconfigure(None)
        assert replica.args == replica.init_args
        replica.watcher.stop()
        return response.status_code

    assert asyncio.run(scenario()) == 200


def test_recommend_defaults_n_to_at_most_max_items_per_cluster(root):
    write_version(root, "v1")

    async def scenario():
        small = await start_replica(root=root, max_items_per_cluster=3)
        large = await start_replica(root=root)
        # FastAPI passes None for a missing `n`.
        out = [await r.recommend(items="i1-0,i2-3", k=2, n=None) for r in (small, large)]
        small.watcher.stop()
        large.watcher.stop()
        return [(r.status_code, json.loads(r.body)) for r in out]

    (small_status, small), (large_status, large) = asyncio.run(scenario())
    assert small_status == large_status == 200
    # (1, 2) -> clusters 3 and 4, five items each.
    assert [c["items"] for c in small["clusters"]] == [
        ["i3-0", "i3-1", "i3-2"],
        ["i4-0", "i4-1", "i4-2"],
    ]
    assert [len(c["items"]) for c in large["clusters"]] == [5, 5]


def test_answer_cache_is_bounded_by_bytes(root):
    write_version(root, "v1")
    requests = [(c1, c2, k) for c1 in range(10) for c2 in range(10) if c1 != c2 for k in (1, 20)]

    async def scenario():
        replica = await start_replica(root=root, max_k=20)
        lookup = replica.watcher.lookup
        sizes = [len(json_bytes(next_answer(lookup, *r))) for r in requests]
        cap = sum(sizes[:10]) + 10 * serve_app.CACHE_ENTRY_OVERHEAD
        assert replica.max_cached_bytes == serve_app.MAX_CACHED_BYTES == 64 * 2**20
        replica.max_cached_bytes = cap
        for _ in range(2):
            for c1, c2, k in requests:
                body = replica.fast_next(f"history={c1},{c2}&k={k}".encode())
                assert body == json_bytes(next_answer(lookup, c1, c2, k))
        assert 10 <= len(replica._bodies) < len(requests)
        assert replica._cached_bytes <= cap
        assert replica._cached_bytes == sum(
            len(body) + serve_app.CACHE_ENTRY_OVERHEAD for _, body in replica._bodies.values()
        )
        write_version(root, "v2", pairs=V2_PAIRS)
        replica.watcher.check_once()
        body = replica.fast_next(b"history=1,2&k=1")
        replica.watcher.stop()
        return json.loads(body), replica._cached_bytes, len(body)

    answer, cached, size = asyncio.run(scenario())
    # A new version starts an empty cache, counted from zero.
    assert answer["version"] == "v2" and cached == size + serve_app.CACHE_ENTRY_OVERHEAD


def test_history_ids_before_the_pair_are_not_used(root):
    """3,7,7 -> (3, 7) (repeats collapse); ids before the pair are neither used nor checked."""
    write_version(root, "v1")

    async def scenario():
        replica = await start_replica(root=root)
        response = await replica.next_single(history="999,1,2,2", k=1)
        replica.watcher.stop()
        return response.status_code, json.loads(response.body)

    status, body = asyncio.run(scenario())
    assert status == 200 and body["history"] == [1, 2]


def test_empty_source_when_nothing_is_left_besides_the_pair():
    """Two clusters: the global top holds only c1 and c2, so there is nothing novel to name."""
    empty_table = pa.table(
        {
            "c1": pa.array([], pa.int32()),
            "c2": pa.array([], pa.int32()),
            "rank": pa.array([], pa.int16()),
            "c3": pa.array([], pa.int32()),
            "score": pa.array([], pa.float32()),
            "source": pa.array([], pa.string()),
        }
    )
    backoff = pa.table(
        {
            "c2": pa.array([-1, -1], pa.int32()),
            "rank": pa.array([1, 2], pa.int16()),
            "c3": pa.array([0, 1], pa.int32()),
            "score": pa.array([0.5, 0.5], pa.float32()),
        }
    )
    lookup = Lookup.from_tables("v", empty_table, backoff, Catalog((0, 1), ("a", "b"), ("", "")))
    assert next_answer(lookup, 0, 1, 5) == {
        "version": "v",
        "history": [0, 1],
        "source": "empty",
        "clusters": [],
    }
    assert "empty" in serve_app.NextResponse.model_fields["source"].description
