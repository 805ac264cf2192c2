"""Ticks over a simulated month on the tiny model: the cadence, failures, idempotency."""

from __future__ import annotations

import datetime as dt

import pytest

from common.config import load_config
from common.storage import read_current, read_json, table_dir
from jobs.pipeline import load_state, tick

from .conftest import START

pytestmark = pytest.mark.ray


def day(i: int) -> dt.date:
    return START + dt.timedelta(days=10 + i)  # day 10 of the month: 10 days of history


def manifest(root: str) -> dict:
    return read_json(table_dir(root, read_current(root)) + "/manifest.json")


def test_tick_sequence_follows_the_policy_survives_a_failure_and_is_idempotent(sim_copy):
    root, overrides = sim_copy
    cfg = load_config(
        None, overrides + ["pipeline.rag_every_days=2", "pipeline.finetune_every_days=6"]
    )
    broken = load_config(
        None,
        overrides
        + [
            "pipeline.rag_every_days=2",
            "pipeline.finetune_every_days=6",
            f"model.name_or_path={root}/no-such-model",
        ],
    )

    # Day 0: everything is due: aggregate, the first fine-tune, a refresh that publishes.
    r0 = tick(cfg, day(0))
    assert r0["status"] == "done" and set(r0["plan"]) == {"aggregate", "finetune", "refresh"}
    v0 = read_current(root)
    assert v0 is not None
    assert manifest(root)["as_of"] == day(0).isoformat()

    # Day 1: nothing but aggregate is due.
    r1 = tick(cfg, day(1))
    assert set(r1["plan"]) == {"aggregate"} and read_current(root) == v0

    # Day 2: the refresh is due, but the model cannot be loaded: the step fails, CURRENT stays.
    r2 = tick(broken, day(2))
    assert r2["status"] == "failed" and r2["failed_step"] == "refresh"
    assert read_current(root) == v0
    state = load_state(root)
    assert state["ticks"][day(2).isoformat()]["steps"]["refresh"]["status"] == "failed"
    assert state["last_refresh"]["day"] == day(0).isoformat()

    # Day 3: the next tick retries the refresh (overdue since day 2) and publishes.
    r3 = tick(cfg, day(3))
    assert r3["status"] == "done" and "refresh" in r3["plan"]
    v3 = read_current(root)
    assert v3 != v0 and manifest(root)["as_of"] == day(3).isoformat()

    # A repeated tick does nothing: same state, same CURRENT.
    before = load_state(root)
    again = tick(cfg, day(3))
    assert again["noop"] is True
    assert load_state(root) == before and read_current(root) == v3

    # Days 4..6: refresh on day 5 (3 + 2); the fine-tune is due on day 6 (0 + 6), with a refresh.
    plans = {i: set(tick(cfg, day(i))["plan"]) for i in (4, 5, 6)}
    assert plans == {
        4: {"aggregate"},
        5: {"aggregate", "refresh"},
        6: {"aggregate", "finetune", "refresh"},
    }
    state = load_state(root)
    assert state["last_finetune"]["day"] == day(6).isoformat()
    assert state["last_refresh"]["day"] == day(6).isoformat()
    done = {d: sorted(t["steps"]) for d, t in state["ticks"].items()}
    assert [d for d, steps in done.items() if "finetune" in steps] == [
        day(0).isoformat(),
        day(6).isoformat(),
    ]
    # The failed day-2 tick stays failed in the record; day 3 did the work.
    assert state["ticks"][day(2).isoformat()]["status"] == "failed"
    m = manifest(root)
    assert m["as_of"] == day(6).isoformat()


def test_failed_step_is_retried_by_the_same_day(sim_copy):
    root, overrides = sim_copy
    cfg = load_config(None, overrides)
    broken = load_config(None, overrides + [f"model.name_or_path={root}/missing"])
    r = tick(broken, day(0))
    assert r["status"] == "failed" and r["failed_step"] == "finetune"
    assert read_current(root) is None
    r = tick(cfg, day(0))
    assert r["status"] == "done"
    steps = load_state(root)["ticks"][day(0).isoformat()]["steps"]
    assert {k: v["status"] for k, v in steps.items()} == {
        "aggregate": "done",
        "finetune": "done",
        "refresh": "done",
    }
    assert read_current(root) is not None
