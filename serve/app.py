"""The published lookup table over HTTP with Ray Serve (docs/contracts.md "HTTP API",
docs/serve.md).

`serve run serve.app:build_app root=ROOT` serves `<root>/tables/CURRENT` on 127.0.0.1:8000:
`GET|POST /v1/next`, `GET /v1/recommend` (item grounding), `GET /v1/healthz`, OpenAPI at `/docs`.
Each replica holds the table as an immutable `common.lookup.Lookup` (dict lookups, microseconds)
and swaps it whole when CURRENT moves (`serve.watcher`). Bad input is a 4xx with a message, never
a 5xx: 400 for bad values, 422 for a request FastAPI cannot parse (malformed JSON, `k=abc`), 503
from /v1/next and /v1/recommend until a first table is published (/v1/healthz then answers 200
with `"status": "no table"`). Handlers return ready JSON responses: the pydantic response models
only document the API, they do not validate each answer (that costs more than the lookup), and
a good GET /v1/next is answered before FastAPI's routing (`NextFastPath`). Importing this module
is cheap (no torch, no table load): `serve build` imports it.
"""

# No `from __future__ import annotations`: Serve's ingress rewrites the handlers, and FastAPI
# must see real annotation objects to tell a JSON body from a query parameter.
import json
import logging
import time
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, Strict
from ray import serve
from ray.serve.metrics import Counter
from starlette.types import ASGIApp, Receive, Scope, Send

from common.lookup import Lookup
from serve.watcher import TableWatcher

log = logging.getLogger(__name__)


class AppArgs(BaseModel):
    """Arguments of `build_app` (`serve run serve.app:build_app root=...`) and of `user_config`."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field(description="Where tables/CURRENT lives: a local path or s3://bucket/prefix.")
    poll_interval_s: float = Field(2.0, gt=0, description="Seconds between reads of CURRENT.")
    retry_failed_s: float = Field(
        30.0,
        ge=0,
        description="Seconds before a version that failed to load is tried again while another "
        "serves (a replica with no table retries on every poll).",
    )
    default_k: int = Field(10, ge=1, description="Clusters returned when the request names no k.")
    max_k: int = Field(50, ge=1, description="Largest k accepted; a larger k is a 400.")
    max_history: int = Field(
        1000,
        ge=2,
        description="Most ids accepted in one history (only the last two clusters are used).",
    )
    max_batch: int = Field(1000, ge=1, description="Most histories in one POST /v1/next.")
    max_items: int = Field(200, ge=1, description="Most item ids accepted by /v1/recommend.")
    max_items_per_cluster: int = Field(
        20, ge=1, description="Largest `n` (items per predicted cluster) of /v1/recommend."
    )


class BadInput(ValueError):
    """A request value the API rejects with a 400 and this message."""


# Pure request handling: parsing and answer building (unit-tested without Ray or HTTP).


def parse_id(text: str, what: str) -> int:
    """An integer id written in ASCII digits (int() alone would take '١٢' and '1_0')."""
    t = text.strip()
    digits = t[1:] if t.startswith("-") else t
    if not digits or len(digits) > 10 or not (digits.isascii() and digits.isdigit()):
        raise BadInput(f"{what} {text.strip()!r} is not an integer id")
    return int(t)


def last_pair(ids: list[int]) -> tuple[int, int]:
    """(c1, c2): the last two clusters once consecutive repeats collapse, as in the transitions.

    [3, 7, 7] -> (3, 7). A history naming one cluster only ([5, 5]) gives (5, 5), which backs
    off to the successors of 5 alone.
    """
    c2 = ids[-1]
    for c in reversed(ids):
        if c != c2:
            return c, c2
    return c2, c2


def parse_history(text: str | None, max_history: int) -> tuple[int, int]:
    """The pair a `history=ID,ID[,...]` query names; every id must be an integer."""
    if text is None or not text.strip():
        raise BadInput("history is missing or empty: pass history=ID,ID[,...] (cluster ids)")
    # Each id is at most 11 characters plus a comma: refuse before splitting a huge string.
    if len(text) > 13 * max_history:
        raise BadInput(f"history is too long: at most {max_history} ids are accepted")
    parts = text.split(",")
    if len(parts) > max_history:
        raise BadInput(f"history has {len(parts)} ids; at most {max_history} are accepted")
    if len(parts) < 2:
        raise BadInput("history needs at least two cluster ids: history=ID,ID[,...]")
    return last_pair([parse_id(p, "history id") for p in parts])


def check_k(k: int | None, args: AppArgs) -> int:
    if k is None:
        return min(args.default_k, args.max_k)
    if not 1 <= k <= args.max_k:
        raise BadInput(f"k={k} is out of range: 1 <= k <= {args.max_k}")
    return k


def check_known(lookup: Lookup, ids: tuple[int, ...]) -> None:
    unknown = sorted({c for c in ids if c not in lookup.catalog})
    if unknown:
        raise BadInput(
            f"unknown cluster id(s) {unknown}: table {lookup.version} knows "
            f"{len(lookup.catalog)} clusters"
        )


def next_answer(lookup: Lookup, c1: int, c2: int, k: int) -> dict[str, Any]:
    """The /v1/next answer for a pair of known clusters (docs/contracts.md shape)."""
    source, picked = lookup.answer(c1, c2, k)
    name = lookup.catalog.name
    return {
        "version": lookup.version,
        "history": [c1, c2],
        "source": source,
        "clusters": [{"cluster_id": c, "name": name(c), "score": s} for c, s in picked],
    }


def recommend_answer(lookup: Lookup, items: list[str], k: int, n: int) -> dict[str, Any]:
    """Item grounding: recent items -> clusters -> predicted clusters -> their top items.

    `items` is oldest first. Unknown items are ignored and listed in `unknown_items`; the items
    the user already has are left out of each cluster's list.
    """
    clusters = [lookup.item_clusters[i] for i in items if i in lookup.item_clusters]
    if not clusters:
        raise BadInput(f"none of the {len(items)} item id(s) is in the catalog of {lookup.version}")
    c1, c2 = last_pair(clusters)
    answer = next_answer(lookup, c1, c2, k)
    seen = set(items)
    for row in answer["clusters"]:
        tops = lookup.top_items.get(row["cluster_id"], ())
        row["items"] = [i for i in tops if i not in seen][:n]
    answer["unknown_items"] = [i for i in items if i not in lookup.item_clusters]
    return answer


# Response models: they document the API in /docs; handlers return ready JSON (see the docstring).


class ClusterScore(BaseModel):
    cluster_id: int
    name: str
    score: float


class NextResponse(BaseModel):
    version: str = Field(description="The published table version that answered.")
    history: list[int] = Field(
        description="The (c1, c2) pair used: the last two clusters once consecutive repeats "
        "collapse ([3, 7, 7] -> [3, 7])."
    )
    source: str = Field(
        description="llm | frequency | backoff (a table row), backoff_c2 | backoff_global, or "
        "empty (no cluster to answer: `clusters` is [])"
    )
    clusters: list[ClusterScore]


class NextBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    histories: list[list[Annotated[int, Strict()]]] = Field(
        description="Histories of cluster ids, oldest first; each needs at least two."
    )
    k: Annotated[int, Strict()] | None = Field(None, description="Clusters per answer.")


class NextBatchResponse(BaseModel):
    version: str
    results: list[NextResponse] = Field(description="One answer per history, in request order.")


class ItemCluster(ClusterScore):
    items: list[str] = Field(description="Most engaged items of the cluster, best first.")


class RecommendResponse(BaseModel):
    version: str
    history: list[int]
    source: str
    clusters: list[ItemCluster]
    unknown_items: list[str] = Field(description="Requested item ids not in the catalog.")


class HealthResponse(BaseModel):
    status: str = Field(description="ok, or 'no table' before the first publish.")
    version: str | None
    loaded_at: float | None = Field(description="Unix time the served version was loaded.")
    pairs: int = Field(description="(c1, c2) pairs in the served table.")
    last_error: str | None = Field(description="Last failed load or pointer read, if any.")
    answers: dict[str, int] = Field(description="Answers by source given by this replica.")


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(obj: Any, status_code: int = 200) -> Response:
    return Response(json_bytes(obj), status_code=status_code, media_type="application/json")


api = FastAPI(
    title="next-interest",
    description="Next-interest clusters from the published lookup table "
    '(docs/contracts.md "HTTP API", docs/serve.md).',
    version="1",
)

# Encoded /v1/next bodies kept per replica, by total size: a body is ~0.1 KB at k=1 and ~4 KB at
# k=50, so a cap on entries alone (100k) allowed ~400 MB. 64 MB holds every pair of 300 clusters
# at the default k (~0.8 KB each, plus ~0.25 KB of dict entry, key and bytes header).
MAX_CACHED_BYTES = 64 * 2**20
CACHE_ENTRY_OVERHEAD = 256  # bytes a cached body costs besides its own length (approximate)

HISTORY_DOC = (
    "Cluster ids, oldest first, comma separated; the last two once consecutive repeats collapse "
    "are used (3,7,7 -> 3,7), earlier ids are not."
)

DEFAULT_ITEMS_PER_CLUSTER = 5  # /v1/recommend's `n` when the request names none (at most max)

JSON_HEADERS = [(b"content-type", b"application/json")]


def route_path(scope: Scope) -> str:
    """The path an app's router matches: `path` less the `root_path` it is mounted under, by
    the rule Starlette's router applies (its helper for it is private, so not imported)."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :]
    return path


class NextFastPath:
    """Answers a well-formed `GET /v1/next` before FastAPI's routing and parameter handling,
    which were a third of a replica's CPU per request under load (docs/benchmarks.md, issue 5).

    It asks the replica (`NextInterest.fast_next`) for the body; anything that is not a plain
    good request (a bad or unknown id, k out of range, no table yet, another route) goes on to
    FastAPI unchanged, so every error and its message still come from one place.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.replica: Any = None  # the NextInterest instance of this process, found on first use

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and route_path(scope) == "/v1/next":
            if self.replica is None:
                self.replica = serve.get_replica_context().servable_object
            body = self.replica.fast_next(scope["query_string"])
            if body is not None:
                headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


# Before `serve.ingress`: it freezes a copy of the app when it decorates the class.
api.add_middleware(NextFastPath)


@serve.deployment(
    name="NextInterest",
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 0.25},
)
@serve.ingress(api)
class NextInterest:
    """One replica: a `TableWatcher` and the handlers reading its current `Lookup`."""

    def __init__(self, args: AppArgs | dict[str, Any]) -> None:
        # user_config applies on top of these, not of the last config: a key removed from it
        # then falls back to the start value, as on a replica started after the change.
        self.init_args = AppArgs.model_validate(args)
        self.args = self.init_args
        self.watcher = self._start_watcher(self.args)
        self.answers: dict[str, int] = {}  # by source, for /v1/healthz
        # Counts not yet added to the Ray metric: one Counter.inc costs about as much as a whole
        # lookup, so requests add to this dict and it is flushed at most once a second.
        self._unflushed: dict[tuple[str, str], int] = {}
        self._flushed_at = time.monotonic()
        self._bodies: dict[tuple[int, int, int], tuple[str, bytes]] = {}
        self._bodies_of: Lookup | None = None  # the table version those bodies come from
        self._cached_bytes = 0  # their size, CACHE_ENTRY_OVERHEAD included
        self.max_cached_bytes = MAX_CACHED_BYTES
        self.answer_counter = Counter(
            "next_interest_answers",
            description="Answers given, by source (table row or backoff) and endpoint.",
            tag_keys=("source", "endpoint"),
        )

    @staticmethod
    def _start_watcher(args: AppArgs) -> TableWatcher:
        watcher = TableWatcher(args.root, args.poll_interval_s, args.retry_failed_s)
        watcher.check_once()  # the replica starts with the current table when there is one
        return watcher.start()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """`serve deploy` config updates: any AppArgs field, over the args the replica started
        with. A new root is loaded, then swapped; one with no loadable table raises, so the
        update fails and this replica's state (its table, its limits) stays as it was."""
        args = AppArgs.model_validate({**self.init_args.model_dump(), **(user_config or {})})
        if args.root != self.watcher.root:
            watcher = TableWatcher(args.root, args.poll_interval_s, args.retry_failed_s)
            watcher.check_once()
            if watcher.lookup is None:
                watcher.stop()
                served = self.watcher.lookup
                raise RuntimeError(
                    f"new root {args.root!r} has no table to serve "
                    f"({watcher.last_error or 'no tables/CURRENT there'}); still serving "
                    f"{served.version if served else 'no table'} from {self.watcher.root!r}"
                )
            old, self.watcher = self.watcher, watcher.start()
            old.stop()
        else:
            self.watcher.poll_interval_s = args.poll_interval_s
            self.watcher.retry_failed_s = args.retry_failed_s
        self.args = args

    def __del__(self) -> None:
        watcher = getattr(self, "watcher", None)
        if watcher is not None:
            watcher.stop()

    def _served(self) -> Lookup:
        lookup = self.watcher.lookup
        if lookup is None:
            raise HTTPException(
                503, f"no table published yet under {self.args.root}/tables/CURRENT"
            )
        return lookup

    def _next_body(self, lookup: Lookup, c1: int, c2: int, k: int) -> tuple[str, bytes]:
        """(source, JSON body) of GET /v1/next, encoded once per table version and pair: a
        version is immutable, and building + encoding the answer was a tenth of a replica's
        time under load. Bounded: past MAX_CACHED_BYTES, answers are built each time."""
        if lookup is not self._bodies_of:
            self._bodies, self._bodies_of, self._cached_bytes = {}, lookup, 0
        key = (c1, c2, k)
        hit = self._bodies.get(key)
        if hit is None:
            answer = next_answer(lookup, c1, c2, k)
            hit = (answer["source"], json_bytes(answer))
            size = len(hit[1]) + CACHE_ENTRY_OVERHEAD
            if self._cached_bytes + size <= self.max_cached_bytes:
                self._bodies[key] = hit
                self._cached_bytes += size
        return hit

    def _count(self, source: str, endpoint: str, n: int = 1) -> None:
        self.answers[source] = self.answers.get(source, 0) + n
        key = (source, endpoint)
        self._unflushed[key] = self._unflushed.get(key, 0) + n
        if time.monotonic() - self._flushed_at >= 1.0:
            self.flush_metrics()

    def flush_metrics(self) -> None:
        """Add the counts gathered since the last flush to the `next_interest_answers` metric."""
        pending, self._unflushed = self._unflushed, {}
        self._flushed_at = time.monotonic()
        for (source, endpoint), n in pending.items():
            self.answer_counter.inc(n, tags={"source": source, "endpoint": endpoint})

    def check_health(self) -> None:
        """Serve's periodic health check (every 10 s by default), also run once before a new
        replica gets traffic. Fails while CURRENT names a version this replica has not loaded
        (or CURRENT cannot be read) and it has no table: Serve then routes to the replicas that
        have one and replaces this one. With nothing published yet it passes: the documented
        503 is the answer. Also flushes the counts of an idle replica, so the metric never lags
        by more than a health-check period."""
        self.flush_metrics()
        problem = self.watcher.unready_reason()
        if problem is not None:
            raise RuntimeError(f"no table loaded from {self.watcher.root}: {problem}")

    def _next_request(self, lookup: Lookup, history: str | None, k: int | None) -> bytes:
        """The GET /v1/next body for `history` and `k`; BadInput for a bad request."""
        kk = check_k(k, self.args)
        c1, c2 = parse_history(history, self.args.max_history)
        check_known(lookup, (c1, c2))
        source, body = self._next_body(lookup, c1, c2, kk)
        self._count(source, "next")
        return body

    def fast_next(self, query_string: bytes) -> bytes | None:
        """`NextFastPath`'s answer: the body of a good request, None for anything else (FastAPI
        then answers it). Reads the query as Starlette does (the last value of a key wins) and
        takes k only in plain digits, so a good request gets the same answer on either path."""
        lookup = self.watcher.lookup
        if lookup is None:
            return None
        params = dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))
        k = params.get("k")
        if k is not None and not (k.isascii() and k.isdigit() and len(k) <= 9):
            return None
        try:
            return self._next_request(lookup, params.get("history"), None if k is None else int(k))
        except BadInput:
            return None

    @api.get("/v1/next", response_model=NextResponse)
    async def next_single(
        self,
        history: str | None = Query(None, description=HISTORY_DOC, examples=["3,7"]),
        k: int | None = Query(None, description="Clusters to return (1..max_k)."),
    ) -> Response:
        lookup = self._served()
        try:
            body = self._next_request(lookup, history, k)
        except BadInput as e:
            raise HTTPException(400, str(e)) from None
        return Response(body, media_type="application/json")

    @api.post("/v1/next", response_model=NextBatchResponse)
    async def next_batch(self, body: NextBatchRequest) -> Response:
        lookup = self._served()  # one version answers the whole batch
        args = self.args
        try:
            kk = check_k(body.k, args)
            if len(body.histories) > args.max_batch:
                raise BadInput(
                    f"batch of {len(body.histories)} histories; at most {args.max_batch} accepted"
                )
            pairs = []
            for i, ids in enumerate(body.histories):
                if not 2 <= len(ids) <= args.max_history:
                    raise BadInput(
                        f"histories[{i}] has {len(ids)} ids; 2..{args.max_history} are accepted"
                    )
                pair = last_pair(ids)
                try:
                    check_known(lookup, pair)
                except BadInput as e:
                    raise BadInput(f"histories[{i}]: {e}") from None
                pairs.append(pair)
        except BadInput as e:
            raise HTTPException(400, str(e)) from None
        results = [next_answer(lookup, c1, c2, kk) for c1, c2 in pairs]
        counts: dict[str, int] = {}
        for r in results:
            counts[r["source"]] = counts.get(r["source"], 0) + 1
        for source, n in counts.items():
            self._count(source, "next_batch", n)
        return json_response({"version": lookup.version, "results": results})

    @api.get("/v1/recommend", response_model=RecommendResponse)
    async def recommend(
        self,
        items: str | None = Query(None, description="Item ids, oldest first, comma separated."),
        k: int | None = Query(None, description="Predicted clusters to return (1..max_k)."),
        n: int | None = Query(
            None,
            description=f"Items per predicted cluster (1..max_items_per_cluster; default "
            f"{DEFAULT_ITEMS_PER_CLUSTER} or max_items_per_cluster if smaller).",
        ),
    ) -> Response:
        lookup = self._served()
        args = self.args
        if n is None:
            n = min(DEFAULT_ITEMS_PER_CLUSTER, args.max_items_per_cluster)
        try:
            kk = check_k(k, args)
            if not 1 <= n <= args.max_items_per_cluster:
                raise BadInput(f"n={n} is out of range: 1 <= n <= {args.max_items_per_cluster}")
            if items is None or not items.strip():
                raise BadInput("items is missing or empty: pass items=ID,ID,... (item ids)")
            if len(items) > 64 * args.max_items:
                raise BadInput(f"items is too long: at most {args.max_items} ids are accepted")
            ids = [i.strip() for i in items.split(",") if i.strip()]
            if not ids or len(ids) > args.max_items:
                raise BadInput(f"items has {len(ids)} ids; 1..{args.max_items} are accepted")
            answer = recommend_answer(lookup, ids, kk, n)
        except BadInput as e:
            raise HTTPException(400, str(e)) from None
        self._count(answer["source"], "recommend")
        return json_response(answer)

    @api.get("/v1/healthz", response_model=HealthResponse)
    async def healthz(self) -> Response:
        lookup = self.watcher.lookup
        return json_response(
            {
                "status": "ok" if lookup is not None else "no table",
                "version": lookup.version if lookup is not None else None,
                "loaded_at": self.watcher.loaded_at,
                "pairs": len(lookup.pairs) if lookup is not None else 0,
                "last_error": self.watcher.last_error,
                "answers": dict(self.answers),
            }
        )


def bind_app(args: AppArgs, **options: Any) -> serve.Application:
    """The application with deployment options on top of the defaults (benchmarks, tests)."""
    deployment = NextInterest.options(**options) if options else NextInterest
    return deployment.bind(args.model_dump())


def build_app(args: AppArgs) -> serve.Application:
    """`serve run serve.app:build_app root=ROOT [poll_interval_s=...]`."""
    return bind_app(args)
