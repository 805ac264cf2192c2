"""Replay: no table serving day d sees day d or later; every strategy measured; adapters shared."""

from __future__ import annotations

import datetime as dt
import os

import pyarrow as pa
import pytest

from common import schemas
from common.config import load_config
from common.evaluation import hit_rates
from common.lookup import Lookup
from common.storage import join, read_json
from common.tables_io import write_parquet
from common.transitions import day_dir, read_transitions
from jobs.replay import Replayer, replay

pytestmark = pytest.mark.ray

START = dt.date(2026, 1, 1)  # simulate.start_date in conftest.tiny_overrides

D = START + dt.timedelta(days=20)
DAY = dt.timedelta(days=1)


def served_on(root: str, report: str, strategy: str, day: dt.date) -> Lookup:
    timeline = read_json(join(root, "reports", report, "timeline.json"))
    version = timeline["hit_rates"][strategy][day.isoformat()]["version"]
    return Lookup.load(join(root, "reports", report, "work"), version)


def plant(root: str, day: dt.date, c1: int, c2: int, c3: int, n: int) -> None:
    """Add n transitions (c1, c2) -> c3 on `day`, as an extra file of that day's counts."""
    t = pa.Table.from_pylist(
        [dict(day=day, c1=c1, c2=c2, c3=c3, count=n)], schema=schemas.TRANSITIONS
    )
    write_parquet(t, join(day_dir(root, day), "planted.parquet"))


def test_replay_has_no_leakage(sim_copy):
    root, overrides = sim_copy
    cfg = load_config(None, overrides + ["pipeline.rag_every_days=2"])
    # The pair most seen before D, and a successor it never leads to in the window.
    window = read_transitions(root, D - dt.timedelta(days=4), D)
    by_pair = window.group_by(["c1", "c2"]).aggregate([("count", "sum")])
    by_pair = by_pair.sort_by([("count_sum", "descending")])
    c1, c2 = by_pair["c1"][0].as_py(), by_pair["c2"][0].as_py()
    clean = replay(
        cfg.model_copy(update={"report": "clean"}), D, D + dt.timedelta(days=2), ["frequency"]
    )
    before = served_on(root, "clean", "frequency", D).answer(c1, c2, 10)[1]
    target = next(c for c in range(8) if c not in (c1, c2) and c != before[0][0])

    # Planted on day D itself (and D + 1): the table serving D must not change.
    plant(root, D, c1, c2, target, 100_000)
    plant(root, D + dt.timedelta(days=1), c1, c2, target, 100_000)
    future = replay(
        cfg.model_copy(update={"report": "future"}), D, D + dt.timedelta(days=2), ["frequency"]
    )
    assert served_on(root, "future", "frequency", D).answer(c1, c2, 10)[1] == before
    # ...but the events of day D are scored: the planted misses sink the hit rate of day D.
    assert (
        future["metrics"]["frequency"]["hit_rate@1"] < clean["metrics"]["frequency"]["hit_rate@1"]
    )

    # Control: the same events one day earlier do change the answer for D.
    plant(root, D - dt.timedelta(days=1), c1, c2, target, 100_000)
    replay(cfg.model_copy(update={"report": "past"}), D, D + dt.timedelta(days=2), ["frequency"])
    assert served_on(root, "past", "frequency", D).answer(c1, c2, 10)[1][0][0] == target
    # The first replay's work root cached its table for D before the plant: replaying into that
    # root again rebuilds the table from the changed counts instead of serving the cached one.
    replay(cfg.model_copy(update={"report": "clean"}), D, D + DAY, ["frequency"])
    assert served_on(root, "clean", "frequency", D).answer(c1, c2, 10)[1][0][0] == target


def test_replay_strategies_share_adapters_and_write_the_report(sim_copy):
    """Three served days, a refresh every 2 days and a fine-tune every 2 (monthly, scaled down);
    adaptive forced to fine-tune daily (max gap 1) so its schedule differs from hybrid's. The
    schedules themselves are unit-tested (tests/unit/pipeline); here the real jobs build them."""
    root, overrides = sim_copy
    cfg = load_config(
        None,
        overrides
        + [
            "report=cmp",
            "guards.valid_sample=0",
            "pipeline.rag_every_days=2",
            "pipeline.finetune_every_days=2",
            "pipeline.drift_threshold=0.0",
            "pipeline.min_finetune_gap_days=1",
            "pipeline.max_finetune_gap_days=1",
        ],
    )
    start, end = D, D + dt.timedelta(days=3)
    strategies = ["frequency", "ft_once", "hybrid", "adaptive"]
    out = replay(cfg, start, end, strategies)
    m = read_json(join(root, "reports", "cmp", "metrics.json"))
    assert set(m) == set(strategies)
    n_events = int(read_transitions(root, start, end)["count"].to_numpy().sum())
    for s, row in m.items():
        assert row["n_events"] == n_events, s
        for key in ("hit_rate@1", "hit_rate@5", "hit_rate@10", "valid_rate", "coverage"):
            assert 0.0 <= row[key] <= 1.0, (s, key)
        assert row["hit_rate@1"] <= row["hit_rate@5"] <= row["hit_rate@10"]
        assert row["compute_seconds"] > 0
    # The hit rates again from what was served: each day's table scored on that day's events.
    for s in strategies:
        hits = dict.fromkeys((1, 5, 10), 0.0)
        for i in range(3):
            day = start + dt.timedelta(days=i)
            r = hit_rates(served_on(root, "cmp", s, day), read_transitions(root, day, day + DAY))
            for k in hits:
                hits[k] += r[f"hit_rate@{k}"] * r["n_events"]
        for k, h in hits.items():
            assert m[s][f"hit_rate@{k}"] == pytest.approx(h / n_events), (s, k)
    days = [(start + dt.timedelta(days=i)).isoformat() for i in range(3)]
    assert m["ft_once"]["finetune_days"] == days[:1]
    assert m["hybrid"]["finetune_days"] == [days[0], days[2]]
    assert m["adaptive"]["finetune_days"] == days
    assert [m[s]["n_tables"] for s in strategies] == [2, 1, 2, 3]
    # One adapter per fine-tune day, trained once and shared by the strategies.
    index = read_json(join(root, "reports", "cmp", "work", "replay_adapters.json"))
    assert sorted(k.split("/")[0] for k in index) == days
    # Other runtime settings key the same adapters: a replay with them trains none again.
    runtime = ["finetune.threads=2", "finetune.checkpoint_every_steps=7", "finetune.max_failures=0"]
    again = Replayer(load_config(None, overrides + runtime), join(root, "reports", "cmp", "work"))
    assert {k.split("/")[1] for k in index} == {again.key}
    # The tables in effect on day 1: hybrid's from day 0 (adapter of day 0), adaptive's own.
    timeline = read_json(join(root, "reports", "cmp", "timeline.json"))["hit_rates"]
    assert timeline["hybrid"][days[1]]["version"] == timeline["hybrid"][days[0]]["version"]
    assert timeline["adaptive"][days[1]]["version"] != timeline["hybrid"][days[1]]["version"]
    for name in ("hit_rate_over_time.png", "drift_over_time.png", "compute_per_strategy.png"):
        assert os.path.getsize(join(root, "reports", "cmp", name)) > 1000
    assert out["start"] == start.isoformat()
