"""The Serve app's pure parts: request parsing, answers from a published version, hot swap."""

from __future__ import annotations

import pytest
from serve_tables import V1_PAIRS, V2_PAIRS, expected, name, write_version

from common import storage
from common.lookup import Lookup
from serve.app import (
    AppArgs,
    BadInput,
    check_k,
    last_pair,
    next_answer,
    parse_history,
    parse_id,
    recommend_answer,
)
from serve.watcher import TableWatcher


def test_parse_history_uses_last_two_after_collapsing_repeats():
    assert parse_history("1,2", 10) == (1, 2)
    assert parse_history(" 9, 1 ,2 ", 10) == (1, 2)
    assert parse_history("3,7,7", 10) == (3, 7)
    assert parse_history("7,3,7,7", 10) == (3, 7)
    assert parse_history("5,5", 10) == (5, 5)
    assert parse_history("-1,4", 10) == (-1, 4)
    assert last_pair([4]) == (4, 4)


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "missing or empty"),
        ("", "missing or empty"),
        ("  ", "missing or empty"),
        ("5", "at least two"),
        ("1,x", "not an integer"),
        ("1,2.5", "not an integer"),
        ("1,", "not an integer"),
        ("1,1_0", "not an integer"),
        ("1,١٢", "not an integer"),
        ("1,99999999999", "not an integer"),
        (",".join(["1"] * 11), "at most 10"),
        ("1" * 200, "too long"),
    ],
)
def test_parse_history_rejects_with_a_message(text, message):
    with pytest.raises(BadInput, match=message):
        parse_history(text, 10)


def test_parse_id_and_k_bounds():
    assert parse_id(" 42 ", "id") == 42
    args = AppArgs(root="/x", default_k=10, max_k=20)
    assert check_k(None, args) == 10
    assert check_k(20, args) == 20
    for bad in (0, -1, 21):
        with pytest.raises(BadInput, match="out of range"):
            check_k(bad, args)


def test_every_contract_answer_matches_the_published_dicts(root):
    lookup = Lookup.load(root, write_version(root, "v1"))
    for c1 in range(10):
        for c2 in range(10):
            for k in (1, 2, 10):
                answer = next_answer(lookup, c1, c2, k)
                source, picked = expected(V1_PAIRS, c1, c2, k)
                assert answer["source"] == source
                assert answer["version"] == "v1"
                assert answer["history"] == [c1, c2]
                assert answer["clusters"] == [
                    {"cluster_id": c, "name": name(c), "score": s} for c, s in picked
                ]
    # Worked examples: a table row, the c2 backoff skipping c1 and topped up from the global top
    # (skipping c2 and what c2's list gave; scores capped so they never rise), the global backoff.
    assert next_answer(lookup, 1, 2, 2)["clusters"][1] == {
        "cluster_id": 4,
        "name": "Cluster 4",
        "score": 0.25,
    }
    assert [(c["cluster_id"], c["score"]) for c in next_answer(lookup, 6, 2, 5)["clusters"]] == [
        (1, 0.5), (7, 0.125), (0, 0.125), (8, 0.0625)
    ]
    assert next_answer(lookup, 6, 2, 5)["source"] == "backoff_c2"
    assert next_answer(lookup, 0, 9, 5)["source"] == "backoff_global"
    assert [c["cluster_id"] for c in next_answer(lookup, 0, 9, 5)["clusters"]] == [1, 2, 8]
    assert next_answer(lookup, 6, 2, 5)["clusters"][0]["score"] == 0.5  # c2's backoff score


def test_recommend_maps_items_to_clusters_and_back(root):
    lookup = Lookup.load(root, write_version(root, "v1"))
    answer = recommend_answer(lookup, ["i1-0", "nope", "i2-3", "i2-1"], k=2, n=2)
    # clusters [1, 2, 2] -> pair (1, 2) -> table row [3, 4]; top items of 3 and 4, ranks 0 and 1.
    assert answer["history"] == [1, 2]
    assert answer["source"] == "llm"
    assert answer["unknown_items"] == ["nope"]
    assert [(c["cluster_id"], c["items"]) for c in answer["clusters"]] == [
        (3, ["i3-0", "i3-1"]),
        (4, ["i4-0", "i4-1"]),
    ]
    # One cluster only -> (2, 2) -> successors of 2; the user's own items are left out.
    one = recommend_answer(lookup, ["i2-0"], k=1, n=3)
    assert (one["source"], one["clusters"][0]["cluster_id"]) == ("backoff_c2", 1)
    with pytest.raises(BadInput, match="none of the 2"):
        recommend_answer(lookup, ["x", "y"], k=1, n=1)


def test_watcher_swaps_on_a_new_version_and_keeps_serving_on_a_broken_one(root):
    watcher = TableWatcher(root, poll_interval_s=60, retry_failed_s=60)
    assert watcher.check_once() is False and watcher.lookup is None  # nothing published yet
    write_version(root, "v1")
    assert watcher.check_once() is True and watcher.lookup.version == "v1"
    assert watcher.check_once() is False  # unchanged pointer: no reload
    old = watcher.lookup
    write_version(root, "v2", pairs=V2_PAIRS)
    assert watcher.check_once() is True and watcher.lookup.version == "v2"
    assert old.answer(1, 2, 1) == ("llm", [(3, 0.5)])  # the old object is untouched
    assert watcher.lookup.answer(1, 2, 1) == ("llm", [(6, 0.875)])
    # A broken version: logged, v2 keeps serving, and it is not retried on every poll.
    storage.makedirs(storage.table_dir(root, "broken"))
    storage.swap_current(root, "broken")
    assert watcher.check_once() is False and watcher.lookup.version == "v2"
    assert "broken failed to load" in watcher.last_error
    calls = []
    watcher._load = lambda r, v: calls.append(v)
    assert watcher.check_once() is False and calls == []
    watcher.retry_failed_s = 0
    write_version(root, "broken", swap=False)  # repaired in place
    watcher._load = Lookup.load
    assert watcher.check_once() is True and watcher.lookup.version == "broken"
    assert watcher.last_error is None


def test_watcher_thread_picks_up_a_publish(root):
    import time

    write_version(root, "v1")
    watcher = TableWatcher(root, poll_interval_s=0.05).start()
    try:
        write_version(root, "v2", pairs=V2_PAIRS)
        deadline = time.monotonic() + 10
        while (watcher.lookup is None or watcher.lookup.version != "v2") and (
            time.monotonic() < deadline
        ):
            time.sleep(0.02)
        assert watcher.lookup.version == "v2"
    finally:
        watcher.stop()


def test_reconfigure_updates_limits_and_swaps_root(root, tmp_path):
    """`serve deploy` config updates reach reconfigure(): limits apply, a new root is loaded."""
    import asyncio

    from serve.app import NextInterest

    other = str(tmp_path / "other")
    write_version(root, "v1")
    write_version(other, "other", pairs=V2_PAIRS)

    async def scenario():
        cls = NextInterest.func_or_class  # the class under Serve's ingress wrapper
        replica = cls.__new__(cls)
        await replica.__init__({"root": root, "poll_interval_s": 60})
        assert replica.watcher.lookup.version == "v1"
        replica.reconfigure({"max_k": 3, "poll_interval_s": 5})
        assert (replica.args.max_k, replica.watcher.poll_interval_s) == (3, 5)
        old_watcher = replica.watcher
        replica.reconfigure({"root": other})
        assert old_watcher._stop.is_set() and replica.watcher.lookup.version == "other"
        response = await replica.next_single(history="1,2", k=1)
        return response.status_code, response.body

    status, body = asyncio.run(scenario())
    assert status == 200
    assert body.startswith(b'{"version":"other","history":[1,2],"source":"llm"')
    assert b'"cluster_id":6' in body


@pytest.mark.s3
def test_watcher_follows_current_on_s3(s3_bucket):
    """The same hot swap with the root on S3 (moto on 127.0.0.1)."""
    root = f"{s3_bucket}/serving"
    watcher = TableWatcher(root, poll_interval_s=60)
    assert watcher.check_once() is False and watcher.lookup is None
    write_version(root, "v1")
    assert watcher.check_once() is True and watcher.lookup.answer(1, 2, 1) == ("llm", [(3, 0.5)])
    write_version(root, "v2", pairs=V2_PAIRS)
    assert watcher.check_once() is True and watcher.lookup.answer(1, 2, 1) == ("llm", [(6, 0.875)])
    storage.swap_current(root, "missing")  # a pointer to nothing: logged, v2 keeps serving
    assert watcher.check_once() is False and watcher.lookup.version == "v2"
    assert "missing failed to load" in watcher.last_error


def test_answer_counts_reach_the_metric_in_batches(root):
    """Requests add to a dict; the Ray Counter gets one inc per (source, endpoint) per flush."""
    import asyncio

    from serve.app import NextInterest

    write_version(root, "v1")
    incs = []

    class FakeCounter:
        def inc(self, n, tags):
            incs.append((tags["source"], tags["endpoint"], n))

    async def scenario():
        cls = NextInterest.func_or_class
        replica = cls.__new__(cls)
        await replica.__init__({"root": root, "poll_interval_s": 60})
        replica.answer_counter = FakeCounter()
        replica._flushed_at = float("inf")  # as if the last flush had just happened, however slow
        for history in ("1,2", "1,2", "5,2", "1,2"):
            await replica.next_single(history=history, k=1)
        assert incs == []  # within a second of the last flush: nothing sent yet
        replica.check_health()  # Serve's periodic health check flushes
        assert sorted(incs) == [("backoff_c2", "next", 1), ("llm", "next", 3)]
        replica._flushed_at -= 2  # over a second later: the next request flushes
        await replica.next_single(history="2,3", k=1)
        assert incs[-1] == ("frequency", "next", 1)
        health = await replica.healthz()
        return health.body

    body = asyncio.run(scenario())
    assert b'"answers":{"llm":3,"backoff_c2":1,"frequency":1}' in body


def test_fast_path_answers_good_next_requests_and_passes_on_the_rest(root, tmp_path):
    """NextFastPath sends the same body FastAPI's handler would for a good GET /v1/next, and
    hands every other request (bad input, no table, other routes) to the app behind it."""
    import asyncio

    from serve.app import NextFastPath, NextInterest

    write_version(root, "v1")
    passed_on = []

    async def app_behind(scope, receive, send):
        passed_on.append((scope["method"], scope["path"], scope["query_string"]))

    def http(path, query=b"", method="GET", root_path=""):
        return {"type": "http", "method": method, "path": path, "root_path": root_path,
                "query_string": query}  # fmt: skip

    async def call(fast, scope):
        sent = []

        async def send(message):
            sent.append(message)

        await fast(scope, None, send)
        return sent

    async def scenario():
        cls = NextInterest.func_or_class
        replica = cls.__new__(cls)
        await replica.__init__({"root": root, "poll_interval_s": 60, "max_k": 20})
        fast = NextFastPath(app_behind)
        fast.replica = replica
        for query, history, k in [
            (b"history=1,2&k=2", "1,2", 2),
            (b"history=9%2C1%2C2", "9,1,2", None),  # percent-encoded commas; default k
            (b"k=1&history=5,2&other=x", "5,2", 1),  # any order; unknown keys ignored, as FastAPI
            (b"history=4,4&history=2,3&k=9&k=1", "2,3", 1),  # the last value wins, as Starlette
        ]:
            sent = await call(fast, http("/v1/next", query))
            handler = await replica.next_single(history=history, k=k)
            assert sent[0]["status"] == 200 and sent[1]["body"] == handler.body, query
            assert dict(sent[0]["headers"])[b"content-length"] == str(len(handler.body)).encode()
        mounted = await call(fast, http("/empty/v1/next", b"history=1,2", root_path="/empty"))
        assert mounted[1]["body"].startswith(b'{"version":"v1","history":[1,2]')
        assert passed_on == []
        for scope in [
            http("/v1/next", b"history=1,x"),
            http("/v1/next", b"history=1,2&k=0"),
            http("/v1/next", b"history=1,2&k=21"),
            http("/v1/next", b"history=1,2&k=+3"),
            http("/v1/next", b"history=1,42"),  # unknown cluster
            http("/v1/next", b"history=1"),
            http("/v1/next", b""),
            http("/v1/next", b"history=1,2", method="POST"),
            http("/v1/recommend", b"items=i1-0"),
            http("/v1/nextx", b"history=1,2"),
            http("/emptyx/v1/next", b"history=1,2", root_path="/empty"),  # not under the mount
            http("/empty", b"history=1,2", root_path="/empty"),
        ]:
            assert await call(fast, scope) == []
        assert len(passed_on) == 12
        empty = NextFastPath(app_behind)
        empty.replica = cls.__new__(cls)
        await empty.replica.__init__({"root": str(tmp_path / "nothing"), "poll_interval_s": 60})
        assert await call(empty, http("/v1/next", b"history=1,2")) == []  # no table: FastAPI's 503
        return replica.answers

    answers = asyncio.run(scenario())
    # Fast answers are counted like the handler's: 4 + 1 fast, 4 handler calls.
    assert sum(answers.values()) == 9
