"""One Ray Serve instance on 127.0.0.1:<free port> per test module, inside the session's Ray.

Two applications: `main` at / serving a root published before the start (v1), and `empty` at
/empty serving a root with nothing published yet (the no-table state, then a first publish).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
import pytest
from ports import free_port
from serve_tables import write_version


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


@pytest.fixture(scope="module")
def serve_app(ray_session, tmp_path_factory):
    """Serve for one module (starting it costs ~10-30 s on 2 cores: keep Serve tests in one
    module); shut down after it so the modules that follow get the Ray session back as it was."""
    from ray import serve
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from serve.app import AppArgs, bind_app, build_app

    root = str(tmp_path_factory.mktemp("serve_root"))
    empty_root = str(tmp_path_factory.mktemp("serve_empty_root"))
    write_version(root, "v1")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # A short poll so a publish shows within a second; small limits so the bounds are testable.
    common = dict(
        poll_interval_s=0.2,
        max_k=20,
        max_history=100,
        max_batch=50,
        max_items=20,
        max_items_per_cluster=3,  # under /v1/recommend's default n (5): the default is clamped
    )
    # The main app is built the way `serve run serve.app:build_app root=ROOT key=value` builds it:
    # Serve's own call, with every argument a string from the command line.
    cli_args = {"root": root, **{key: str(value) for key, value in common.items()}}
    main_app = call_user_app_builder_with_args_if_necessary(build_app, cli_args)
    serve.run(main_app, name="main", route_prefix="/")
    serve.run(bind_app(AppArgs(root=empty_root, **common)), name="empty", route_prefix="/empty")
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(timeout=30)
    wait_for(client, f"{url}/v1/healthz")
    wait_for(client, f"{url}/empty/v1/healthz")
    yield ServeHandle(url, root, empty_root, client)
    client.close()
    serve.shutdown()

    def serve_actors() -> list[str]:
        named = ray_session.util.list_named_actors(all_namespaces=True)
        return [a["name"] for a in named if a["name"].startswith("SERVE_")]

    # shutdown() gives up waiting after 30 s on a busy machine; the actors go soon after.
    deadline = time.monotonic() + 60
    while serve_actors() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert serve_actors() == [], "Serve did not shut down: later modules would share it"
