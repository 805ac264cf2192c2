"""Ticks with the steps injected (no Ray, no model): the cadence over a month, the state file,
failures that leave CURRENT alone and are retried, repeated ticks, and the adaptive policy
reacting to a planted change of successors. The same ticks on the real jobs run in
tests/integration/pipeline/test_pipeline_tick.py."""

from __future__ import annotations

import datetime as dt
import os

import pyarrow as pa
import pytest

from common import schemas
from common.cli import InputError
from common.config import load_config
from common.storage import read_current, swap_current, write_json
from common.tables_io import write_parquet
from common.transitions import day_dir
from jobs.pipeline import load_state, tick

D0 = dt.date(2026, 3, 1)


def day(i: int) -> dt.date:
    return D0 + dt.timedelta(days=i)


class FakeSteps(dict):
    """aggregate / finetune / refresh that record their calls; refresh publishes a version named
    after the day (as jobs.infer does); `fail` names steps that raise."""

    def __init__(self, metrics: dict | None = None, write_meta: bool = True):
        super().__init__(aggregate=self.aggregate, finetune=self.finetune, refresh=self.refresh)
        self.calls: list[tuple[str, dt.date]] = []
        self.fail: set[str] = set()
        self.metrics = metrics or {}  # what each adapter's meta.json says it measured
        self.write_meta = write_meta

    def _call(self, name, cfg):
        self.calls.append((name, cfg.as_of))
        if name in self.fail:
            raise RuntimeError(f"{name} broke")

    def aggregate(self, cfg):
        self._call("aggregate", cfg)
        return {"days_processed": 1}

    def finetune(self, cfg):
        self._call("finetune", cfg)
        adapter = f"{cfg.root}/adapters/ft-{cfg.as_of}"
        if self.write_meta:
            write_json(f"{adapter}/meta.json", {"as_of": str(cfg.as_of), "metrics": self.metrics})
        return {"adapter": adapter}

    def refresh(self, cfg):
        self._call("refresh", cfg)
        version = f"v-{cfg.as_of}"
        write_json(f"{cfg.root}/tables/{version}/manifest.json", {"as_of": str(cfg.as_of)})
        swap_current(cfg.root, version)
        return {"version": version}

    def days(self, name):
        return [d for n, d in self.calls if n == name]


def test_fixed_cadence_over_a_month(tmp_path):
    cfg = load_config(
        None,
        [f"root={tmp_path}", "pipeline.rag_every_days=3", "pipeline.finetune_every_days=7"],
    )
    steps = FakeSteps()
    for i in range(30):
        assert tick(cfg, day(i), steps)["status"] == "done"
    ft = [0, 7, 14, 21, 28]
    # Every 3 days from the last refresh, and a refresh after every fine-tune.
    refresh = [0, 3, 6, 7, 10, 13, 14, 17, 20, 21, 24, 27, 28]
    assert steps.days("finetune") == [day(i) for i in ft]
    assert steps.days("refresh") == [day(i) for i in refresh]
    assert steps.days("aggregate") == [day(i) for i in range(30)]
    # Within a tick the order is aggregate, finetune, refresh.
    assert [n for n, d in steps.calls if d == day(7)] == ["aggregate", "finetune", "refresh"]
    assert read_current(str(tmp_path)) == "v-" + day(28).isoformat()
    state = load_state(str(tmp_path))
    assert state["last_finetune"] == {
        "day": day(28).isoformat(),
        "adapter": f"{tmp_path}/adapters/ft-{day(28)}",
    }
    assert state["last_refresh"]["version"] == f"v-{day(28)}"


def test_repeated_tick_is_a_noop(tmp_path):
    cfg = load_config(None, [f"root={tmp_path}"])
    steps = FakeSteps()
    first = tick(cfg, day(0), steps)
    state = load_state(str(tmp_path))
    again = tick(cfg, day(0), steps)
    assert first["noop"] is False and again["noop"] is True
    assert len(steps.calls) == 3  # aggregate, finetune, refresh: once
    assert load_state(str(tmp_path)) == state


def test_failed_refresh_keeps_current_and_is_retried(tmp_path):
    root = str(tmp_path)
    cfg = load_config(None, [f"root={root}", "pipeline.rag_every_days=2"])
    steps = FakeSteps()
    tick(cfg, day(0), steps)
    assert read_current(root) == f"v-{day(0)}"
    tick(cfg, day(1), steps)

    steps.fail = {"refresh"}
    r = tick(cfg, day(2), steps)
    assert r["status"] == "failed" and r["failed_step"] == "refresh"
    assert "refresh broke" in r["error"]
    assert read_current(root) == f"v-{day(0)}"
    assert load_state(root)["last_refresh"]["day"] == day(0).isoformat()

    # Retried by the same day's tick: only the failed step runs again.
    steps.fail = set()
    n = len(steps.calls)
    r = tick(cfg, day(2), steps)
    assert r["status"] == "done" and steps.calls[n:] == [("refresh", day(2))]
    assert read_current(root) == f"v-{day(2)}"


def ticked(root: str, rag_every: int, finetune_every: int, days: int):
    """(cfg, steps) after ticks on days 0..days-1 with that cadence."""
    cfg = load_config(
        None,
        [
            f"root={root}",
            f"pipeline.rag_every_days={rag_every}",
            f"pipeline.finetune_every_days={finetune_every}",
        ],
    )
    steps = FakeSteps()
    for i in range(days):
        tick(cfg, day(i), steps)
    return cfg, steps


def test_failed_finetune_is_retried_by_the_next_day_and_the_refresh_still_runs(tmp_path):
    root = str(tmp_path)
    cfg, steps = ticked(root, 2, 4, days=4)
    # Day 4: the fine-tune fails; the refresh the calendar made due runs on the day-0 adapter.
    steps.fail = {"finetune"}
    r = tick(cfg, day(4), steps)
    assert r["status"] == "failed" and r["failed_step"] == "finetune"
    assert steps.calls[-3:] == [("aggregate", day(4)), ("finetune", day(4)), ("refresh", day(4))]
    assert r["current"] == read_current(root) == f"v-{day(4)}"
    state = load_state(root)
    assert state["last_finetune"]["day"] == day(0).isoformat()
    assert state["ticks"][day(4).isoformat()]["steps"]["refresh"]["status"] == "done"
    # Day 5: the fine-tune is overdue and runs, with a refresh on its adapter.
    steps.fail = set()
    r = tick(cfg, day(5), steps)
    assert r["status"] == "done" and set(r["plan"]) == {"aggregate", "finetune", "refresh"}
    assert load_state(root)["last_finetune"]["day"] == day(5).isoformat()
    assert read_current(root) == f"v-{day(5)}"


def test_a_finetune_retried_the_same_day_is_served_by_a_second_refresh(tmp_path):
    root = str(tmp_path)
    cfg, steps = ticked(root, 2, 4, days=4)
    steps.fail = {"finetune"}
    tick(cfg, day(4), steps)  # the refresh ran on the day-0 adapter
    steps.fail = set()
    n = len(steps.calls)
    r = tick(cfg, day(4), steps)
    assert r["status"] == "done" and steps.calls[n:] == [("finetune", day(4)), ("refresh", day(4))]
    record = load_state(root)["ticks"][day(4).isoformat()]["steps"]
    assert record["refresh"]["status"] == record["refresh_before_finetune"]["status"] == "done"


def test_failed_finetune_without_a_calendar_refresh_stops_the_tick(tmp_path):
    root = str(tmp_path)
    cfg, steps = ticked(root, 3, 4, days=4)  # refreshes on days 0 and 3
    steps.fail = {"finetune"}
    r = tick(cfg, day(4), steps)
    assert r["failed_step"] == "finetune" and ("refresh", day(4)) not in steps.calls
    assert read_current(root) == f"v-{day(3)}"
    # The first fine-tune failing: no adapter to serve, so no refresh either.
    first = str(tmp_path / "first")
    steps = FakeSteps()
    steps.fail = {"finetune"}
    r = tick(load_config(None, [f"root={first}"]), day(0), steps)
    assert r["failed_step"] == "finetune" and steps.days("refresh") == []
    assert read_current(first) is None


def test_a_refresh_that_failed_after_a_finetune_is_retried_the_next_day(tmp_path):
    """The calendar alone would wait rag_every_days after the last refresh; the new adapter
    must not wait that long to be served."""
    root = str(tmp_path)
    cfg, steps = ticked(root, 4, 5, days=5)  # fine-tune day 0; refreshes days 0 and 4
    steps.fail = {"refresh"}
    r = tick(cfg, day(5), steps)  # the fine-tune is done, its refresh fails
    assert r["failed_step"] == "refresh" and read_current(root) == f"v-{day(4)}"
    steps.fail = set()
    r = tick(cfg, day(6), steps)
    assert r["plan"]["refresh"] == "adapter not served yet" and "finetune" not in r["plan"]
    assert read_current(root) == f"v-{day(6)}"
    assert set(tick(cfg, day(7), steps)["plan"]) == {"aggregate"}


def test_a_tick_for_an_earlier_day_is_refused(tmp_path):
    root = str(tmp_path)
    cfg = load_config(None, [f"root={root}", "pipeline.rag_every_days=1"])
    steps = FakeSteps()
    steps.fail = {"refresh"}
    tick(cfg, day(0), steps)  # aggregate and fine-tune done, refresh failed
    steps.fail = set()
    tick(cfg, day(1), steps)
    state = load_state(root)
    with pytest.raises(InputError, match=f"a tick for {day(1)} is already recorded"):
        tick(cfg, day(0), steps)
    assert load_state(root) == state and read_current(root) == f"v-{day(1)}"
    # A day already done still answers as a no-op.
    assert tick(cfg, day(1), steps)["noop"] is True


def plant_counts(root: str, days: range, successors: list[int]) -> None:
    """Each day: pairs (0, 1) and (1, 0) lead to `successors`, most frequent first."""
    for i in days:
        rows = [
            dict(day=day(i), c1=a, c2=b, c3=c, count=10 - r)
            for a, b in ((0, 1), (1, 0))
            for r, c in enumerate(successors)
        ]
        write_parquet(
            pa.Table.from_pylist(rows, schema=schemas.TRANSITIONS),
            day_dir(root, day(i)) + "/part-0.parquet",
        )


def drift_overrides(root: str) -> list[str]:
    """A 10-day fine-tune window, drift over the last 7 days, Jaccard under 0.5 fires."""
    return [
        f"root={root}",
        "finetune.window_days=10",
        "pipeline.rag_every_days=2",
        "pipeline.drift_threshold=0.5",
        "pipeline.drift_window_days=7",
        "pipeline.drift_min_support=5",
        "pipeline.min_finetune_gap_days=3",
    ]


def test_adaptive_finetunes_after_the_successors_change(tmp_path):
    root = str(tmp_path)
    # Days 0..29 one set of successors, days 30..59 a disjoint one.
    plant_counts(root, range(0, 30), [2, 3, 4, 5, 6])
    plant_counts(root, range(30, 60), [7, 8, 9, 10, 11])
    overrides = drift_overrides(root)
    adaptive = load_config(None, overrides + ["pipeline.policy=adaptive"])
    steps = FakeSteps()
    for i in range(10, 60):
        tick(adaptive, day(i), steps)
    # First tick: the first fine-tune. Stable until the recent 7 days are mostly the new
    # successors: day 34 (days 30..33 outweigh 27..29). The day-34 adapter's window [24, 34) is
    # still mostly the old ones, so drift is measured again and fine-tunes once more at the
    # earliest day the gap allows (37), whose window [27, 37) is mostly new: then stable.
    assert steps.days("finetune") == [day(10), day(34), day(37)]
    plan = load_state(root)["ticks"][day(34).isoformat()]["plan"]
    assert plan["finetune"] == "drift (jaccard=0.111)"  # top-5 {7, 8, 9, 10, 2} vs {2..6}: 1/9

    # The fixed monthly policy fine-tunes on days 10 and 40, whatever the data did.
    fixed = load_config(None, [*overrides, f"root={tmp_path / 'fixed'}"])
    steps = FakeSteps()
    for i in range(10, 60):
        tick(fixed, day(i), steps)
    assert steps.days("finetune") == [day(10), day(40)]


def test_adaptive_plans_with_the_counts_its_own_aggregate_just_wrote(tmp_path):
    """As in production, each tick's aggregate lands yesterday's counts: the drift that plans
    the fine-tune must see them (planned before the aggregate, day 34 measured 0.429)."""
    root = str(tmp_path)
    plant_counts(root, range(0, 10), [2, 3, 4, 5, 6])

    class LandingSteps(FakeSteps):
        def aggregate(self, cfg):
            i = (cfg.as_of - D0).days - 1
            plant_counts(root, range(i, i + 1), [2, 3, 4, 5, 6] if i < 30 else [7, 8, 9, 10, 11])
            return super().aggregate(cfg)

    cfg = load_config(None, drift_overrides(root) + ["pipeline.policy=adaptive"])
    steps = LandingSteps()
    for i in range(10, 60):
        tick(cfg, day(i), steps)
    assert steps.days("finetune") == [day(10), day(34), day(37)]
    plan = load_state(root)["ticks"][day(34).isoformat()]["plan"]
    assert plan["finetune"] == "drift (jaccard=0.111)"


def test_adaptive_on_a_sparse_log_says_drift_is_unmeasured(tmp_path, caplog):
    """A log too thin for the drift check (no pair reaches drift_min_support in both windows):
    the same disjoint change as above, but no drift fine-tune can fire, and the tick says why
    and what to set instead of passing it off as stable."""
    root = str(tmp_path)
    plant_counts(root, range(0, 30), [2, 3, 4, 5, 6])
    plant_counts(root, range(30, 60), [7, 8, 9, 10, 11])
    cfg = load_config(
        None,
        [
            f"root={root}",
            "finetune.window_days=10",
            "pipeline.policy=adaptive",
            "pipeline.drift_window_days=7",
            "pipeline.drift_min_support=1000",
            "pipeline.min_finetune_gap_days=3",
        ],
    )
    steps = FakeSteps()
    with caplog.at_level("WARNING", logger="jobs.pipeline"):
        for i in range(10, 60):
            tick(cfg, day(i), steps)
    assert steps.days("finetune") == [day(10)]
    hints = [r.getMessage() for r in caplog.records if "drift unmeasured" in r.getMessage()]
    assert len(hints) == 60 - 13  # every tick once the 3-day gap has passed
    assert "pipeline.max_finetune_gap_days" in hints[0] and "drift_min_support=1000" in hints[0]


def test_adaptive_refinetunes_a_weak_adapter_on_the_monthly_day(tmp_path, caplog):
    """Successors that never change (drift never fires): adaptive fine-tunes again on the
    monthly day only while the last adapter's own held-out line says it trails the frequency
    table (the 44-day replay's failure, docs/results.md); an adapter as good as the counts
    keeps its place; one without meta.json leaves drift alone to decide, and the tick says so."""

    def run(name: str, metrics: dict, write_meta: bool = True, *sets: str) -> FakeSteps:
        root = str(tmp_path / name)
        plant_counts(root, range(0, 70), [2, 3, 4, 5, 6])
        cfg = load_config(
            None,
            [f"root={root}", "finetune.window_days=10", "pipeline.policy=adaptive", *sets],
        )
        steps = FakeSteps(metrics, write_meta)
        for i in range(10, 70):
            tick(cfg, day(i), steps)
        return steps

    weak = {"heldout": {"acc@1": 0.074, "n_events": 4989}, "frequency": {"acc@1": 0.135}}
    steps = run("weak", weak)
    assert steps.days("finetune") == [day(10), day(40)]
    plan = load_state(str(tmp_path / "weak"))["ticks"][day(40).isoformat()]["plan"]
    assert plan["finetune"] == "weak_adapter (jaccard=1.000)"

    strong = {"heldout": {"acc@1": 0.14, "n_events": 4989}, "frequency": {"acc@1": 0.135}}
    assert run("strong", strong).days("finetune") == [day(10)]

    # Weak alone, level with the counts as the default hybrid table serves it (blended at
    # infer.llm_weight 0.3): kept. An `ft` table serves the adapter alone: fine-tuned again.
    blend = {"llm_weight": 0.3, "acc@1": 0.13, "n_events": 4989}
    mixed = {**weak, "heldout": {**weak["heldout"], "blend": blend}}
    assert run("mixed", mixed).days("finetune") == [day(10)]
    ft = run("mixed-ft", mixed, True, "infer.strategy=ft").days("finetune")
    assert ft == [day(10), day(40)]

    # No held-out line at all (an adapter trained elsewhere): no verdict, drift decides.
    assert run("unmeasured", {}).days("finetune") == [day(10)]
    with caplog.at_level("WARNING", logger="jobs.pipeline"):
        assert run("no-meta", {}, write_meta=False).days("finetune") == [day(10)]
    assert any(
        "no meta.json for adapter" in r.getMessage() and "no-meta/adapters/ft-" in r.getMessage()
        for r in caplog.records
    )


def dead_pid() -> int:
    """The pid of a process that has exited."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_ticks_of_one_root_run_one_at_a_time(tmp_path):
    import json
    import os
    import socket

    from common.storage import exists, tick_lock, write_text

    cfg = load_config(None, [f"root={tmp_path}"])
    lock = tick_lock(cfg.root)
    steps = FakeSteps()
    # A tick that is still running (this very process) holds the lock: refused, nothing runs.
    running = {"host": socket.gethostname(), "pid": os.getpid(), "as_of": str(day(0))}
    write_text(lock, json.dumps(running))
    with pytest.raises(InputError, match="another tick holds .*tick.lock"):
        tick(cfg, day(1), steps)
    assert steps.calls == [] and load_state(cfg.root)["ticks"] == {}
    # One on another host cannot be checked from here: refused too.
    write_text(lock, json.dumps({**running, "host": "elsewhere"}))
    with pytest.raises(InputError, match="elsewhere"):
        tick(cfg, day(1), steps)
    # A tick killed on this host left its lock: taken over, and the tick runs.
    write_text(lock, json.dumps({**running, "pid": dead_pid()}))
    assert tick(cfg, day(1), steps)["status"] == "done"
    assert not exists(lock)  # released at the end
    steps.fail = {"aggregate"}
    assert tick(cfg, day(2), steps)["status"] == "failed"
    assert not exists(lock)  # and after a failed step


def test_the_tick_lock_is_atomic_on_s3(s3_bucket):
    import json
    import socket

    from common.storage import create_new, read_json, tick_lock

    root = f"{s3_bucket}/root"
    assert create_new(f"{root}/x", "first") and not create_new(f"{root}/x", "second")
    cfg = load_config(None, [f"root={root}"])
    create_new(tick_lock(root), json.dumps({"host": socket.gethostname(), "pid": dead_pid()}))
    steps = FakeSteps()
    assert tick(cfg, day(0), steps)["status"] == "done" and steps.days("refresh") == [day(0)]
    assert read_json(f"{root}/pipeline/state.json")["ticks"][str(day(0))]["status"] == "done"


def test_strategies_without_an_adapter_never_finetune(tmp_path):
    """infer.strategy frequency, base or rag serves no adapter: the tick refreshes on the
    calendar and never pays for a fine-tune."""
    for strategy in ("frequency", "rag"):
        cfg = load_config(None, [f"root={tmp_path / strategy}", f"infer.strategy={strategy}",
                                 "pipeline.rag_every_days=3", "pipeline.finetune_every_days=4"])
        steps = FakeSteps()
        for i in range(10):
            assert tick(cfg, day(i), steps)["status"] == "done"
        assert steps.days("finetune") == []
        assert steps.days("refresh") == [day(i) for i in (0, 3, 6, 9)]


def test_one_tick_takes_over_a_dead_ticks_lock_and_a_cut_short_lock_ages_out(tmp_path):
    """Two ticks that both found the same holder gone: the one that created the takeover
    marker first takes over, the other is told the lock is busy. A pid reused by another
    process does not keep a dead tick's lock; an empty lock (a kill between its creation and
    its write) is taken over once it is a minute old, not before."""
    import json
    import os
    import socket
    import time

    from common.storage import create_new, exists, tick_lock, write_text
    from jobs.pipeline import lock_holder_gone, process_start, take_lock

    cfg = load_config(None, [f"root={tmp_path}"])
    lock = tick_lock(cfg.root)
    dead = {"host": socket.gethostname(), "pid": dead_pid(), "started_at": "2026-03-01T02:30:00"}
    write_text(lock, json.dumps(dead))
    create_new(f"{lock}.taken-{dead['pid']}-20260301T023000", "another tick, mid-takeover")
    with pytest.raises(InputError, match="another tick holds"):
        take_lock(lock, {"who": "B"})
    os.remove(f"{lock}.taken-{dead['pid']}-20260301T023000")  # that tick finished
    take_lock(lock, {"who": "A"})
    assert json.loads(open(lock).read()) == {"who": "A"}
    assert sorted(os.listdir(os.path.dirname(lock))) == ["tick.lock"]  # no marker left

    me = {"host": socket.gethostname(), "pid": os.getpid()}
    assert not lock_holder_gone({**me, "proc_start": process_start(os.getpid())})
    assert lock_holder_gone({**me, "proc_start": "1"})  # this pid, but not that process

    open(lock, "w").close()  # empty, just created
    with pytest.raises(InputError, match="another tick holds"):
        tick(cfg, day(0), FakeSteps())
    old = time.time() - 120
    os.utime(lock, (old, old))
    assert tick(cfg, day(0), FakeSteps())["status"] == "done" and not exists(lock)


def test_a_refresh_that_did_not_publish_says_why(tmp_path, monkeypatch):
    """The tick's error names jobs.infer's reason (here: a later table is served), not a dump
    of guards that all passed."""
    from jobs import infer, retrieve
    from jobs.pipeline import GuardFailed, step_refresh

    reason = "as_of 2026-03-01 is before the served table's (v9, as_of 2026-03-05)"
    monkeypatch.setattr(retrieve, "run", lambda cfg: {})
    monkeypatch.setattr(
        infer, "run", lambda cfg: {"published": False, "reason": reason, "guards": {"passed": 1}}
    )
    with pytest.raises(GuardFailed, match=r"not published: as_of 2026-03-01 is before"):
        step_refresh(load_config(None, [f"root={tmp_path}"]))


def test_a_refresh_for_a_day_before_the_served_table_builds_nothing(tmp_path, monkeypatch):
    """A standalone jobs.infer served a table for 03-05: the tick's refresh for 03-01 fails at
    once with the reason, before a retrieval snapshot or a bulk inference is paid for."""
    from common.storage import swap_current, table_dir, write_json
    from jobs import infer, retrieve
    from jobs.pipeline import GuardFailed, step_refresh

    ran = []
    monkeypatch.setattr(retrieve, "run", lambda cfg: ran.append("retrieve") or {})
    monkeypatch.setattr(infer, "run", lambda cfg: ran.append("infer") or {"published": True})
    root = str(tmp_path)
    write_json(f"{table_dir(root, 'v9')}/manifest.json", {"as_of": "2026-03-05"})
    swap_current(root, "v9")
    cfg = load_config(None, [f"root={root}", "as_of=2026-03-01"])
    with pytest.raises(GuardFailed, match=r"before the served table's \(v9, as_of 2026-03-05\)"):
        step_refresh(cfg)
    assert ran == []
    # On the served day (or after it) the refresh runs as before.
    step_refresh(load_config(None, [f"root={root}", "as_of=2026-03-05"]))
    assert ran == ["retrieve", "infer"]


def test_a_running_tick_keeps_its_lock_fresh_and_a_stale_one_is_taken_over(
    tmp_path, monkeypatch
):
    """A tick on another host cannot be checked from here, but a live tick rewrites its lock
    every HEARTBEAT_S: one nobody rewrote for STALE_LOCK_S (its head node replaced mid-tick)
    is taken over, whatever host it names. Here the clock runs 1000x faster."""
    import json
    import time

    from common.storage import exists, tick_lock, write_text
    from jobs import pipeline
    from jobs.pipeline import lock_age_s

    monkeypatch.setattr(pipeline, "HEARTBEAT_S", 0.06)
    monkeypatch.setattr(pipeline, "STALE_LOCK_S", 0.9)
    cfg = load_config(None, [f"root={tmp_path}"])
    lock = tick_lock(cfg.root)
    elsewhere = {"host": "elsewhere", "pid": 1, "as_of": str(day(0))}
    write_text(lock, json.dumps(elsewhere))
    with pytest.raises(InputError, match="elsewhere.*taken over"):
        tick(cfg, day(1), FakeSteps())
    time.sleep(1.0)  # no heartbeat from "elsewhere": stale
    ages = []

    class SlowSteps(FakeSteps):
        def aggregate(self, cfg):
            for _ in range(4):  # 1.2 s, longer than STALE_LOCK_S: only the heartbeat keeps it
                time.sleep(0.3)
                ages.append(lock_age_s(lock))
            with pytest.raises(InputError, match="another tick holds"):
                pipeline.take_lock(lock, {"host": "other", "pid": 2})  # a second tick now
            return super().aggregate(cfg)

    assert tick(cfg, day(1), SlowSteps())["status"] == "done"
    assert max(ages) < pipeline.STALE_LOCK_S and not exists(lock)


def test_a_tick_past_its_deadline_names_the_step_and_gives_back_the_lock(tmp_path, caplog):
    """A hung step would hold the lock for ever (its heartbeat keeps it fresh): past
    pipeline.max_tick_hours (here 0.5 s) the watchdog logs the step, removes the lock and
    calls on_deadline (os._exit in production; here it records, and the step goes on)."""
    import threading

    from common.storage import exists, tick_lock

    cfg = load_config(None, [f"root={tmp_path}", f"pipeline.max_tick_hours={0.5 / 3600}"])
    lock = tick_lock(cfg.root)
    stopped: list[str] = []
    deadline = threading.Event()
    seen = {}

    def on_deadline(message: str) -> None:
        stopped.append(message)
        deadline.set()

    class HungSteps(FakeSteps):
        def finetune(self, cfg):
            # A hung fine-tune, freed by the watchdog here (it waits up to 5 s for 0.5 s).
            seen["locked"], seen["stopped"] = exists(lock), deadline.wait(5)
            seen["unlocked"] = not exists(lock)
            return super().finetune(cfg)

    with caplog.at_level("ERROR", logger="jobs.pipeline"):
        tick(cfg, day(0), HungSteps(), on_deadline=on_deadline)
    assert seen == {"locked": True, "stopped": True, "unlocked": True}
    assert len(stopped) == 1
    assert "'finetune'" in stopped[0] and "pipeline.max_tick_hours" in stopped[0]
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == stopped
    assert not exists(lock)


def test_the_tick_watchdog_fires_within_a_heartbeat_and_never_without_a_deadline(tmp_path):
    """tick_lock alone: a deadline far shorter than HEARTBEAT_S (0.5 s) fires on time, naming
    the step its caller set; with None (no limit) nothing fires, and the lock is released at
    the end as before."""
    import threading
    import time

    from common.storage import exists, tick_lock
    from jobs.pipeline import tick_lock as hold

    root = str(tmp_path)
    lock = tick_lock(root)
    stopped: list[str] = []
    fired = threading.Event()

    def on_deadline(message: str) -> None:
        stopped.append(message)
        fired.set()

    with hold(root, day(0), 0.5 / 3600, on_deadline) as running:
        running["step"] = "refresh"
        assert exists(lock) and not fired.is_set()
        assert fired.wait(5) and not exists(lock)
    assert len(stopped) == 1 and "'refresh'" in stopped[0]

    with hold(root, day(1), None, on_deadline):
        time.sleep(1.0)  # twice the deadline above
        assert exists(lock)
    assert len(stopped) == 1 and not exists(lock)


def test_the_tick_command_refuses_two_different_days(tmp_path, capsys):
    """`tick --as-of D --set as_of=E` used to build for D without a word about E."""
    from jobs.pipeline import main

    argv = ["tick", "--as-of", "2026-03-01", "--set", f"root={tmp_path}"]
    with pytest.raises(SystemExit, match=r"--as-of 2026-03-01 and as_of=2026-03-02 disagree"):
        main([*argv, "--set", "as_of=2026-03-02"])
    assert not os.path.exists(f"{tmp_path}/pipeline")  # nothing ran
    with pytest.raises(SystemExit) as help_exit:
        main(["tick", "--help"])
    assert help_exit.value.code == 0
    assert "Reads: inputs.*" in capsys.readouterr().out
