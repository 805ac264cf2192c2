"""Write a synthetic interaction log in the input contract (docs/contracts.md "Inputs").

Users move between interest clusters of the built-in taxonomy (common/taxonomy.py). The next
cluster after (prev, cur) is drawn from a softmax over
  stable semantics   S[cur, next] + 0.5 * S[prev, next] (same topic, linked topics, fixed noise)
+ trends             drift * (popularity shift of `next` + shift of the pair cur->next), redrawn
                     every 30 days and interpolated day by day, so months differ and days blend
+ popularity         a fixed per-cluster base,
mixed with personal habits: with a per-user probability the user goes to one of their favourite
clusters instead, and with `repeat_prob` stays in the current cluster (a repeat the aggregation
collapses). Returning to the previous cluster gives A-B-A, which is not a novel transition.

Vectorised over users: one day is simulated step by step (step k = every user's k-th event of
that day), drawing from per-day conditional CDFs of shape (C+1, C, C); each day is written as its
own Parquet partition `day=YYYY-MM-DD/part-0.parquet` as soon as it is done.

`inputs.interactions` may name a real log (s3://logs/...), and this job replaces its target, so
it only ever deletes or overwrites what this project's jobs wrote: a folder holding MARKER, or a
file with its sidecar (common/input_targets.py; jobs.ingest uses the same rules). Items and
clusters are guarded the same way: a production catalog must not be overwritten either.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

import numpy as np
import pyarrow as pa

from common import schemas, taxonomy
from common.cli import job_parser, keys_help, run_main
from common.config import Config, SimulateConfig
from common.input_targets import (
    REPLACE_NOTE,
    claim_inputs,
    mark_written,
    source_of,
    write_input_file,
)
from common.storage import join
from common.tables_io import write_parquet

log = logging.getLogger(__name__)
MONTH_DAYS = 30
TREND_SCALE = 1.0  # logits of one standard deviation of trend at drift = 1
BLEND_DAYS = 6


def pick_clusters(n: int) -> list[taxonomy.Cluster]:
    """n clusters taken round-robin over topics so every topic is represented, in taxonomy order."""
    clusters = taxonomy.all_clusters()
    by_topic: dict[str, list[int]] = {}
    for i, c in enumerate(clusters):
        by_topic.setdefault(c.topic, []).append(i)
    order = [ids[k] for k in range(max(map(len, by_topic.values())))
             for ids in by_topic.values() if k < len(ids)]
    if n > len(order):
        raise ValueError(f"simulate.n_clusters={n} exceeds the taxonomy's {len(order)} clusters")
    return [clusters[i] for i in sorted(order[:n])]


def semantic_logits(clusters: list[taxonomy.Cluster], rng: np.random.Generator) -> np.ndarray:
    """S[a, b]: the stable relation of a to b; the diagonal is -inf (a move leaves the cluster)."""
    topics = np.array([c.topic for c in clusters])
    linked = {frozenset(p) for p in taxonomy.CROSS_TOPIC}
    same = topics[:, None] == topics[None, :]
    cross = np.array([[frozenset((a, b)) in linked for b in topics] for a in topics])
    s = 2.0 * same + 0.8 * cross + rng.normal(0, 0.8, (len(clusters), len(clusters)))
    np.fill_diagonal(s, -np.inf)
    return s


class World:
    """The fixed parts of a simulation: semantics, trends, users and their habits."""

    def __init__(self, sc: SimulateConfig):
        rng = np.random.default_rng(sc.seed)
        self.sc = sc
        self.clusters = pick_clusters(sc.n_clusters)
        c = len(self.clusters)
        self.sem = semantic_logits(self.clusters, rng)
        self.pop = rng.normal(0, 0.5, c)
        months = sc.days // MONTH_DAYS + 2
        # Rising and fading clusters, and pairs whose favourite successor changes month to month.
        self.trend_pop = rng.normal(0, 1, (months, c))
        self.trend_pair = rng.normal(0, 1, (months, c, c))
        u = sc.n_users
        self.rate = rng.lognormal(0, 0.8, u)
        self.rate *= sc.n_events / sc.days / self.rate.sum()
        self.habit = rng.beta(2, 5, u) * sc.habit_strength
        home = rng.integers(0, c, u)
        # Favourites: the home cluster and two semantic neighbours of it.
        near = np.argsort(-np.where(np.isfinite(self.sem), self.sem, -9), axis=1)[:, :6]
        self.favourites = np.column_stack(
            [home, near[home, rng.integers(0, 6, u)], near[home, rng.integers(0, 6, u)]]
        )
        zipf = 1.0 / np.arange(1, sc.items_per_cluster + 1) ** 1.1
        self.item_cdf = np.cumsum(zipf / zipf.sum())
        self.prev = np.full(u, c, dtype=np.int64)  # c means "no previous cluster yet"
        self.cur = home.astype(np.int64)

    def day_cdf(self, day: int) -> np.ndarray:
        """Cumulative next-cluster probabilities for day `day`, shape (C+1, C, C): [prev, cur]."""
        m, frac = divmod(day, MONTH_DAYS)
        # Each month keeps its own trends; the last BLEND_DAYS days blend into the next month's.
        w = max(0.0, (frac - (MONTH_DAYS - BLEND_DAYS)) / BLEND_DAYS)
        tp = (1 - w) * self.trend_pop[m] + w * self.trend_pop[m + 1]
        tq = (1 - w) * self.trend_pair[m] + w * self.trend_pair[m + 1]
        base = self.sem + self.pop[None, :] + self.sc.drift * TREND_SCALE * (tp[None, :] + tq)
        prev_part = np.vstack([np.where(np.isfinite(self.sem), 0.5 * self.sem, 0.0),
                               np.zeros((1, len(self.pop)))])
        logits = base[None, :, :] + prev_part[:, None, :]
        logits -= logits.max(axis=2, keepdims=True)
        p = np.exp(logits)
        cdf = np.cumsum(p, axis=2)
        return cdf / cdf[:, :, -1:]

    def simulate_day(self, day: int, rng: np.random.Generator, observe=None) -> pa.Table:
        """Every event of one day: user_id, item_id, ts (UTC), in time order.

        `observe(day, users, prev, cur, nxt)`, when given, sees every step's draws before the
        state moves on (bench/sim_ceiling.py scores the true distributions with it); it draws
        nothing, so the log is the same with or without it."""
        sc, c = self.sc, len(self.clusters)
        counts = rng.poisson(self.rate)
        users = np.repeat(np.arange(sc.n_users), counts)
        secs = rng.integers(0, 86_400, len(users))
        order = np.lexsort((secs, users))
        users, secs = users[order], secs[order]
        starts = np.cumsum(counts) - counts
        step = np.arange(len(users)) - np.repeat(starts, counts)
        cdf = self.day_cdf(day).reshape(-1, c)
        cluster = np.empty(len(users), dtype=np.int64)
        for k in range(int(step.max(initial=-1)) + 1):
            idx = np.flatnonzero(step == k)
            u = users[idx]
            prev, cur = self.prev[u], self.cur[u]
            rows = cdf[prev * c + cur]
            nxt = (rows < rng.random(len(u))[:, None]).sum(axis=1)
            nxt = np.minimum(nxt, c - 1)
            r = rng.random(len(u))
            fav = self.favourites[u, rng.integers(0, self.favourites.shape[1], len(u))]
            nxt = np.where(r < self.habit[u], fav, nxt)
            nxt = np.where(r > 1 - sc.repeat_prob, cur, nxt)
            if observe is not None:
                observe(day, u, prev, cur, nxt)
            moved = nxt != cur
            self.prev[u] = np.where(moved, cur, prev)
            self.cur[u] = nxt
            cluster[idx] = nxt
        item = np.searchsorted(self.item_cdf, rng.random(len(users)))
        item = np.minimum(item, sc.items_per_cluster - 1)
        day0 = (sc.start_date - dt.date(1970, 1, 1)).days + day
        ts_ms = (day0 * 86_400 + secs) * 1000 + rng.integers(0, 1000, len(users))
        t = pa.table({
            "user_id": users.astype(np.int64) + 1,
            "item_id": cluster * sc.items_per_cluster + item + 1,
            "ts": pa.array(ts_ms, pa.timestamp("ms", tz="UTC")),
        })
        return t.sort_by([("ts", "ascending")])

    def catalog(self) -> tuple[pa.Table, pa.Table]:
        """(items, clusters) tables in the input contract."""
        c, ipc = len(self.clusters), self.sc.items_per_cluster
        clusters = pa.table({
            "cluster_id": pa.array(range(c), pa.int32()),
            "name": [x.name for x in self.clusters],
            "description": [x.description for x in self.clusters],
        }, schema=schemas.CLUSTERS)
        items = pa.table({
            "item_id": pa.array(np.arange(c * ipc) + 1, pa.int64()),
            "cluster_id": pa.array(np.repeat(np.arange(c), ipc), pa.int32()),
        }, schema=schemas.ITEMS)
        return items, clusters


def run(cfg: Config) -> dict:
    started = time.time()
    sc = cfg.simulate
    world = World(sc)
    items, clusters = world.catalog()
    job = "jobs.simulate"
    claim_inputs(cfg, job)
    mark_written(
        cfg.inputs.interactions, job, folder=True, source=source_of(sc.model_dump(mode="json"))
    )
    write_input_file(items, cfg.inputs.items, job)
    write_input_file(clusters, cfg.inputs.clusters, job)
    rng = np.random.default_rng([sc.seed, 1])
    n = 0
    for day in range(sc.days):
        table = world.simulate_day(day, rng)
        date = sc.start_date + dt.timedelta(days=day)
        write_parquet(table, join(cfg.inputs.interactions, f"day={date}", "part-0.parquet"))
        n += table.num_rows
    return {"events": n, "days": sc.days, "clusters": len(world.clusters), "users": sc.n_users,
            "items": items.num_rows, "interactions": cfg.inputs.interactions,
            "seconds": round(time.time() - started, 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = job_parser(
        "python -m jobs.simulate",
        "Write a synthetic interaction log (drifting interests over a built-in taxonomy).",
        reads="nothing but the config (root, inputs.*, the simulate section)",
        writes="inputs.interactions (a folder of day=YYYY-MM-DD/part-0.parquet), inputs.items, "
        "inputs.clusters. " + REPLACE_NOTE,
    )
    keys = keys_help("root", "inputs", "simulate")  # report and as_of mean nothing here
    parser.epilog += "\n\nKeys (--set KEY=VALUE), defaults:\n" + keys
    return run_main(parser, run, argv)


if __name__ == "__main__":
    main()
