"""Ticks over a simulated month on the tiny model: the cadence, failures, idempotency."""

from __future__ import annotations

import datetime as dt

import pytest

from common.config import load_config
from common.storage import read_current, read_json, table_dir
from jobs.pipeline import load_state, status, tick

pytestmark = pytest.mark.ray

START = dt.date(2026, 1, 1)  # simulate.start_date in conftest.tiny_overrides


def day(i: int) -> dt.date:
    return START + dt.timedelta(days=10 + i)  # day 10 of the month: 10 days of history


def manifest(root: str) -> dict:
    return read_json(table_dir(root, read_current(root)) + "/manifest.json")


def test_tick_sequence_follows_the_policy_survives_a_failure_and_is_idempotent(sim_copy):
    """Real jobs (aggregate, finetune, retrieve + hybrid infer + guards + publish) on the tiny
    model: refresh every 3 days, fine-tune every 5 (the fixed policy, scaled down)."""
    root, overrides = sim_copy
    policy = ["pipeline.rag_every_days=3", "pipeline.finetune_every_days=5"]
    cfg = load_config(None, overrides + policy)
    broken = load_config(None, overrides + policy + [f"model.name_or_path={root}/no-such-model"])

    # Day 0: everything is due: aggregate, the first fine-tune, a refresh that publishes.
    r0 = tick(cfg, day(0))
    assert r0["status"] == "done" and set(r0["plan"]) == {"aggregate", "finetune", "refresh"}
    v0 = read_current(root)
    assert v0 is not None
    m0 = manifest(root)
    assert (m0["as_of"], m0["strategy"]) == (day(0).isoformat(), "hybrid")
    adapter0 = load_state(root)["last_finetune"]["adapter"]
    assert adapter0

    # Days 1, 2: nothing but aggregate is due.
    assert [set(tick(cfg, day(i))["plan"]) for i in (1, 2)] == [{"aggregate"}] * 2
    assert read_current(root) == v0

    # Day 3: the refresh is due, but the model cannot be loaded: the step fails, CURRENT stays.
    r3 = tick(broken, day(3))
    assert r3["status"] == "failed" and r3["failed_step"] == "refresh"
    assert read_current(root) == v0
    state = load_state(root)
    assert state["ticks"][day(3).isoformat()]["steps"]["refresh"]["status"] == "failed"
    assert state["last_refresh"]["day"] == day(0).isoformat()
    # What a monitor sees: the failed step, with the old table still served.
    seen = status(cfg, day(3))
    assert not seen["healthy"] and seen["served"]["version"] == v0
    assert seen["problems"] == [
        f"the last tick ({day(3)}) failed: refresh: "
        + state["ticks"][day(3).isoformat()]["steps"]["refresh"]["error"]
    ]

    # Day 4: the next tick retries the refresh (overdue since day 3) and publishes.
    r4 = tick(cfg, day(4))
    assert r4["status"] == "done" and set(r4["plan"]) == {"aggregate", "refresh"}
    v4 = read_current(root)
    assert v4 != v0 and manifest(root)["as_of"] == day(4).isoformat()
    seen = status(cfg, day(4))
    assert seen["healthy"] and seen["problems"] == []
    assert seen["served"]["age_days"] == 0 and seen["counted_through"] >= str(day(3))
    assert seen["served"]["adapter"] == adapter0 and seen["running"] is None

    # A repeated tick does nothing: same state, same CURRENT.
    before = load_state(root)
    again = tick(cfg, day(4))
    assert again["noop"] is True
    assert load_state(root) == before and read_current(root) == v4

    # Day 5: the fine-tune is due (0 + 5), with a refresh on the new adapter.
    r5 = tick(cfg, day(5))
    assert set(r5["plan"]) == {"aggregate", "finetune", "refresh"}
    state = load_state(root)
    assert state["last_finetune"]["day"] == day(5).isoformat()
    assert state["last_finetune"]["adapter"] != adapter0
    assert state["last_refresh"]["day"] == day(5).isoformat()
    done = {d: sorted(t["steps"]) for d, t in state["ticks"].items()}
    assert [d for d, steps in done.items() if "finetune" in steps] == [
        day(0).isoformat(),
        day(5).isoformat(),
    ]
    assert state["ticks"][day(3).isoformat()]["status"] == "failed"
    assert manifest(root)["as_of"] == day(5).isoformat()


def test_a_frequency_pipeline_needs_no_model(sim_copy):
    """infer.strategy=frequency serves no adapter: the real jobs tick without ever loading the
    model (here a path that does not exist), and the calendar's refresh publishes."""
    root, overrides = sim_copy
    cfg = load_config(
        None, overrides + ["infer.strategy=frequency", f"model.name_or_path={root}/missing"]
    )
    r = tick(cfg, day(0))
    assert r["status"] == "done" and r["plan"] == {"aggregate": "new days", "refresh": "calendar"}
    assert manifest(root)["strategy"] == "frequency" and manifest(root)["as_of"] == str(day(0))
    state = load_state(root)
    assert state["last_finetune"] is None and state["last_refresh"]["day"] == str(day(0))
    # No adapter is needed, so none is missed; three days on, the table is stale.
    assert status(cfg, day(0))["healthy"]
    assert status(cfg, day(3))["problems"][0].startswith(
        f"stale: the served table is as of {day(0)}, 3 days before {day(3)}"
    )
