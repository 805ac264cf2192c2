"""Drift measurement on hand-made counts; the taxonomy; the simulator's determinism and shape."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from common import taxonomy
from common.config import load_config
from common.drift import drift_series
from common.input_targets import MARKER
from common.tables_io import read_table
from jobs import simulate

D0 = dt.date(2026, 1, 1)


def counts_table(rows):
    return pa.table({
        "day": pa.array([r[0] for r in rows], pa.date32()),
        "c1": pa.array([r[1] for r in rows], pa.int32()),
        "c2": pa.array([r[2] for r in rows], pa.int32()),
        "c3": pa.array([r[3] for r in rows], pa.int32()),
        "count": pa.array([r[4] for r in rows], pa.int64()),
    })


def test_drift_jaccard_by_hand():
    # Window 1 (days 0-9): pair (1,2) top-2 = {3, 4}; window 2 (days 10-19): {4, 5} -> 1/3.
    # Pair (1,3) is supported in window 1 only and does not count. Day 25 starts an unfinished
    # third window, which is ignored.
    rows = [(D0, 1, 2, 3, 9), (D0, 1, 2, 4, 8), (D0, 1, 2, 5, 1), (D0, 1, 3, 4, 30),
            (D0 + dt.timedelta(days=12), 1, 2, 5, 7), (D0 + dt.timedelta(days=13), 1, 2, 4, 6),
            (D0 + dt.timedelta(days=13), 1, 2, 3, 5), (D0 + dt.timedelta(days=25), 1, 2, 9, 50)]
    out = drift_series(counts_table(rows), window_days=10, min_support=10, top=2)
    assert [w["pairs"] for w in out["windows"]] == [1]
    assert out["mean_jaccard"] == pytest.approx(1 / 3)
    assert out["windows"][0]["next_start"] == D0 + dt.timedelta(days=10)


def test_drift_ties_break_by_cluster_id():
    rows = [(D0, 1, 2, c, 5) for c in (7, 3, 5)] + [
        (D0 + dt.timedelta(days=10), 1, 2, c, 5) for c in (5, 3, 8)] + [
        (D0 + dt.timedelta(days=19), 8, 9, 1, 1)]  # the second window is full up to day 19
    out = drift_series(counts_table(rows), window_days=10, min_support=1, top=2)
    assert out["mean_jaccard"] == pytest.approx(1.0)  # {3, 5} both times


def test_drift_with_sparse_cluster_ids_equals_drift_with_dense_ones():
    """Any int32 cluster id is valid input: ids 5_000_000 apart must not overflow the packing,
    and the same counts under renamed ids (order kept) give the same drift."""
    dense = [(D0 + dt.timedelta(days=d), a, b, c, n) for d, (a, b, c, n) in
             [(0, (0, 1, 2, 9)), (1, (0, 1, 3, 8)), (2, (0, 1, 4, 2)),
              (31, (0, 1, 4, 9)), (32, (0, 1, 2, 8)), (59, (2, 3, 4, 1))]]
    rename = {0: 7, 1: 5_000_000, 2: 5_000_001, 3: 2_000_000_000, 4: 2_100_000_000}
    sparse = [(d, rename[a], rename[b], rename[c], n) for d, a, b, c, n in dense]
    want = drift_series(counts_table(dense), window_days=30, min_support=1, top=2)
    got = drift_series(counts_table(sparse), window_days=30, min_support=1, top=2)
    assert want["mean_jaccard"] == pytest.approx(1 / 3)  # {2, 3} then {4, 2}
    assert got == want


def test_taxonomy_has_named_clusters_across_topics():
    clusters = taxonomy.all_clusters()
    assert len(clusters) >= 150 and len({c.name for c in clusters}) == len(clusters)
    assert len(taxonomy.topics()) >= 12 and all(c.description for c in clusters)
    names = {c.name for c in clusters}
    assert {"sourdough baking", "trail running", "retro game speedruns"} <= names
    linked = {t for pair in taxonomy.CROSS_TOPIC for t in pair}
    assert linked == set(taxonomy.topics())


def test_simulate_is_deterministic_and_in_contract(tmp_path):
    def sim(root):
        cfg = load_config(None, [f"root={root}", "simulate.n_events=6000", "simulate.n_users=200",
                                 "simulate.days=3", "simulate.n_clusters=20",
                                 "simulate.items_per_cluster=5"])
        summary = simulate.run(cfg)
        return cfg, summary

    cfg, summary = sim(tmp_path / "a")
    sim(tmp_path / "b")
    a = read_table(cfg.inputs.interactions)
    b = read_table(str(tmp_path / "b" / "inputs" / "interactions"))
    assert a.equals(b) and a.num_rows == summary["events"] > 4000
    assert sorted(p.name for p in (tmp_path / "a" / "inputs" / "interactions").iterdir()) == [
        MARKER, "day=2026-01-01", "day=2026-01-02", "day=2026-01-03"]
    assert a.schema.field("ts").type == pa.timestamp("ms", tz="UTC")
    items, clusters = read_table(cfg.inputs.items), read_table(cfg.inputs.clusters)
    assert items.num_rows == 100 and clusters.num_rows == 20
    assert set(pc.unique(a["item_id"]).to_pylist()) <= set(items["item_id"].to_pylist())
    # Every topic is represented even with few clusters.
    names = set(clusters["name"].to_pylist())
    topics = {c.topic for c in taxonomy.all_clusters() if c.name in names}
    assert len(topics) == len(taxonomy.topics())


def test_simulated_users_repeat_and_move():
    cfg = load_config(None, ["simulate.n_events=20000", "simulate.n_users=100", "simulate.days=2"])
    world = simulate.World(cfg.simulate)
    import numpy as np

    table = world.simulate_day(0, np.random.default_rng(0))
    df = table.to_pandas().sort_values(["user_id", "ts"], kind="stable")
    df["cluster"] = (df["item_id"] - 1) // cfg.simulate.items_per_cluster
    same = df["user_id"].eq(df["user_id"].shift()) & df["cluster"].eq(df["cluster"].shift())
    moves = df["user_id"].eq(df["user_id"].shift()) & ~same
    assert 0.1 < same.sum() / len(df) < 0.5  # repeats are common but not the rule
    assert moves.sum() > 1000
