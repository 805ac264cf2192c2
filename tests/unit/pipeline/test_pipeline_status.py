"""jobs.pipeline status: what an operator's monitor sees, from a root written by hand."""

from __future__ import annotations

import datetime as dt
import json
import os
import time

import pyarrow as pa
import pytest

from common import publish, schemas
from common.catalog import Catalog
from common.config import load_config
from common.storage import join, pipeline_state, swap_current, tick_lock, write_json, write_text
from common.tables_io import write_parquet
from common.transitions import day_dir
from jobs import pipeline
from jobs.pipeline import STALE_LOCK_S, status

D = dt.date(2026, 3, 10)
CAT = Catalog((0, 1, 2), ("a", "b", "c"), ("",) * 3)


def write_root(root: str, served_as_of: dt.date, counted_through: dt.date, ticks: dict) -> None:
    t = pa.Table.from_pylist([dict(day=counted_through, c1=0, c2=1, c3=2, count=1)],
                             schema=schemas.TRANSITIONS)
    write_parquet(t, join(day_dir(root, counted_through), "part-0.parquet"))
    table = pa.Table.from_pylist(
        [dict(c1=0, c2=1, rank=1, c3=2, score=1.0, source="frequency")], schema=schemas.TABLE
    )
    back = pa.Table.from_pylist([dict(c2=-1, rank=1, c3=2, score=1.0)], schema=publish.BACKOFF)
    publish.write_version(root, "v1", table, back, CAT,
                          {"as_of": str(served_as_of), "strategy": "hybrid", "adapter": "a/x"})
    swap_current(root, "v1")
    write_json(pipeline_state(root), {
        "last_finetune": {"day": "2026-03-01", "adapter": "a/x"},
        "last_refresh": {"day": str(served_as_of), "version": "v1"},
        "ticks": ticks,
    })


def cfg(root, *sets):
    return load_config(None, [f"root={root}", *sets])


def test_a_fresh_root_is_healthy(root):
    write_root(root, D, D - dt.timedelta(days=1), {str(D): {"status": "done", "steps": {}}})
    seen = status(cfg(root), D)
    assert seen["healthy"] is True and seen["problems"] == []
    assert seen["served"] == {"version": "v1", "as_of": str(D), "strategy": "hybrid",
                              "adapter": "a/x", "adapter_as_of": None, "age_days": 0}
    assert seen["counted_through"] == str(D - dt.timedelta(days=1))
    assert seen["last_tick"] == {"day": str(D), "status": "done", "failed": {}}


def test_each_problem_is_named(root):
    ticks = {
        "2026-03-09": {"status": "done", "steps": {}},
        "2026-03-14": {"status": "failed", "steps": {
            "aggregate": {"status": "done"},
            "finetune": {"status": "failed", "error": "OSError: s3 timed out"},
        }},
    }
    write_root(root, D, D - dt.timedelta(days=1), ticks)
    lock = tick_lock(root)
    write_text(lock, json.dumps({"host": "gone", "pid": 1}))
    stamp = time.time() - STALE_LOCK_S - 120
    os.utime(lock, (stamp, stamp))
    today = dt.date(2026, 4, 2)
    seen = status(cfg(root), today)
    assert seen["problems"] == [
        "stale: the served table is as of 2026-03-10, 23 days before 2026-04-02; a refresh is "
        "due every 2 days (pipeline.rag_every_days)",
        "the counts end at 2026-03-09, 23 days before 2026-04-01, the last day a tick on "
        "2026-04-02 counts: no newer log day was counted (a partition not landing, or no tick "
        "since)",
        "the last tick (2026-03-14) failed: finetune: OSError: s3 timed out",
        "fine-tune overdue: the last was on 2026-03-01, 32 days before 2026-04-02 (due every 30)",
        "pipeline/tick.lock was not rewritten for 17 min: its tick is gone (the next tick takes "
        "it over)",
    ]
    assert seen["running"]["holder"] == {"host": "gone", "pid": 1}
    # A strategy without an adapter is never overdue for a fine-tune.
    freq = status(cfg(root, "infer.strategy=frequency"), today)["problems"]
    assert not any("fine-tune" in p for p in freq) and len(freq) == 4


def test_an_empty_root_and_the_check_flag(root, capsys):
    seen = status(cfg(root), D)
    assert seen["problems"] == [
        "no table served: tables/CURRENT is missing (run a tick)",
        "no transition counts yet (run a tick)",
        "no fine-tune yet; infer.strategy=hybrid needs one",
    ]
    argv = ["status", "--today", str(D), "--set", f"root={root}"]
    assert pipeline.main(argv)["healthy"] is False  # without --check: exit 0, JSON printed
    assert json.loads(capsys.readouterr().out)["healthy"] is False
    with pytest.raises(SystemExit) as e:
        pipeline.main([*argv, "--check"])
    assert e.value.code == 1
