"""Requests/s of the Ray Serve app vs a bare FastAPI + uvicorn app on the same table and load.

Both answer GET /v1/next (and POST /v1/next batches) from the same published version: Serve
through its HTTP proxy and a replica (serve.app), the bare app from a dict in one uvicorn process.
The same asyncio + aiohttp load generator (loopback, a fixed number of requests, a fixed number
of keep-alive connections) drives each in turn, alternating, and each line reports requests/s,
answers/s, errors and p50/p99 latency. Run:

    python -m bench.serve_vs_fastapi --requests 6000 --concurrency 16
    python -m bench.serve_vs_fastapi --requests 6000 --concurrency 16 --throughput-optimized

With --throughput-optimized (RAY_SERVE_THROUGHPUT_OPTIMIZED=1) the replica also serves HTTP on
its own port ("direct ingress", the target an external load balancer is given); that path is
measured too, as `serve_direct`, beside the proxy path `serve`. With --haproxy
(RAY_SERVE_ENABLE_HA_PROXY=1 as well: the project's default, common/rayinit.py) Serve's port is
HAProxy forwarding to those replica ports instead of the Python proxy; `serve` measures it.

The bar (issue 5): Serve >= 0.5x the bare app's requests/s with zero errors. Results go to
docs/benchmarks.md. The machine is shared: the 1-minute load average is printed per run.
"""

# No `from __future__ import annotations`: FastAPI must see the Batch body model itself.
import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import shutil
import statistics
import tempfile
import time

import numpy as np
import pyarrow as pa


def make_table(root: str, n_clusters: int, k: int, seed: int = 0) -> str:
    """Publish a full table (every ordered pair, k answers) with common.publish; returns version."""
    from common import publish, schemas
    from common.catalog import Catalog

    rng = np.random.default_rng(seed)
    ids = list(range(n_clusters))
    rows = {name: [] for name in schemas.TABLE.names}
    for c1 in ids:
        for c2 in ids:
            if c1 == c2:
                continue
            pool = [c for c in rng.permutation(n_clusters)[: k + 2] if c not in (c1, c2)][:k]
            scores = np.sort(rng.random(len(pool)))[::-1]
            for rank, (c3, s) in enumerate(zip(pool, scores, strict=True), start=1):
                for col, v in zip(rows, (c1, c2, rank, int(c3), float(s), "llm"), strict=True):
                    rows[col].append(v)
    table = pa.table(rows, schema=schemas.TABLE)
    backoff = pa.table(
        {
            "c2": pa.array([-1] * (k + 2), pa.int32()),
            "rank": pa.array(range(1, k + 3), pa.int16()),
            "c3": pa.array(ids[: k + 2], pa.int32()),
            "score": pa.array([1.0 / (r + 1) for r in range(k + 2)], pa.float32()),
        }
    )
    catalog = Catalog(tuple(ids), tuple(f"Interest {c}" for c in ids), ("",) * n_clusters)
    version = "bench-v1"
    publish.publish_version(
        root, version, table=table, backoff=backoff, catalog=catalog, manifest={"bench": True}
    )
    return version


def run_bare(root: str, version: str, port: int) -> None:
    """The baseline: FastAPI + uvicorn, answers from a plain dict built from the same files."""
    import uvicorn
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import Response
    from pydantic import BaseModel

    from common.lookup import Lookup

    lookup = Lookup.load(root, version)
    names = {c: lookup.catalog.name(c) for c in lookup.catalog.ids}
    app = FastAPI()

    def answer(c1: int, c2: int, k: int) -> dict:
        source, picked = lookup.answer(c1, c2, k)
        return {
            "version": version,
            "history": [c1, c2],
            "source": source,
            "clusters": [{"cluster_id": c, "name": names[c], "score": s} for c, s in picked],
        }

    def dumps(obj) -> Response:
        return Response(json.dumps(obj, separators=(",", ":")), media_type="application/json")

    @app.get("/v1/next")
    async def next_single(history: str, k: int = 10):
        try:
            c1, c2 = (int(x) for x in history.split(",")[-2:])
        except ValueError:
            raise HTTPException(400, "bad history") from None
        return dumps(answer(c1, c2, k))

    class Batch(BaseModel):
        histories: list[list[int]]
        k: int = 10

    @app.post("/v1/next")
    async def next_batch(body: Batch):
        results = [answer(h[-2], h[-1], body.k) for h in body.histories]
        return dumps({"version": version, "results": results})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


async def drive(
    urls: list[str], n_requests: int, concurrency: int, n_clusters: int, batch: int, k: int
):
    """Send n_requests over `concurrency` keep-alive connections; latencies in ms, error count.

    Connection j talks to urls[j % len(urls)]: several urls are the replicas' direct-ingress
    ports, shared out as a load balancer given Serve's target group would.
    """
    import aiohttp

    rng = random.Random(1)
    pairs = [rng.sample(range(n_clusters), 2) for _ in range(max(n_requests, 1) * max(batch, 1))]
    latencies: list[float] = []
    errors = 0
    answers = 0
    queue = iter(range(n_requests))

    async def worker(session: aiohttp.ClientSession, url: str) -> None:
        nonlocal errors, answers
        for i in queue:
            t0 = time.perf_counter()
            try:
                if batch:
                    body = {"histories": pairs[i * batch : (i + 1) * batch], "k": k}
                    async with session.post(f"{url}/v1/next", json=body) as r:
                        data = await r.json()
                        ok = r.status == 200 and len(data["results"]) == batch
                else:
                    c1, c2 = pairs[i]
                    params = {"history": f"{c1},{c2}", "k": str(k)}
                    async with session.get(f"{url}/v1/next", params=params) as r:
                        data = await r.json()
                        ok = r.status == 200 and len(data["clusters"]) == k
            except aiohttp.ClientError:
                ok = False
            latencies.append((time.perf_counter() - t0) * 1000)
            if ok:
                answers += batch or 1
            else:
                errors += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm-up: a few requests per connection, not counted (each response read and released).
        async def warm(url: str) -> None:
            for _ in range(5):
                async with session.get(f"{url}/v1/next", params={"history": "1,2"}) as r:
                    await r.read()

        each = [urls[j % len(urls)] for j in range(concurrency)]
        await asyncio.gather(*(warm(url) for url in each))
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session, url) for url in each))
        wall = time.perf_counter() - t0
    latencies.sort()
    return {
        "requests": n_requests,
        "errors": errors,
        "wall_s": round(wall, 2),
        "rps": round(n_requests / wall, 1),
        "answers_per_s": round(answers / wall, 1),
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))], 2),
    }


def wait_ready(url: str, timeout_s: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/next", params={"history": "1,2"}, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


def direct_ingress_ports(app_name: str) -> list[int]:
    """The replicas' own HTTP ports when direct ingress is on (throughput-optimized), else []."""
    import ray
    from ray.serve._private import constants
    from ray.serve.context import _get_global_client

    if not constants.RAY_SERVE_ENABLE_DIRECT_INGRESS:
        return []
    controller = _get_global_client()._controller
    for group in ray.get(controller.get_target_groups.remote(app_name)):
        if group.app_name == app_name and group.protocol == "HTTP":
            return [t.port for t in group.targets]
    return []


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=6000, help="Requests per measured run.")
    p.add_argument("--concurrency", type=int, default=16, help="Concurrent connections.")
    p.add_argument("--clusters", type=int, default=120, help="Clusters (pairs = n*(n-1)).")
    p.add_argument("--k", type=int, default=10, help="Answers per pair and per request.")
    p.add_argument("--batch", type=int, default=100, help="Histories per POST in the batch run.")
    p.add_argument("--replicas", type=int, default=1, help="Serve replicas.")
    p.add_argument("--max-ongoing", type=int, default=256, help="Serve max_ongoing_requests.")
    p.add_argument("--access-log", action="store_true", help="Keep Serve's per-request log.")
    p.add_argument("--repeats", type=int, default=2, help="Alternating runs per server.")
    p.add_argument(
        "--throughput-optimized",
        action="store_true",
        help="RAY_SERVE_THROUGHPUT_OPTIMIZED=1: direct ingress (no proxy hop), user code on the "
        "replica's main loop, buffered request logs.",
    )
    p.add_argument(
        "--haproxy",
        action="store_true",
        help="RAY_SERVE_ENABLE_HA_PROXY=1 (implies --throughput-optimized): HAProxy, not Serve's "
        "Python proxy, on the HTTP port (the project's default ingress).",
    )
    a = p.parse_args()
    a.throughput_optimized |= a.haproxy

    root = tempfile.mkdtemp(prefix="bench_serve_")
    version = make_table(root, a.clusters, a.k)

    bare_port = free_port()
    bare = mp.get_context("spawn").Process(target=run_bare, args=(root, version, bare_port))
    bare.start()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Read when ray.serve is imported, here and in every Ray worker; set both ways so that the
    # project's defaults (common/rayinit.py) or the shell do not change what is measured.
    os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1" if a.throughput_optimized else "0"
    os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1" if a.haproxy else "0"
    import ray
    from ray import serve

    from serve.app import AppArgs, bind_app

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve_port = free_port()
    serve.start(
        http_options={"host": "127.0.0.1", "port": serve_port},
        logging_config={"enable_access_log": a.access_log},
    )
    options = {"num_replicas": a.replicas, "max_ongoing_requests": a.max_ongoing}
    if not a.access_log:
        # As the bare app (log_level="warning", access_log=False): at INFO a replica still builds
        # each access-log record before dropping it (~4% of its samples under py-spy).
        options["logging_config"] = {"enable_access_log": False, "log_level": "WARNING"}
    serve.run(bind_app(AppArgs(root=root, max_k=a.k), **options), name="bench", route_prefix="/")
    servers = [
        ("bare", [f"http://127.0.0.1:{bare_port}"]),
        ("serve", [f"http://127.0.0.1:{serve_port}"]),
    ]
    for _, urls in servers:
        for url in urls:
            wait_ready(url)
    # Direct-ingress ports appear once every replica is up (wait_ready above).
    direct = [f"http://127.0.0.1:{p}" for p in direct_ingress_ports("bench")]
    if direct:
        servers.append(("serve_direct", direct))
        for url in direct:
            wait_ready(url)

    results = []
    for mode, n, batch in (
        ("single", a.requests, 0),
        ("batch", max(a.requests // 20, 50), a.batch),
    ):
        for rep in range(a.repeats):
            for name, urls in servers:
                r = asyncio.run(drive(urls, n, a.concurrency, a.clusters, batch, a.k))
                r.update(server=name, mode=mode, rep=rep, load1=round(os.getloadavg()[0], 2))
                results.append(r)
                print(json.dumps(r), flush=True)
    summary = {"config": vars(a)}
    for mode in ("single", "batch"):
        # Best of the repeats per server: on a shared machine the best run is the least disturbed.
        best = {
            name: max(
                r["answers_per_s"] for r in results if r["server"] == name and r["mode"] == mode
            )
            for name, _ in servers
        }
        for name, _ in servers[1:]:
            summary[f"{mode}_ratio_{name}_over_bare"] = round(best[name] / best["bare"], 3)
    summary["errors"] = sum(r["errors"] for r in results)
    print(json.dumps(summary), flush=True)
    serve.shutdown()
    ray.shutdown()
    bare.terminate()
    bare.join()
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
