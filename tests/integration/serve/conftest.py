"""One Ray Serve instance on 127.0.0.1:<free port> shared by every Serve test of the session.

Two applications: `main` at / serving a root published before the start (v1), and `empty` at
/empty serving a root with nothing published yet (the no-table state, then a first publish).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
import pytest
from serve_tables import write_version


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServeHandle:
    url: str
    root: str  # main app's root
    empty_root: str  # /empty app's root, nothing published at start
    client: httpx.Client


def wait_for(client: httpx.Client, url: str, timeout_s: float = 60.0) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            r = client.get(url)
            if r.status_code == 200:
                return r
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready in {timeout_s}s")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def serve_app(ray_session, tmp_path_factory):
    from ray import serve

    from serve.app import AppArgs, bind_app

    root = str(tmp_path_factory.mktemp("serve_root"))
    empty_root = str(tmp_path_factory.mktemp("serve_empty_root"))
    write_version(root, "v1")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # A short poll so a publish shows within a second; small limits so the bounds are testable.
    common = dict(poll_interval_s=0.2, max_k=20, max_history=100, max_batch=50, max_items=20)
    serve.run(bind_app(AppArgs(root=root, **common)), name="main", route_prefix="/")
    serve.run(bind_app(AppArgs(root=empty_root, **common)), name="empty", route_prefix="/empty")
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(timeout=30)
    wait_for(client, f"{url}/v1/healthz")
    wait_for(client, f"{url}/empty/v1/healthz")
    yield ServeHandle(url, root, empty_root, client)
    client.close()
    serve.shutdown()
