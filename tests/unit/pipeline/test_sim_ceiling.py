"""bench/sim_ceiling.py: the simulator's own distributions as the best possible table."""

import datetime as dt

import numpy as np
import pyarrow as pa

from bench import sim_ceiling
from common.config import load_config
from common.sequences import sequence_transitions
from jobs.simulate import World

SIM = [
    "simulate.n_clusters=16",
    "simulate.items_per_cluster=2",
    "simulate.n_users=300",
    "simulate.n_events=36000",
    "simulate.days=12",
]


def test_observer_sees_the_log_without_changing_it():
    """Same log with and without the hook; the transitions it tracks are the aggregation's."""
    cfg = load_config(None, SIM)
    plain, watched = World(cfg.simulate), World(cfg.simulate)
    tr = sim_ceiling.Transitions(watched)
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    days = [plain.simulate_day(d, rng_a) for d in range(3)]
    assert all(watched.simulate_day(d, rng_b, observe=tr).equals(days[d]) for d in range(3))

    log = pa.concat_tables(days)
    ipc = cfg.simulate.items_per_cluster
    events = pa.table(
        {
            "user_id": log["user_id"],
            "ts": log["ts"].cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()),
            "ord": pa.array(np.arange(log.num_rows)),
            "cluster_id": pa.array((log["item_id"].to_numpy() - 1) // ipc, pa.int32()),
        }
    )
    counts, _ = sequence_transitions(events)
    c = tr.c
    start = (cfg.simulate.start_date - dt.date(1970, 1, 1)).days
    expected = {d: np.zeros((c * c, c), np.int64) for d in range(3)}
    for day, a, b, c3, n in zip(*(counts[k].to_pylist() for k in counts.column_names), strict=True):
        expected[day - start][a * c + b, c3] += n
    assert sum(int(x.sum()) for x in expected.values()) > 1000
    for d in range(3):
        np.testing.assert_array_equal(tr.realized[d], expected[d])


def test_true_distributions_rank_better_than_the_counts(tmp_path):
    cfg = load_config(None, [f"root={tmp_path}", "retrieval.window_days=7", *SIM])
    start = cfg.simulate.start_date
    out = sim_ceiling.run(
        cfg, start + dt.timedelta(8), start + dt.timedelta(12), every=2, top_pairs=5
    )
    rates = out["hit_rates"]
    assert out["n_events"] > 1000 and out["aggregate_check"] is None
    # 14 candidates per pair: chance hit@5 is 5/14 = 0.36.
    assert rates["truth_today"]["hit@5"] > 0.5
    assert rates["truth_today"]["hit@5"] > rates["frequency"]["hit@5"]
    assert rates["truth_yesterday"]["hit@5"] > rates["frequency"]["hit@5"]
    for name in (*sim_ceiling.ORACLES, *sim_ceiling.TABLES):
        assert 0 < rates[name]["hit@1"] <= rates[name]["hit@5"] <= rates[name]["hit@10"] <= 1
    assert (tmp_path / "reports" / "sim-ceiling" / "metrics.json").exists()
    # The 5 most frequent of the 16 * 15 pairs hold far more than 5/240 of the events.
    top = out["top_pairs"]
    assert out["n_events"] * 5 / 240 < top["n_events"] < out["n_events"]
    assert top["hit_rates"] != rates  # scored on those pairs' events only
    for name in (*sim_ceiling.ORACLES, *sim_ceiling.TABLES):
        t = top["hit_rates"][name]
        assert 0 < t["hit@1"] <= t["hit@5"] <= t["hit@10"] <= 1


def test_top_pairs_covering_every_pair_scores_as_all_events(tmp_path):
    cfg = load_config(None, [f"root={tmp_path}", "retrieval.window_days=7", *SIM])
    start = cfg.simulate.start_date
    out = sim_ceiling.run(
        cfg, start + dt.timedelta(8), start + dt.timedelta(10), every=2, top_pairs=16 * 16
    )
    assert out["top_pairs"]["n_events"] == out["n_events"]
    assert out["top_pairs"]["hit_rates"] == out["hit_rates"]
