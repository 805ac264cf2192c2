"""The cadence's pure logic: what is due on which day, drift between windows, replay schedules."""

from __future__ import annotations

import datetime as dt
import json
import os

import pyarrow as pa
import pytest

from common import schemas
from common.config import load_config
from jobs.pipeline import (
    adapter_is_weak,
    finetune_due,
    last_adapter_weak,
    refresh_due,
    window_jaccard,
    with_overrides,
)
from jobs.replay import in_effect, plan_builds, serving_days, table_key

D0 = dt.date(2026, 3, 1)


def day(i: int) -> dt.date:
    return D0 + dt.timedelta(days=i)


def test_refresh_every_two_days_from_the_last_one():
    assert refresh_due(None, day(0), 2)
    assert not refresh_due(day(0), day(1), 2)
    assert refresh_due(day(0), day(2), 2)
    # A missed tick (or a failed refresh) makes it due on the next day it is asked.
    assert refresh_due(day(0), day(5), 2)


def test_fixed_policy_finetunes_every_30_days():
    pcfg = load_config().pipeline
    assert finetune_due(pcfg, None, day(0)) == (True, "first")
    assert finetune_due(pcfg, day(0), day(29))[0] is False
    assert finetune_due(pcfg, day(0), day(30))[0] is True
    # Drift is ignored under the fixed policy.
    assert finetune_due(pcfg, day(0), day(10), jaccard=0.0)[0] is False


def test_adaptive_policy_follows_drift_with_gaps():
    pcfg = load_config(
        None,
        [
            "pipeline.policy=adaptive",
            "pipeline.drift_threshold=0.4",
            "pipeline.min_finetune_gap_days=5",
            "pipeline.max_finetune_gap_days=40",
        ],
    ).pipeline
    assert finetune_due(pcfg, day(0), day(10), jaccard=0.6) == (False, "stable")
    assert finetune_due(pcfg, day(0), day(10), jaccard=0.3) == (True, "drift")
    assert finetune_due(pcfg, day(0), day(3), jaccard=0.0) == (False, "gap")
    assert finetune_due(pcfg, day(0), day(40), jaccard=0.9) == (True, "max_gap")
    assert finetune_due(pcfg, day(0), day(35), jaccard=None) == (False, "unmeasured")


def test_adaptive_skips_the_monthly_finetune_only_after_an_adapter_that_earned_it():
    pcfg = load_config(None, ["pipeline.policy=adaptive"]).pipeline  # every 30 days, gap >= 14
    assert finetune_due(pcfg, day(0), day(30), jaccard=0.6, weak=True) == (True, "weak_adapter")
    assert finetune_due(pcfg, day(0), day(29), jaccard=0.6, weak=True) == (False, "stable")
    assert finetune_due(pcfg, day(0), day(30), jaccard=0.6, weak=False) == (False, "stable")
    assert finetune_due(pcfg, day(0), day(30), jaccard=0.6, weak=None) == (False, "stable")
    # A sparse log (drift unmeasured) still re-fine-tunes a weak adapter on the calendar day.
    assert finetune_due(pcfg, day(0), day(31), jaccard=None, weak=True) == (True, "weak_adapter")
    assert finetune_due(pcfg, day(0), day(31), jaccard=None, weak=False) == (False, "unmeasured")
    # Drift still fires early, whatever the adapter's measure.
    assert finetune_due(pcfg, day(0), day(20), jaccard=0.1, weak=False) == (True, "drift")
    # The fixed policy ignores it.
    fixed = load_config().pipeline
    assert finetune_due(fixed, day(0), day(20), jaccard=0.1, weak=True) == (False, "calendar")


def heldout(adapter: float, frequency: float, n: int) -> dict:
    return {"heldout": {"acc@1": adapter, "n_events": n}, "frequency": {"acc@1": frequency}}


def test_adapter_is_weak_needs_a_gap_beyond_its_standard_errors():
    # The 44-day replay's 2026-02-02 adapter (docs/results.md): 0.074 vs 0.135 on 4,989 events,
    # standard error sqrt((0.074*0.926 + 0.135*0.865) / 4989) = 0.0061: ten errors under.
    assert adapter_is_weak(heldout(0.074, 0.135, 4989), z=3.0) is True
    # The same rates on 17 events (MovieLens' slices): se 0.097, within noise.
    assert adapter_is_weak(heldout(0.059, 0.118, 17), z=3.0) is False
    # Boundary: gap 0.03 on n=1000 -> se sqrt((0.1*0.9 + 0.13*0.87) / 1000) = 0.01425, 2.1 se.
    assert adapter_is_weak(heldout(0.10, 0.13, 1000), z=2.0) is True
    assert adapter_is_weak(heldout(0.10, 0.13, 1000), z=2.2) is False
    # At or above the counts: never weak.
    assert adapter_is_weak(heldout(0.27, 0.265, 6297), z=0.0) is False
    # Not measured: no verdict.
    assert adapter_is_weak({}, z=3.0) is None
    assert adapter_is_weak({"heldout": {"acc@1": 0.1, "n_events": 0}}, z=3.0) is None


def test_adapter_is_weak_judges_the_blend_it_serves_when_scored():
    # The 2026-02-02 adapter alone is ten errors under the counts; mixed with them (what a
    # hybrid table with infer.llm_weight < 1 serves) at 0.130 it is 0.7 errors under: not weak.
    weak_alone = heldout(0.074, 0.135, 4989)
    mixed = {
        **weak_alone["heldout"],
        "blend": {"llm_weight": 0.3, "acc@1": 0.130, "n_events": 4989},
    }
    assert adapter_is_weak({**weak_alone, "heldout": mixed}, z=3.0) is False
    assert adapter_is_weak({**weak_alone, "heldout": mixed}, z=3.0, llm_weight=0.3) is False
    # Served at another weight (1: the adapter alone), the 0.3 line says nothing of it.
    assert adapter_is_weak({**weak_alone, "heldout": mixed}, z=3.0, llm_weight=1.0) is True
    assert adapter_is_weak({**weak_alone, "heldout": mixed}, z=3.0, llm_weight=0.5) is True
    # And the other way round: a blend far under the counts is weak whatever the adapter alone.
    mixed = {"acc@1": 0.135, "n_events": 4989, "blend": {"acc@1": 0.074, "n_events": 4989}}
    assert adapter_is_weak({**weak_alone, "heldout": mixed}, z=3.0) is True


def test_last_adapter_weak_reads_meta_json_at_todays_weight(tmp_path, caplog):
    weak_alone = heldout(0.074, 0.135, 4989)
    blend = {"llm_weight": 0.3, "acc@1": 0.130, "n_events": 4989}
    metrics = {**weak_alone, "heldout": {**weak_alone["heldout"], "blend": blend}}
    (tmp_path / "meta.json").write_text(json.dumps({"metrics": metrics}))
    pcfg = load_config(overrides=["pipeline.policy=adaptive"]).pipeline
    assert last_adapter_weak(pcfg, str(tmp_path), 0.3) is False
    assert not caplog.records
    assert last_adapter_weak(pcfg, str(tmp_path), 1.0) is True  # served alone: no warning
    assert not caplog.records
    assert last_adapter_weak(pcfg, str(tmp_path), 0.5) is True
    assert "infer.llm_weight=0.3, not today's 0.5" in caplog.text
    assert last_adapter_weak(pcfg, str(tmp_path / "missing"), 0.3) is None


def counts(rows):
    return pa.Table.from_pylist(
        [dict(day=d, c1=a, c2=b, c3=c, count=n) for d, a, b, c, n in rows],
        schema=schemas.TRANSITIONS,
    )


def test_window_jaccard_worked_example():
    # Pair (0, 1): window A top-2 {2, 3}; window B top-2 {3, 4} -> Jaccard 1/3.
    # Pair (1, 0): {2, 3} in both -> 1. Pair (5, 6) is under min_support in B: not counted.
    rows = [
        (day(0), 0, 1, 2, 10),
        (day(0), 0, 1, 3, 8),
        (day(1), 0, 1, 4, 1),
        (day(5), 0, 1, 3, 9),
        (day(6), 0, 1, 4, 7),
        (day(6), 0, 1, 2, 1),
        (day(0), 1, 0, 2, 5),
        (day(1), 1, 0, 3, 5),
        (day(5), 1, 0, 2, 6),
        (day(5), 1, 0, 3, 4),
        (day(0), 5, 6, 2, 50),
        (day(5), 5, 6, 2, 1),
    ]
    t = counts(rows)
    got = window_jaccard(t, (day(0), day(5)), (day(5), day(10)), min_support=5, top=2)
    assert got == pytest.approx((1 / 3 + 1) / 2)
    # Day 10 and later are outside both windows: adding events there changes nothing.
    t2 = counts(rows + [(day(10), 0, 1, 9, 1000)])
    assert window_jaccard(t2, (day(0), day(5)), (day(5), day(10)), 5, top=2) == got
    assert window_jaccard(t, (day(20), day(25)), (day(25), day(30)), 5) is None


def test_plan_builds_per_strategy():
    start, end = day(0), day(62)
    assert plan_builds("frequency", start, end, 2, 30)[0] == {day(i) for i in range(0, 62, 2)}
    assert plan_builds("base", start, end, 2, 30) == ({start}, set())
    assert plan_builds("ft_once", start, end, 2, 30) == ({start}, {start})
    assert plan_builds("ft_monthly", start, end, 2, 30) == ({day(0), day(30), day(60)},) * 2
    builds, fts = plan_builds("hybrid", start, end, 4, 30)
    assert fts == {day(0), day(30), day(60)}
    assert builds == {day(i) for i in range(0, 62, 4)} | fts
    with pytest.raises(ValueError, match="unknown strategy"):
        plan_builds("nope", start, end, 2, 30)


def test_table_in_effect_is_the_last_built_on_or_before_the_day():
    builds = [(day(0), "a"), (day(2), "b"), (day(4), "c")]
    assert [in_effect(builds, d) for d in serving_days(day(0), day(6))] == [
        "a",
        "a",
        "b",
        "b",
        "c",
        "c",
    ]
    assert in_effect(builds, day(-1)) is None


def test_with_overrides_copies_and_validates():
    cfg = load_config()
    new = with_overrides(cfg, as_of=day(3), infer__strategy="frequency", root="/tmp/x")
    assert (new.as_of, new.infer.strategy, new.root) == (day(3), "frequency", "/tmp/x")
    assert cfg.as_of is None and cfg.infer.strategy == "hybrid"
    with pytest.raises(ValueError):
        with_overrides(cfg, infer__strategy="bogus")


def test_table_cache_key_leaves_out_later_settings_only_at_their_old_behaviour(monkeypatch):
    """infer.llm_weight came after work roots were made: at 1 (the LLM alone, as before) it is
    left out of the replay's table key, so those roots' tables are reused; any other weight
    makes a new table, for the strategies it changes (rag, hybrid)."""
    from jobs import replay

    cfg = load_config(None, ["as_of=2026-03-01", "infer.llm_weight=1"])
    old = table_key(cfg)
    assert table_key(with_overrides(cfg, infer__llm_weight=0.3)) != old
    monkeypatch.setattr(replay, "LATER_INFER_DEFAULTS", {})
    assert table_key(cfg) != old  # with the setting in the key, old roots would not match
    # A strategy whose table the weight does not touch keeps one key whatever the weight.
    ft = with_overrides(cfg, infer__strategy="ft")
    assert table_key(with_overrides(ft, infer__llm_weight=0.3)) == table_key(ft)


def test_replay_cache_keys_follow_the_source_counts_and_catalog(tmp_path):
    """A shared work root must not serve builds made from counts or names since rewritten:
    the source key of day d changes with any count file of a day < d or the catalog, and not
    with later days (so an incremental aggregate keeps every earlier build cached)."""
    from common.tables_io import write_parquet
    from jobs.replay import Replayer

    root = str(tmp_path / "src")
    cfg = load_config(None, [f"root={root}"])

    def counts(d: dt.date, n: int) -> None:
        t = pa.Table.from_pylist([dict(day=d, c1=0, c2=1, c3=2, count=n)],
                                 schema=schemas.TRANSITIONS)
        write_parquet(t, f"{root}/stats/transitions/day={d.isoformat()}/part-0.parquet")

    def clusters(name: str) -> None:
        write_parquet(pa.table({"cluster_id": pa.array([0, 1, 2], pa.int32()),
                                "name": [name, "b", "c"], "description": ["x", "y", "z"]},
                               schema=schemas.CLUSTERS), cfg.inputs.clusters)

    for i in range(3):
        counts(day(i), 5)
    clusters("a")
    work = str(tmp_path / "work")
    keys = {d: Replayer(cfg, work).source_key(day(d)) for d in (1, 2, 3)}
    assert len(set(keys.values())) == 3  # each day reads one more day of counts

    counts(day(3), 7)  # a later day appended: days <= 3 read nothing new
    assert Replayer(cfg, work).source_key(day(3)) == keys[3]
    counts(day(1), 1_000_000)  # day 1 re-aggregated: only builds for days after it change
    again = Replayer(cfg, work)
    assert again.source_key(day(1)) == keys[1]
    assert again.source_key(day(2)) != keys[2]
    clusters("renamed")  # the prompts name the clusters: every build changes
    renamed = Replayer(cfg, work).source_key(day(1))
    assert renamed != keys[1]
    write_parquet(pa.table({"item_id": ["i1"], "cluster_id": pa.array([0], pa.int32())}),
                  cfg.inputs.items)  # the tables' top items come from it
    assert Replayer(cfg, work).source_key(day(1)) != renamed
    # The adapter cache key also covers the retrieval settings the examples' RAG lines use.
    assert Replayer(with_overrides(cfg, retrieval__window_days=7), work).key != again.key


def test_replay_cache_keys_follow_the_ranking_version(monkeypatch, tmp_path):
    """Cached adapters and tables built under an older ranking of the same counts (ties by id
    before 2026-11-25) are not reused: both keys change with retrieval.RANKING_VERSION."""
    from common import retrieval
    from jobs.replay import Replayer

    cfg = load_config(None, [f"root={tmp_path / 'src'}", "as_of=2026-03-01"])
    work = str(tmp_path / "work")
    adapter_key, tables_key = Replayer(cfg, work).key, table_key(cfg)
    monkeypatch.setattr(retrieval, "RANKING_VERSION", retrieval.RANKING_VERSION - 1)
    assert Replayer(cfg, work).key != adapter_key
    assert table_key(cfg) != tables_key


def test_replay_refuses_inputs_that_would_lose_data_or_score_nothing(tmp_path):
    """Checked before anything is built (no Ray): a work root that is the source root (its
    stats/ would be emptied), a start on or before the first counted day, a default start past
    the end on a short log, a range past the data."""
    from common.cli import InputError
    from common.tables_io import write_parquet
    from common.transitions import list_days
    from jobs.replay import replay

    root = str(tmp_path / "src")
    for i in range(10):
        t = pa.Table.from_pylist([dict(day=day(i), c1=0, c2=1, c3=2, count=3)],
                                 schema=schemas.TRANSITIONS)
        write_parquet(t, f"{root}/stats/transitions/day={day(i).isoformat()}/part-0.parquet")
    cfg = load_config(None, [f"root={root}"])

    for work in (root, root + "/", "file://" + root):
        with pytest.raises(InputError, match="work_root"):
            replay(with_overrides(cfg, pipeline__work_root=work), day(5), day(7), ["frequency"])
    assert len(list_days(root)) == 10  # nothing removed
    with pytest.raises(InputError, match=f"must be after {day(0)}"):
        replay(cfg, day(0), day(3), ["frequency"])
    # 10 days of counts: the default start waits 30 days for a fine-tune's data.
    with pytest.raises(InputError, match="finetune.window_days=30.*pass --start"):
        replay(cfg, None, None, ["frequency", "hybrid"])
    with pytest.raises(InputError, match=f"no events in \\[{day(12)}, {day(14)}\\)"):
        replay(cfg, day(12), day(14), ["frequency"])
    # Cut-offs past the answers each table holds would count only those.
    short = with_overrides(cfg, infer__top_k=5)
    with pytest.raises(InputError, match="pipeline.ks goes up to 10, but the tables hold "
                       "infer.top_k=5 answers per pair"):
        replay(short, day(5), day(7), ["frequency"])
    assert not os.path.exists(f"{root}/reports")  # refused before anything was written
