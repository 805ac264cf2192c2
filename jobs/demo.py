"""The whole loop on one machine, on embedded defaults: what `make demo` runs.

simulate a log -> aggregate (Ray Data) -> one pipeline tick for the day after the log (LoRA
fine-tune with Ray Train, RAG snapshot, bulk inference with the adapter and RAG, guards, atomic
publish) -> Ray Serve on 127.0.0.1 -> a few `/v1/next` queries over HTTP -> a short replay
report comparing strategies on the last days of the log. Sizes are demo sizes (32 clusters,
six weeks of log, a small fine-tune) set by `DEMO_OVERRIDES` here, not by the global defaults;
`--set` overrides them, and `--config FILE` replaces them altogether.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import time
import urllib.request

from common.cli import InputError, config_from_args, job_parser, setup_logging
from common.config import Config, ConfigError
from common.lookup import Lookup
from common.storage import join, read_current, report_dir
from common.transitions import list_days, read_transitions

log = logging.getLogger(__name__)

DEMO_OVERRIDES = [
    "root=data",
    "report=demo",
    "simulate.n_clusters=32",
    "simulate.items_per_cluster=20",
    "simulate.n_users=4000",
    "simulate.n_events=240000",
    "simulate.days=42",
    "ray.num_cpus=2",
    "retrieval.window_days=14",
    "finetune.window_days=28",
    "finetune.max_examples=512",
    "finetune.batch_size=16",
    "finetune.epochs=1",
    "finetune.num_workers=1",
    "finetune.cpus_per_worker=1",
    "infer.pool_size=1",
    "infer.cpus_per_actor=1",
    "pipeline.rag_every_days=2",
    "pipeline.finetune_every_days=30",
]
REPLAY_DAYS = 2
REPLAY_STRATEGIES = "frequency,base"  # hybrid re-fine-tunes: ~8 more minutes on 2 cores


def free_port(preferred: int = 8000) -> int:
    """`preferred` when nothing listens there, else any free port on 127.0.0.1."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port on 127.0.0.1")


def busiest_pairs(cfg: Config, n: int) -> list[tuple[int, int]]:
    """The n (c1, c2) pairs seen most on the last day of the log: the demo's example queries."""
    last = list_days(cfg.root)[-1]
    t = read_transitions(cfg.root, last, last + dt.timedelta(days=1))
    t = (
        t.group_by(["c1", "c2"])
        .aggregate([("count", "sum")])
        .sort_by([("count_sum", "descending")])
    )
    return list(zip(t["c1"].to_pylist()[:n], t["c2"].to_pylist()[:n], strict=True))


class Steps:
    """Prints each step with its elapsed time, so the demo shows where it is."""

    def __init__(self, total: int):
        self.total, self.i, self.t0 = total, 0, time.perf_counter()

    def __call__(self, what: str) -> None:
        self.i += 1
        print(
            f"\n=== [{self.i}/{self.total}] {what}  (t+{time.perf_counter() - self.t0:.0f}s)",
            flush=True,
        )


def query(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return json.loads(r.read())


def serve_and_query(cfg: Config, pairs: list[tuple[int, int]], step: Steps) -> list[dict]:
    """Start Serve on 127.0.0.1, query /v1/next for each pair, print answers, shut Serve down."""
    from ray import serve

    from serve.app import AppArgs, build_app

    port = free_port()
    step(f"Ray Serve on http://127.0.0.1:{port}  (GET /v1/next, /v1/healthz, /docs)")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    root = os.path.abspath(cfg.root) if "://" not in cfg.root else cfg.root
    serve.run(build_app(AppArgs(root=root)), name="next-interest", route_prefix="/")
    answers = []
    try:
        for _ in range(60):  # the replica loads CURRENT on start; wait until it serves
            health = query(port, "/v1/healthz")
            if health.get("version"):
                break
            time.sleep(1)
        print(f"healthz: {health}")
        for c1, c2 in pairs:
            a = query(port, f"/v1/next?history={c1},{c2}&k=5")
            answers.append(a)
            names = ", ".join(f"{c['name']} ({c['score']:.2f})" for c in a["clusters"])
            h = a["history"]
            print(f"GET /v1/next?history={c1},{c2}&k=5 -> [{a['source']}] {h}: {names}")
    finally:
        serve.shutdown()
    return answers


def run(cfg: Config) -> dict:
    from jobs import aggregate, pipeline, simulate
    from jobs.pipeline import with_overrides
    from jobs.replay import replay

    step = Steps(6)
    t0 = time.perf_counter()
    step(
        f"simulate {cfg.simulate.days} days of log, {cfg.simulate.n_clusters} clusters "
        f"-> {cfg.inputs.interactions}"
    )
    print(simulate.run(cfg))

    step("aggregate the log into daily transition counts (Ray Data)")
    agg = aggregate.run(cfg)
    print({k: v for k, v in agg.items() if not isinstance(v, dict | list)})
    days = list_days(cfg.root)
    if not days:
        raise InputError("aggregate produced no transition counts")
    as_of = days[-1] + dt.timedelta(days=1)

    step(
        f"pipeline tick --as-of {as_of}: fine-tune (LoRA, Ray Train) + RAG snapshot + "
        "hybrid inference + guards + publish"
    )
    tick = pipeline.tick(cfg, as_of)
    print(json.dumps({k: tick[k] for k in ("day", "status", "plan", "current") if k in tick}))
    if tick["status"] != "done":
        print(f"tick failed: {tick.get('error')}")
    version = read_current(cfg.root)
    if version is None:
        # A guard stopped the LLM table (the guards working as designed): publish the
        # frequency table, the system's fallback, so that there is something to serve.
        from jobs import infer

        print("the hybrid table was not published; publishing the frequency fallback instead")
        fallback = infer.run(with_overrides(cfg, as_of=as_of, infer__strategy="frequency"))
        print({k: fallback.get(k) for k in ("published", "version", "n_pairs")})
        version = read_current(cfg.root)
    if version is None:
        raise InputError("nothing was published; see the tick's error above")
    lookup = Lookup.load(cfg.root, version)
    print(f"published {version}: {len(lookup.pairs)} pairs")

    answers = serve_and_query(cfg, busiest_pairs(cfg, 5), step)

    start = days[-1] - dt.timedelta(days=REPLAY_DAYS - 1)
    step(f"replay {start}..{days[-1]} for {REPLAY_STRATEGIES} (each table sees only earlier days)")
    rep_cfg = with_overrides(cfg, report=cfg.report + "-replay")
    rep = replay(rep_cfg, start, days[-1] + dt.timedelta(days=1), REPLAY_STRATEGIES.split(","))
    step("summary")
    print(f"{'strategy':<12}{'hit@1':>8}{'hit@5':>8}{'hit@10':>8}{'compute s':>11}")
    for s, m in rep["metrics"].items():
        print(
            f"{s:<12}{m['hit_rate@1']:>8.3f}{m['hit_rate@5']:>8.3f}{m['hit_rate@10']:>8.3f}"
            f"{m['compute_seconds']:>11.1f}"
        )
    print(f"report: {rep['report']}  (metrics.json, timeline.json, *.png)")
    return {
        "published": version,
        "served_answers": len(answers),
        "replay_report": rep["report"],
        "replay": rep["metrics"],
        "report": report_dir(cfg.root, cfg.report),
        "seconds": round(time.perf_counter() - t0, 1),
        "state": join(cfg.root, "pipeline", "state.json"),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = job_parser(
        "python -m jobs.demo",
        "The whole loop on embedded demo defaults: simulate, aggregate, fine-tune, RAG + "
        "inference, guards, publish, serve and query, and a short replay report. The demo's "
        "small sizes (DEMO_OVERRIDES: 32 clusters, 42 days, 512 fine-tune examples) apply "
        "without --config; --set adds to them. With --config FILE the file's values (else the "
        "full defaults: 120 clusters, 1M events, hours on 2 cores) apply instead.",
        reads="nothing but the config (the log is simulated)",
        writes="<root>/ (default ./data): inputs, stats, adapters, tables, reports/demo*",
    )
    args = parser.parse_args(argv)
    setup_logging()
    if args.config is None:
        args.overrides = DEMO_OVERRIDES + list(args.overrides)
    cfg = config_from_args(args)
    try:
        summary = run(cfg)
    except (ConfigError, InputError) as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps(summary, default=str, sort_keys=True))
    return summary


if __name__ == "__main__":
    main()
