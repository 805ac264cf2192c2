"""The Serve app over real HTTP on 127.0.0.1: contract answers, backoff, batch == single,
item grounding, every bad input a 4xx with a message, a schema-driven fuzz (no 5xx), the no-table
state, hot swap under load. One module, so one Serve start (see conftest.py)."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from serve_tables import V1_PAIRS, V2_PAIRS, expected, name, write_version

from common import storage  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.serve]

PAIRS = {"v1": V1_PAIRS, "v2": V2_PAIRS}


def check_answer(body: dict, c1: int, c2: int, k: int) -> None:
    """The body is exactly the contract answer of the version it names."""
    source, picked = expected(PAIRS[body["version"]], c1, c2, k)
    assert body == {
        "version": body["version"],
        "history": [c1, c2],
        "source": source,
        "clusters": [{"cluster_id": c, "name": name(c), "score": s} for c, s in picked],
    }


def test_every_pair_answers_per_contract_with_backoff(serve_app):
    c = serve_app.client
    sources = set()
    for c1 in range(10):
        for c2 in range(10):
            r = c.get(f"{serve_app.url}/v1/next", params={"history": f"{c1},{c2}", "k": 3})
            assert r.status_code == 200, r.text
            check_answer(r.json(), c1, c2, 3)
            sources.add(r.json()["source"])
    assert sources == {"llm", "frequency", "backoff", "backoff_c2", "backoff_global"}
    # Worked examples: longer history (last two, repeats collapsed) and the default k.
    r = c.get(f"{serve_app.url}/v1/next", params={"history": "0,9,1,2,2"})
    check_answer(r.json(), 1, 2, 10)
    r = c.get(f"{serve_app.url}/v1/next", params={"history": "5,2", "k": 5}).json()
    # c2's successors, then the global top for the rest of k (without c2 and what c2 gave).
    want = ("backoff_c2", [1, 6, 7, 0, 8])
    assert (r["source"], [x["cluster_id"] for x in r["clusters"]]) == want
    r = c.get(f"{serve_app.url}/v1/next", params={"history": "1,9", "k": 5}).json()
    assert (r["source"], [x["cluster_id"] for x in r["clusters"]]) == ("backoff_global", [0, 2, 8])


def history_pair(history: list[int]) -> tuple[int, int]:
    """The contract's pair of a history, worked out here (not with serve.app): the last two ids
    once consecutive repeats collapse; one distinct id x gives (x, x)."""
    ids = [c for i, c in enumerate(history) if i == 0 or c != history[i - 1]]
    return (ids[-2], ids[-1]) if len(ids) > 1 else (ids[-1], ids[-1])


def test_batch_equals_single_in_order(serve_app):
    """Each batch result is the contract answer of its own history, in order, and equals the
    single GET of it (whichever version is served when this test runs)."""
    c = serve_app.client
    rng = random.Random(0)
    histories = [[rng.randrange(10) for _ in range(rng.randrange(2, 6))] for _ in range(40)]
    histories += [[4, 7, 7], [2, 2, 9, 9], [6, 6]]  # repeats at the end collapse
    r = c.post(f"{serve_app.url}/v1/next", json={"histories": histories, "k": 4})
    assert r.status_code == 200, r.text
    batch = r.json()
    assert len(batch["results"]) == len(histories)
    for h, answer in zip(histories, batch["results"], strict=True):
        assert answer["version"] == batch["version"]
        check_answer(answer, *history_pair(h), 4)
        single = c.get(
            f"{serve_app.url}/v1/next", params={"history": ",".join(map(str, h)), "k": 4}
        ).json()
        assert single == answer  # no publish runs while this test does


def test_recommend_grounds_items(serve_app):
    r = serve_app.client.get(
        f"{serve_app.url}/v1/recommend", params={"items": "i1-0,zzz,i2-3,i2-1", "k": 2, "n": 2}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    source, picked = expected(PAIRS[body["version"]], 1, 2, 2)
    assert body["history"] == [1, 2] and body["source"] == source
    assert body["unknown_items"] == ["zzz"]
    assert body["clusters"] == [
        {"cluster_id": c, "name": name(c), "score": s, "items": [f"i{c}-0", f"i{c}-1"]}
        for c, s in picked
    ]
    # No n: 5 items per cluster, clamped to max_items_per_cluster (3 here), not a 400.
    r = serve_app.client.get(f"{serve_app.url}/v1/recommend", params={"items": "i1-0", "k": 1})
    assert r.status_code == 200, r.text
    assert [c["items"] for c in r.json()["clusters"]] == [["i0-0", "i0-1", "i0-2"]]


BAD = [
    ("get", "/v1/next", {}, 400, "missing"),
    ("get", "/v1/next", {"history": ""}, 400, "missing"),
    ("get", "/v1/next", {"history": "3"}, 400, "at least two"),
    ("get", "/v1/next", {"history": "1,abc"}, 400, "not an integer"),
    ("get", "/v1/next", {"history": "1,2.0"}, 400, "not an integer"),
    ("get", "/v1/next", {"history": "1,999"}, 400, "unknown cluster"),
    ("get", "/v1/next", {"history": "-5,2"}, 400, "unknown cluster"),
    ("get", "/v1/next", {"history": "1,2", "k": 0}, 400, "out of range"),
    ("get", "/v1/next", {"history": "1,2", "k": 21}, 400, "out of range"),
    ("get", "/v1/next", {"history": "1,2", "k": "ten"}, 422, "int"),
    ("get", "/v1/next", {"history": ",".join(["1", "2"] * 60)}, 400, "at most 100"),
    ("get", "/v1/next", {"history": ",".join(["1"] * 1000)}, 400, "too long"),
    ("post", "/v1/next", {"histories": [[1, 2]], "k": 99}, 400, "out of range"),
    ("post", "/v1/next", {"histories": [[1, 2], [3]]}, 400, "histories[1]"),
    ("post", "/v1/next", {"histories": [[1, 2], [3, 77]]}, 400, "histories[1]: unknown"),
    ("post", "/v1/next", {"histories": [[1, "x"]]}, 422, "integer"),
    ("post", "/v1/next", {"histories": [[1, 2.5]]}, 422, "integer"),
    ("post", "/v1/next", {"histories": [[1, 2]] * 51}, 400, "at most 50"),
    ("post", "/v1/next", {"k": 3}, 422, "histories"),
    ("post", "/v1/next", {"histories": "1,2"}, 422, "list"),
    ("post", "/v1/next", b"{not json", 422, "JSON"),
    ("post", "/v1/next", b"", 422, ""),
    ("get", "/v1/recommend", {}, 400, "items is missing"),
    ("get", "/v1/recommend", {"items": "nope,nada"}, 400, "none of the 2"),
    ("get", "/v1/recommend", {"items": "i1-0", "n": 0}, 400, "out of range"),
    ("get", "/v1/recommend", {"items": "i1-0", "n": 4}, 400, "1 <= n <= 3"),
    ("get", "/v1/recommend", {"items": "i1-0", "k": 100}, 400, "out of range"),
    ("get", "/v1/recommend", {"items": ",".join(["i1-0"] * 21)}, 400, "1..20"),
    ("get", "/v1/recommend", {"items": ",".join(["i1-0"] * 300)}, 400, "too long"),
    ("get", "/v1/recommend", {"items": "i1-0", "n": "x"}, 422, "int"),
]


@pytest.mark.parametrize("method, path, data, status, message", BAD)
def test_bad_input_is_a_4xx_with_a_message(serve_app, method, path, data, status, message):
    url = serve_app.url + path
    if method == "get":
        r = serve_app.client.get(url, params=data)
    elif isinstance(data, bytes):
        r = serve_app.client.post(url, content=data, headers={"content-type": "application/json"})
    else:
        r = serve_app.client.post(url, json=data)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert message in (detail if isinstance(detail, str) else str(detail))


@pytest.mark.parametrize("path, param", [("/v1/next", "history"), ("/v1/recommend", "items")])
def test_a_url_past_the_ingress_buffer_is_a_4xx(serve_app, path, param):
    """~40 KB of ids: the ingress (HAProxy's 16 KB request buffer) refuses it before the app;
    through Serve's Python proxy the app's own length check does. A 4xx either way."""
    r = serve_app.client.get(serve_app.url + path, params={param: ",".join(["1"] * 10_000)})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:200])
    assert r.text.strip()


FUZZ_EXAMPLES_PER_MODE = 60


def test_openapi_fuzz_never_gives_a_5xx(serve_app):
    """schemathesis: valid and invalid requests for every operation of /openapi.json, a bounded
    number of each (derandomized, so the same cases every run), and never a 5xx."""
    schema = schemathesis.openapi.from_url(f"{serve_app.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    names = sorted(f"{op.method.upper()} {op.path}" for op in operations)
    assert names == ["GET /v1/healthz", "GET /v1/next", "GET /v1/recommend", "POST /v1/next"]
    statuses: dict[int, int] = {}
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.NEGATIVE and op.path == "/v1/healthz":
                continue  # no parameters: nothing invalid to generate

            @settings(
                max_examples=FUZZ_EXAMPLES_PER_MODE,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=op.as_strategy(generation_mode=mode))
            def call(case):
                response = case.call(base_url=serve_app.url, timeout=30)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                assert response.status_code < 500, (case.as_curl_command(), response.text)

            call()
    assert sum(statuses.values()) > 100
    assert {200, 400, 422} <= set(statuses)
    print("status counts:", dict(sorted(statuses.items())))


def test_no_table_then_first_publish(serve_app):
    c, url = serve_app.client, serve_app.url + "/empty"
    health = c.get(f"{url}/v1/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "no table" and health.json()["version"] is None
    for r in (
        c.get(f"{url}/v1/next", params={"history": "1,2"}),
        c.post(f"{url}/v1/next", json={"histories": [[1, 2]]}),
        c.get(f"{url}/v1/recommend", params={"items": "i1-0"}),
    ):
        assert r.status_code == 503 and "no table published yet" in r.json()["detail"]
    write_version(serve_app.empty_root, "first")
    deadline = time.monotonic() + 30
    while c.get(f"{url}/v1/healthz").json()["version"] != "first":
        assert time.monotonic() < deadline, "first publish not picked up in 30 s"
        time.sleep(0.1)
    r = c.get(f"{url}/v1/next", params={"history": "1,2", "k": 1}).json()
    assert (r["version"], r["clusters"][0]["cluster_id"]) == ("first", 3)


def test_hot_swap_under_load_has_no_failed_request(serve_app):
    """5 clients send requests back to back until told to stop; v2 and then a broken version
    (its table unreadable) are published while they run. Every request is a 200 with the
    contract answer of the version it names; each client, whose requests are sequential, reads
    the old version then the new one, never the old one after the new (one replica); and the
    requests answered after the broken swap was seen all come from the new version. Bounded by
    request counts and timeouts, not by how fast the swap is."""
    url, root, http = serve_app.url, serve_app.root, serve_app.client
    current = http.get(f"{url}/v1/healthz").json()["version"]
    new = "v2" if current == "v1" else "v1"
    results: list[list[tuple[int, dict | str, int, int]]] = [[] for _ in range(5)]
    stop = threading.Event()

    def client(i: int) -> None:
        rng = random.Random(i)
        with httpx.Client(timeout=30) as c:
            while not stop.is_set() and len(results[i]) < 20_000:
                c1, c2 = rng.randrange(10), rng.randrange(10)
                r = c.get(f"{url}/v1/next", params={"history": f"{c1},{c2}", "k": 3})
                body = r.json() if r.status_code == 200 else r.text
                results[i].append((r.status_code, body, c1, c2))

    def each_client_answers(n: int) -> list[int]:
        """Wait (60 s at most) until every client has n more answers than now; their count now."""
        marks = [len(rows) for rows in results]
        deadline = time.monotonic() + 60
        while any(len(rows) - m < n for rows, m in zip(results, marks, strict=True)):
            assert all(t.is_alive() for t in threads), "a client stopped early"
            assert time.monotonic() < deadline, "the clients did not get answers in 60 s"
            time.sleep(0.05)
        return marks

    def wait_health(done) -> dict:
        deadline = time.monotonic() + 30
        while not done(health := http.get(f"{url}/v1/healthz").json()):
            assert time.monotonic() < deadline, f"not seen in 30 s: {health}"
            time.sleep(0.05)
        return health

    threads = [threading.Thread(target=client, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    try:
        each_client_answers(50)  # every client reads the old version first
        write_version(root, new, pairs=PAIRS[new])
        wait_health(lambda h: h["version"] == new)
        each_client_answers(100)
        write_version(root, "broken", swap=False)
        Path(storage.table_dir(root, "broken"), "table.parquet").write_bytes(b"not parquet")
        storage.swap_current(root, "broken")  # fails to load: the new version keeps serving
        health = wait_health(lambda h: h["last_error"] is not None)
        after_broken = each_client_answers(100)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert health["version"] == new and "broken failed to load" in health["last_error"]

    rows = [row for per_client in results for row in per_client]
    assert [r for r in rows if r[0] != 200] == []
    for _, body, c1, c2 in rows:
        check_answer(body, c1, c2, 3)  # every answer matches the version it names
    for i, per_client in enumerate(results):
        seq = [body["version"] for _, body, _, _ in per_client]
        assert set(seq) == {current, new}, i
        assert seq == sorted(seq, key=[current, new].index), f"client {i}: old after new"
        late = seq[after_broken[i] :]
        assert len(late) >= 100 and set(late) == {new}, i
    storage.swap_current(root, new)  # leave a good pointer for later tests
