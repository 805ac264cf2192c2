"""The cadence scheduler: what is due on a day, run it, remember it (docs/contracts.md "Data flow").

`python -m jobs.pipeline tick --as-of DAY` runs, for day d: aggregate the new days; a LoRA
fine-tune when due (fixed: every `finetune_every_days`; adaptive: when the top-5 successors of
the recent window have drifted from those of the fine-tune's data window, Jaccard under
`drift_threshold`, or every `finetune_every_days` while the table the last adapter serves
measured weaker than the frequency table on the fine-tune's held-out slice); a RAG refresh
(retrieval snapshot + bulk inference + guards + publish) every `rag_every_days` and after every
fine-tune (and on the next tick when that refresh failed). The state lives in
`<root>/pipeline/state.json` and records each completed step, so a second tick for the same day
does nothing, a tick for an earlier day than one recorded is refused, and a failed step (an
exception or a failed guard) leaves `tables/CURRENT` alone and is retried by the next tick. A
tick still running after `max_tick_hours` (a hung step) is stopped: it removes its lock and exits
with status 3, so the next tick can run.

`python -m jobs.pipeline replay --start DAY --end DAY --strategies a,b,...` replays the cadence
over logged history (see jobs/replay.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import math
import os
import re
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from common import publish
from common.cli import InputError, add_config_args, config_from_args, job_parser, setup_logging
from common.config import Config, ConfigError, PipelineConfig
from common.storage import (
    create_new,
    exists,
    newest_write,
    pipeline_state,
    read_current,
    read_json,
    remove,
    write_json,
    write_text,
)
from common.storage import tick_lock as tick_lock_uri
from common.transitions import list_days
from jobs.infer import uses_adapter

log = logging.getLogger(__name__)

DAY = dt.timedelta(days=1)


# ---- pure schedule logic (unit-tested without Ray) -------------------------------------------
def refresh_due(last_refresh: dt.date | None, day: dt.date, every_days: int) -> bool:
    """A RAG refresh is due when none was done yet or `every_days` have passed since the last."""
    return last_refresh is None or (day - last_refresh).days >= every_days


def finetune_due(
    pcfg: PipelineConfig,
    last_finetune: dt.date | None,
    day: dt.date,
    jaccard: float | None = None,
    weak: bool | None = None,
) -> tuple[bool, str]:
    """(due, reason). Fixed: every `finetune_every_days`. Adaptive: when the measured Jaccard of
    the fine-tune's window against the recent one falls under `drift_threshold`, or on the
    calendar day when the last adapter was `weak` (adapter_is_weak); no sooner than
    `min_finetune_gap_days`, and at the latest after `max_finetune_gap_days` when that is set."""
    if last_finetune is None:
        return True, "first"
    gap = (day - last_finetune).days
    if pcfg.policy == "fixed":
        return (gap >= pcfg.finetune_every_days), "calendar"
    if gap < pcfg.min_finetune_gap_days:
        return False, "gap"
    if pcfg.max_finetune_gap_days is not None and gap >= pcfg.max_finetune_gap_days:
        return True, "max_gap"
    if jaccard is not None and jaccard < pcfg.drift_threshold:
        return True, "drift"
    if weak and gap >= pcfg.finetune_every_days:
        return True, "weak_adapter"
    if jaccard is None:
        return False, "unmeasured"
    return False, "stable"


def served_heldout(held: dict, llm_weight: float | None) -> dict:
    """The held-out line of the table served at `llm_weight` (None: any): the blend line when
    the fine-tune scored one at that weight, else the adapter alone."""
    blend = held.get("blend")
    if blend and (llm_weight is None or math.isclose(blend.get("llm_weight", -1), llm_weight)):
        return blend
    return held


def adapter_is_weak(metrics: dict, z: float, llm_weight: float | None = None) -> bool | None:
    """Whether the table a fine-tune serves fell under the frequency table's top-1 on the same
    held-out slice by more than `z` standard errors (the two rates' binomial errors, unpaired:
    on the safe side); None when the metrics lack either. The table served is the adapter's rows
    mixed with the counts when the fine-tune scored that mix ("heldout" -> "blend") at the
    weight served now (`llm_weight`, None: any), else the adapter's own. A few dozen held-out
    events never make an adapter weak; thousands with a gap of a few points do."""
    held, freq = metrics.get("heldout") or {}, metrics.get("frequency") or {}
    served = served_heldout(held, llm_weight)
    n = served.get("n_events")
    a, f = served.get("acc@1"), freq.get("acc@1")
    if not n or a is None or f is None:
        return None
    se = math.sqrt((a * (1 - a) + f * (1 - f)) / n)
    return f - a > z * se


def last_adapter_weak(pcfg: PipelineConfig, adapter: str | None, llm_weight: float) -> bool | None:
    """adapter_is_weak from the adapter's meta.json; None when switched off or not measured.
    `llm_weight` is infer.llm_weight now: a blend line scored at another weight is not what
    is served, so the adapter is judged alone then (on the safe side: a re-fine-tune)."""
    if pcfg.policy != "adaptive" or pcfg.weak_adapter_z is None or not adapter:
        return None
    from common.model import read_adapter_meta

    try:
        metrics = read_adapter_meta(adapter).get("metrics") or {}
    except (FileNotFoundError, ValueError) as e:
        log.warning("adaptive: no meta.json for adapter %s (%s); drift alone decides", adapter, e)
        return None
    held = metrics.get("heldout") or {}
    blend = held.get("blend")
    if blend and llm_weight < 1 and served_heldout(held, llm_weight) is held:
        log.warning(
            "adaptive: adapter %s scored its blend at infer.llm_weight=%s, not today's %s; "
            "judging the adapter alone",
            adapter,
            blend.get("llm_weight"),
            llm_weight,
        )
    return adapter_is_weak(metrics, pcfg.weak_adapter_z, llm_weight)


def warn_drift_unmeasured(pcfg: PipelineConfig, day: dt.date) -> None:
    """Say why the adaptive policy cannot fine-tune on drift (finetune_due's "unmeasured") and
    what to set: a sparse log otherwise looks like a stable one."""
    log.warning(
        "adaptive: drift unmeasured on %s: no pair has pipeline.drift_min_support=%d transitions "
        "in both the fine-tune's window and the last %d days, so no drift fine-tune can fire; "
        "lower pipeline.drift_min_support or set pipeline.max_finetune_gap_days for a sparse log",
        day,
        pcfg.drift_min_support,
        pcfg.drift_window_days,
    )


def top_successors(transitions: pa.Table, start: dt.date, end: dt.date, top: int, min_support: int):
    """{(c1, c2): set of its top `top` successors} over the days [start, end), for pairs seen at
    least `min_support` times there. Ties break by smaller c3 so the sets are deterministic."""
    import pyarrow.compute as pc

    if transitions.num_rows == 0:
        return {}
    mask = pc.and_(
        pc.greater_equal(transitions["day"], pa.scalar(start, pa.date32())),
        pc.less(transitions["day"], pa.scalar(end, pa.date32())),
    )
    t = transitions.filter(mask)
    if t.num_rows == 0:
        return {}
    t = t.group_by(["c1", "c2", "c3"]).aggregate([("count", "sum")])
    df = t.to_pandas()
    support = df.groupby(["c1", "c2"])["count_sum"].transform("sum")
    df = df[support >= min_support]
    df = df.sort_values(["c1", "c2", "count_sum", "c3"], ascending=[True, True, False, True])
    df = df.groupby(["c1", "c2"], sort=False).head(top)
    out: dict[tuple[int, int], set[int]] = {}
    for c1, c2, c3 in zip(df["c1"], df["c2"], df["c3"], strict=True):
        out.setdefault((int(c1), int(c2)), set()).add(int(c3))
    return out


def window_jaccard(
    transitions: pa.Table,
    a: tuple[dt.date, dt.date],
    b: tuple[dt.date, dt.date],
    min_support: int,
    top: int = 5,
) -> float | None:
    """Mean Jaccard of the top-`top` successor sets of the pairs well supported in both windows
    (docs/contracts.md "Evaluation": drift); None when no pair qualifies."""
    return mean_jaccard(
        top_successors(transitions, a[0], a[1], top, min_support),
        top_successors(transitions, b[0], b[1], top, min_support),
    )


def mean_jaccard(sa: dict, sb: dict) -> float | None:
    """Mean Jaccard of two {pair: successor set} maps over the pairs in both; None when none."""
    common = sorted(set(sa) & set(sb))
    if not common:
        return None
    return sum(len(sa[p] & sb[p]) / len(sa[p] | sb[p]) for p in common) / len(common)


def drift_since_finetune(
    cfg: Config, transitions: pa.Table, finetune_day: dt.date, day: dt.date
) -> float | None:
    """Jaccard between the fine-tune's data window and the recent window (only days < day)."""
    ft_window = (finetune_day - dt.timedelta(days=cfg.finetune.window_days), finetune_day)
    recent = (day - dt.timedelta(days=cfg.pipeline.drift_window_days), day)
    return window_jaccard(transitions, ft_window, recent, cfg.pipeline.drift_min_support)


def with_overrides(cfg: Config, **values: Any) -> Config:
    """A deep copy of cfg with dotted keys replaced (`infer__strategy` for infer.strategy)."""
    out = cfg.model_copy(deep=True)
    for key, value in values.items():
        node = out
        parts = key.split("__")
        for part in parts[:-1]:
            node = getattr(node, part)
        setattr(node, parts[-1], value)
    return out


# ---- state --------------------------------------------------------------------------------------
def load_state(root: str) -> dict:
    uri = pipeline_state(root)
    if not exists(uri):
        return {"last_finetune": None, "last_refresh": None, "ticks": {}}
    return read_json(uri)


def save_state(root: str, state: dict) -> None:
    write_json(pipeline_state(root), state)


def process_start(pid: int) -> str | None:
    """The kernel's start time of pid (/proc/<pid>/stat field 22), None where unknown: a pid
    alone could be reused by an unrelated process after the tick died."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def lock_holder_gone(holder: dict) -> bool:
    """True when the lock's holder was a process on this host that no longer runs (a killed
    tick; its pid gone, or reused by a process started at another time); a holder on another
    host cannot be checked from here."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, under another user
        return False
    started = holder.get("proc_start")
    return started is not None and process_start(holder["pid"]) not in (None, started)


UNREADABLE_LOCK_S = 60  # a lock file still empty after this was cut short by a kill
# A running tick rewrites its lock every HEARTBEAT_S; a lock not rewritten for STALE_LOCK_S
# belongs to a tick that is gone, on whatever host (a head node replaced mid-tick): taken over.
HEARTBEAT_S = 60
STALE_LOCK_S = 15 * 60


def lock_age_s(uri: str) -> float:
    """Seconds since the lock file was written (local mtime or S3 LastModified)."""
    written = newest_write(uri)
    if written is None:
        raise FileNotFoundError(uri)
    return (dt.datetime.now(dt.UTC) - written).total_seconds()


def read_lock(uri: str) -> dict | None:
    """The lock's holder; None when there is no lock; {} when it cannot be read (being
    written, or cut short by a kill between its creation and its write)."""
    try:
        return read_json(uri)
    except FileNotFoundError:
        return None
    except ValueError:
        return {}


def take_lock(uri: str, me: dict) -> None:
    """Create the lock as `me`, or take it over from a holder that is gone; InputError while a
    live (or unknown) tick holds it.

    Of several ticks that find the same holder gone, one takes over: each first creates the
    marker `<lock>.taken-<pid>-<start>` atomically, and only its creator removes that holder's
    lock, after checking it is still there; the marker goes once the creator's lock exists."""
    text = json.dumps(me, sort_keys=True)
    for _ in range(3):
        if create_new(uri, text):
            return
        holder = read_lock(uri)
        if holder is None:  # released meanwhile
            continue
        busy = InputError(
            f"another tick holds {uri} ({json.dumps(holder, sort_keys=True)}): ticks of one "
            "root run one at a time; wait for it (a running tick rewrites the lock every "
            f"{HEARTBEAT_S} s, and one not rewritten for {STALE_LOCK_S // 60} min is taken over), "
            "or delete the file if that tick is gone"
        )
        age = lock_age_s(uri)
        cut_short = holder == {} and age > UNREADABLE_LOCK_S
        if not (cut_short or age > STALE_LOCK_S or lock_holder_gone(holder)):
            raise busy
        stamp = re.sub(r"[^0-9A-Za-z]", "", str(holder.get("started_at")))
        marker = f"{uri}.taken-{holder.get('pid')}-{stamp}"
        if not create_new(marker, text):  # another tick is taking it over
            raise busy
        try:
            if read_lock(uri) == holder:
                log.warning("taking over %s from a tick that is gone: %s", uri, holder)
                remove(uri)
            if create_new(uri, text):
                return
        finally:
            remove(marker)
    raise InputError(f"could not take {uri}: other ticks keep taking it")


# A tick stopped at pipeline.max_tick_hours ends with this status (1: a failed step or an
# error, 2: a usage error).
EXIT_PAST_DEADLINE = 3
RELEASE_TIMEOUT_S = 60  # the longest a stopped tick waits to remove its lock (storage may hang)


def deadline_message(day: dt.date, max_hours: float, step: str) -> str:
    """What a tick stopped at its deadline logs: the step that was running and what to raise."""
    return (
        f"tick for {day} ran past pipeline.max_tick_hours={max_hours:g} while step {step!r} was "
        f"running: stopping it (exit status {EXIT_PAST_DEADLINE}) and removing its "
        "pipeline/tick.lock so that the next tick can run. A hung step (a stuck read, a hung "
        "collective) would otherwise hold the lock for ever; if the step only needs longer, "
        "raise pipeline.max_tick_hours (null: no limit). The next tick starts the step again."
    )


def exit_past_deadline(message: str) -> None:
    """End the process at once. The steps run Ray work in this process's main thread, which
    another thread cannot interrupt cleanly (a blocked read or ray.get takes no exception). A
    killed tick is like a crashed one, which the design survives: every write is atomic
    (versioned state, atomic day files, tables published through the CURRENT pointer), so the
    next tick finds either the old or the new version and redoes the unfinished step."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_PAST_DEADLINE)


@contextlib.contextmanager
def tick_lock(
    root: str,
    day: dt.date,
    max_hours: float | None = None,
    on_deadline: Callable[[str], None] | None = None,
):
    """One tick at a time per root: two overlapping ticks (a slow fine-tune past the next cron
    time, a manual tick beside the cron one) would count the same days twice and overwrite each
    other's state. `pipeline/tick.lock` is created atomically (also on S3) and removed at the
    end. The tick rewrites it every HEARTBEAT_S (a heartbeat thread); a lock left by a killed
    tick on this host, or one nobody rewrote for STALE_LOCK_S, is taken over; any other is an
    error.

    The heartbeat would keep a hung tick's lock fresh for ever, so a tick still running after
    `max_hours` (None: no limit) is stopped by a watchdog: it logs an error naming the step
    running (the caller sets the yielded {"step": name}), removes the lock if still ours and
    calls `on_deadline(message)` (default: exit_past_deadline)."""
    uri = tick_lock_uri(root)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "as_of": day.isoformat(),
          "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
          "proc_start": process_start(os.getpid())}
    take_lock(uri, me)
    stop = threading.Event()
    running = {"step": "start"}

    def heartbeat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                if read_lock(uri) == me:  # never rewrite a lock another tick took over
                    write_text(uri, json.dumps(me, sort_keys=True))
            except Exception as e:  # a storage hiccup: the next beat tries again
                log.warning("tick lock heartbeat: %s", e)

    def release() -> None:
        stop.set()
        beat.join()  # a beat in flight must not write the lock back once it is removed
        if read_lock(uri) == me:
            remove(uri)

    def past_deadline() -> None:
        message = deadline_message(day, max_hours, running["step"])
        log.error(message)
        # In a thread of its own and bounded: a hung storage must not keep a hung tick alive
        # (a lock left behind is taken over once its holder is gone, or after STALE_LOCK_S).
        releasing = threading.Thread(target=release, name="tick-lock-release", daemon=True)
        releasing.start()
        releasing.join(RELEASE_TIMEOUT_S)
        (on_deadline or exit_past_deadline)(message)

    beat = threading.Thread(target=heartbeat, name="tick-lock-heartbeat", daemon=True)
    beat.start()
    watchdog = None
    if max_hours is not None:
        # A timer apart from the heartbeat, whose write can itself hang on a stuck storage.
        watchdog = threading.Timer(max_hours * 3600, past_deadline)
        watchdog.name, watchdog.daemon = "tick-watchdog", True
        watchdog.start()
    try:
        yield running
    finally:
        if watchdog is not None:
            watchdog.cancel()
        release()


def last_day(state: dict, step: str) -> dt.date | None:
    """The day of the state's `last_finetune` / `last_refresh`, None before the first."""
    value = (state.get(step) or {}).get("day")
    return dt.date.fromisoformat(value) if value else None


# ---- the steps (each calls another job's run(cfg)) ----------------------------------------------
def step_aggregate(cfg: Config) -> dict:
    from jobs import aggregate

    return aggregate.run(cfg)


def step_finetune(cfg: Config) -> dict:
    from jobs import finetune

    return finetune.run(cfg)


def step_refresh(cfg: Config) -> dict:
    """Retrieval snapshot for the day, then bulk inference, guards and publish (jobs.infer)."""
    from jobs import infer, retrieve

    served = publish.served_as_of(cfg.root)
    before = served[0] if served else None
    if served and served[1] > cfg.as_of:  # jobs.infer would build the table, then not publish
        raise GuardFailed(
            f"not published: as_of {cfg.as_of} is before the served table's ({served[0]}, "
            f"as_of {served[1]}); nothing was built"
        )
    snap = retrieve.run(cfg)
    result = infer.run(cfg)
    after = read_current(cfg.root)
    published = result.get("published", after != before)
    if not published:  # jobs.infer's reason: the failed guards, or a later table served
        why = result.get("reason") or json.dumps(result.get("guards", result), default=str)
        raise GuardFailed(f"not published: {why}")
    return {"retrieve": snap, "infer": result, "version": after}


class GuardFailed(RuntimeError):
    """The refresh did not publish: a guard refused the table, or a later table is served (then
    nothing is built); CURRENT did not move."""


STEPS = {"aggregate": step_aggregate, "finetune": step_finetune, "refresh": step_refresh}


def plan_tick(cfg: Config, state: dict, day: dt.date) -> dict:
    """{step: reason} of what is due on `day`, from the state before the tick."""
    pcfg = cfg.pipeline
    plan = {"aggregate": "new days"}
    last_refresh = last_day(state, "last_refresh")
    if not uses_adapter(cfg.infer.strategy):
        # frequency, base and rag serve no adapter: a fine-tune would be paid for and not used.
        if refresh_due(last_refresh, day, pcfg.rag_every_days):
            plan["refresh"] = "calendar"
        return plan
    last_ft = last_day(state, "last_finetune")
    jaccard = weak = None
    if pcfg.policy == "adaptive" and last_ft is not None:
        from common.transitions import read_transitions
        from jobs.infer import served_llm_weight

        lo = min(
            last_ft - dt.timedelta(days=cfg.finetune.window_days),
            day - dt.timedelta(days=pcfg.drift_window_days),
        )
        jaccard = drift_since_finetune(cfg, read_transitions(cfg.root, lo, day), last_ft, day)
        adapter = state["last_finetune"].get("adapter")
        weak = last_adapter_weak(pcfg, adapter, served_llm_weight(cfg.infer))
    due, reason = finetune_due(pcfg, last_ft, day, jaccard, weak)
    if reason == "unmeasured":
        warn_drift_unmeasured(pcfg, day)
    if due:
        plan["finetune"] = reason if jaccard is None else f"{reason} (jaccard={jaccard:.3f})"
    if due:
        plan["refresh"] = "after fine-tune"
    elif last_ft is not None and (last_refresh is None or last_refresh < last_ft):
        plan["refresh"] = "adapter not served yet"  # its refresh failed on the fine-tune's day
    elif refresh_due(last_refresh, day, pcfg.rag_every_days):
        plan["refresh"] = "calendar"
    return plan


def later_tick(state: dict, day: dt.date) -> str | None:
    """The newest tick recorded after `day`, if any: ticks go forward in time only."""
    later = [d for d in state["ticks"] if dt.date.fromisoformat(d) > day]
    return max(later) if later else None


def calendar_refresh_after(failed: dict, cfg: Config, state: dict, day: dt.date) -> bool:
    """Whether the refresh still runs after a failed step: only after a failed fine-tune, when
    the calendar alone made it due and there is an adapter to serve (a previous fine-tune's)."""
    if failed["step"] != "finetune":
        return False
    if uses_adapter(cfg.infer.strategy) and not state.get("last_finetune"):
        return False
    last = last_day(state, "last_refresh")
    return refresh_due(last, day, cfg.pipeline.rag_every_days)


def tick(
    cfg: Config,
    day: dt.date,
    steps: dict | None = None,
    on_deadline: Callable[[str], None] | None = None,
) -> dict:
    """Run what is due on `day`, holding the root's tick lock (see `tick_lock`); a tick still
    running after pipeline.max_tick_hours is stopped (`on_deadline`, default: the process
    exits with EXIT_PAST_DEADLINE)."""
    with tick_lock(cfg.root, day, cfg.pipeline.max_tick_hours, on_deadline) as running:
        return _tick(cfg, day, steps, running)


def _tick(
    cfg: Config, day: dt.date, steps: dict | None = None, running: dict | None = None
) -> dict:
    """Run what is due on `day`; idempotent; a failed step is recorded and retried next time.

    The aggregate runs first and the rest is planned after it, so the adaptive policy measures
    drift with yesterday's counts in. A tick for a day before one already recorded is refused:
    it would move the served table and the adapter back in time. A failed fine-tune still lets
    a refresh that the calendar made due run, on the previous adapter, so fresh retrieved
    statistics keep reaching the table while the fine-tune is retried by the next ticks."""
    steps = steps or STEPS
    running = {} if running is None else running  # {"step": name}: what a stopped tick names
    state = load_state(cfg.root)
    key = day.isoformat()
    record = state["ticks"].get(key)
    if record and record["status"] == "done":
        return {"day": key, "status": "done", "noop": True, "steps": record["steps"]}
    newer = later_tick(state, day)
    if newer:
        raise InputError(
            f"a tick for {newer} is already recorded in {pipeline_state(cfg.root)}: ticks run "
            f"forward in time, and one for {key} would put an older table and adapter back "
            f"in service; run --as-of {newer} or a later day"
        )
    if record is None:
        # Planned in full once the aggregate is done ("planned": False until then).
        record = {"plan": {"aggregate": "new days"}, "planned": False, "steps": {}}
        state["ticks"][key] = record
    record["status"] = "running"
    day_cfg = with_overrides(cfg, as_of=day)
    failed: dict | None = None
    for name in ("aggregate", "finetune", "refresh"):
        if failed and not (name == "refresh" and calendar_refresh_after(failed, cfg, state, day)):
            break
        if record.get("planned") is False and name != "aggregate":
            running["step"] = "plan"
            record["plan"] = plan_tick(cfg, state, day)
            record["planned"] = True
            save_state(cfg.root, state)
        if name not in record["plan"] or record["steps"].get(name, {}).get("status") == "done":
            continue
        t0 = time.perf_counter()
        running["step"] = name
        try:
            result = steps[name](day_cfg)
        except Exception as e:  # recorded; later steps depend on this one
            log.error("tick %s: step %s failed: %s", key, name, e)
            record["steps"][name] = {
                "status": "failed",
                "error": f"{type(e).__name__}: {e}"[:2000],
                "trace": traceback.format_exc(limit=5)[-4000:],
                "seconds": round(time.perf_counter() - t0, 3),
            }
            record["status"] = "failed"
            save_state(cfg.root, state)
            failed = failed or {"step": name, "error": record["steps"][name]["error"]}
            continue
        record["steps"][name] = {
            "status": "done",
            "seconds": round(time.perf_counter() - t0, 3),
            "result": _small(result),
        }
        if name == "finetune":
            state["last_finetune"] = {"day": key, "adapter": result["adapter"]}
            ran = record["steps"].get("refresh", {})
            if ran.get("status") == "done" and uses_adapter(cfg.infer.strategy):
                # An earlier try of this tick refreshed on the previous adapter: serve this one.
                record["steps"]["refresh_before_finetune"] = record["steps"].pop("refresh")
        if name == "refresh":
            state["last_refresh"] = {"day": key, "version": result.get("version")}
        save_state(cfg.root, state)
    if failed:
        return {
            "day": key,
            "status": "failed",
            "failed_step": failed["step"],
            "error": failed["error"],
            "plan": record["plan"],
            "current": read_current(cfg.root),
        }
    record["status"] = "done"
    save_state(cfg.root, state)
    return {
        "day": key,
        "status": "done",
        "noop": False,
        "plan": record["plan"],
        "current": read_current(cfg.root),
    }


def _small(result: Any) -> Any:
    """A JSON-safe summary of a step's result, bounded in size for the state file."""
    text = json.dumps(result, default=str)
    return json.loads(text) if len(text) < 20_000 else {"truncated": text[:2000]}


# ---- status: what an operator checks (reads only) ---------------------------------------------
def status(cfg: Config, today: dt.date) -> dict:
    """Whether the root is fresh on `today`: what is served and as of when, the last tick, the
    last fine-tune and refresh, a tick running now, and `problems` (empty when healthy): what a
    monitor alerts on, since a tick that keeps failing leaves the old table served, silently."""
    pcfg, root = cfg.pipeline, cfg.root
    state = load_state(root)
    problems = []
    current = read_current(root)
    served = None
    if current is None:
        problems.append("no table served: tables/CURRENT is missing (run a tick)")
    else:
        try:
            m = publish.read_manifest(root, current)
        except (FileNotFoundError, ValueError):
            m = {}
        served = {k: m.get(k) for k in ("as_of", "strategy", "adapter", "adapter_as_of")}
        served["version"] = current
        age = (today - dt.date.fromisoformat(m["as_of"])).days if m.get("as_of") else None
        served["age_days"] = age
        if age is not None and age > pcfg.rag_every_days:
            problems.append(
                f"stale: the served table is as of {m['as_of']}, {age} days before {today}; a "
                f"refresh is due every {pcfg.rag_every_days} days (pipeline.rag_every_days)"
            )
    days = list_days(root)
    counted = days[-1] if days else None
    if counted is None:
        problems.append("no transition counts yet (run a tick)")
    elif (today - counted).days > 2:
        problems.append(
            f"the counts end at {counted}, {(today - counted).days - 1} days before "
            f"{today - DAY}, the last day a tick on {today} counts: no newer log day was "
            "counted (a partition not landing, or no tick since)"
        )
    last_tick = None
    if state["ticks"]:
        key = max(state["ticks"])
        record = state["ticks"][key]
        failed = {n: s["error"] for n, s in record["steps"].items() if s.get("status") == "failed"}
        last_tick = {"day": key, "status": record.get("status"), "failed": failed}
        if record.get("status") == "failed":
            problems.append(f"the last tick ({key}) failed: " + "; ".join(
                f"{n}: {e}" for n, e in failed.items()
            ))
    last_ft = last_day(state, "last_finetune")
    if uses_adapter(cfg.infer.strategy):
        gap = pcfg.finetune_every_days if pcfg.policy == "fixed" else pcfg.max_finetune_gap_days
        if last_ft is None:
            problems.append(f"no fine-tune yet; infer.strategy={cfg.infer.strategy} needs one")
        elif gap is not None and (today - last_ft).days > gap:
            problems.append(
                f"fine-tune overdue: the last was on {last_ft}, {(today - last_ft).days} days "
                f"before {today} (due every {gap})"
            )
    uri = tick_lock_uri(root)
    holder = read_lock(uri)
    running = None
    try:
        age_s = lock_age_s(uri) if holder is not None else None
    except FileNotFoundError:  # the tick ended between the two reads
        holder = age_s = None
    if holder is not None:
        running = {"holder": holder, "lock_age_s": round(age_s)}
        if age_s > STALE_LOCK_S:
            problems.append(
                f"pipeline/tick.lock was not rewritten for {age_s / 60:.0f} min: its tick is gone "
                "(the next tick takes it over)"
            )
    return {
        "root": root,
        "today": today.isoformat(),
        "healthy": not problems,
        "problems": problems,
        "served": served,
        "counted_through": counted.isoformat() if counted else None,
        "last_tick": last_tick,
        "last_finetune": state.get("last_finetune"),
        "last_refresh": state.get("last_refresh"),
        "running": running,
    }


# ---- command line -------------------------------------------------------------------------------
TICK_READS = "inputs.*, <root>/stats/, <root>/adapters/, <root>/pipeline/state.json"
TICK_WRITES = (
    "<root>/stats, adapters, retrieval, tables (+CURRENT), pipeline/state.json (and "
    "pipeline/tick.lock while it runs: one tick per root at a time)"
)
REPLAY_READS = "<root>/stats/ (the counts), inputs.items and inputs.clusters"
STATUS_READS = (
    "<root>/pipeline/state.json and tick.lock, tables/CURRENT and its manifest.json, the days "
    "under <root>/stats/transitions/"
)
REPLAY_WRITES = (
    "<root>/reports/<report>/ (metrics.json, timeline.json, plots) and the work root "
    "(pipeline.work_root, default <root>/reports/<report>/work: tables and adapters it builds)"
)


def subcommand(sub, name: str, help: str, description: str, reads: str, writes: str):
    """A subcommand's parser, its Reads/Writes lines under the options as job_parser puts them."""
    return sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=f"Reads: {reads}\nWrites: {writes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser(
        "python -m jobs.pipeline",
        "The hybrid cadence: `tick` runs what is due on a day; `replay` compares strategies "
        "over logged history; `status` says whether the root is fresh. `python -m "
        "jobs.pipeline tick --help` (or replay, status) for each.",
        reads=f"tick: {TICK_READS}; replay: {REPLAY_READS}; status: {STATUS_READS}",
        writes=f"tick: {TICK_WRITES}; replay: {REPLAY_WRITES}",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    t = subcommand(
        sub,
        "tick",
        "Run what is due for one day (idempotent).",
        "Run what is due on --as-of: aggregate the new days, then a fine-tune and "
        "a refresh (snapshot, bulk inference, guards, publish) when the policy says so. A day "
        "already done is a no-op; a failed step is retried by the next tick. A tick still "
        "running after pipeline.max_tick_hours (default "
        f"{PipelineConfig().max_tick_hours:g}) logs the step it was in, removes its lock and "
        f"exits with status {EXIT_PAST_DEADLINE}; the next tick starts that step again.",
        TICK_READS,
        TICK_WRITES,
    )
    t.add_argument(
        "--as-of", required=True, type=dt.date.fromisoformat, metavar="DAY",
        help="the day the tables are built for (YYYY-MM-DD): counts the log's days before it",
    )
    r = subcommand(
        sub,
        "replay",
        "Replay the cadence day by day for several strategies.",
        "Replay the cadence over logged history, day by day, for each strategy: "
        "each sees only data before the day it serves. Writes hit rates, per-day timelines "
        "and plots.",
        REPLAY_READS,
        REPLAY_WRITES,
    )
    r.add_argument(
        "--start", type=dt.date.fromisoformat, metavar="DAY",
        help="first day served (default pipeline.start, else the last 14 days before --end, "
        "after finetune.window_days of data when a strategy fine-tunes)",
    )
    r.add_argument(
        "--end", type=dt.date.fromisoformat, metavar="DAY",
        help="day after the last one served (default pipeline.end, else the last counted day + 1)",
    )
    r.add_argument(
        "--strategies",
        help="comma-separated (default pipeline.strategies: all of "
        + ",".join(PipelineConfig().strategies) + ")",
    )
    st = subcommand(
        sub,
        "status",
        "Say whether the root is fresh: what is served, the last tick, problems.",
        "Read-only: the served table (version, as_of, age), the last tick and its "
        "failed steps, the last fine-tune and refresh, a tick running now, and `problems` "
        "(a stale table, a failed last tick, no new log days counted, an overdue fine-tune, a "
        "lock left by a tick that is gone). With --check the exit status is 1 when there is a "
        "problem, for a monitor or a cron line that mails on failure.",
        STATUS_READS,
        "nothing",
    )
    st.add_argument(
        "--today", type=dt.date.fromisoformat, metavar="DAY",
        help="the day to judge freshness on (default: today, UTC)",
    )
    st.add_argument("--check", action="store_true", help="exit 1 when there is a problem")
    # Let --config/--set come after the subcommand too.
    for p in (t, r, st):
        add_config_args(p, "sub_config", "sub_overrides")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    setup_logging()
    args.config = args.sub_config or args.config
    args.overrides = list(args.overrides) + list(args.sub_overrides)
    cfg = config_from_args(args)
    if args.command == "tick" and cfg.as_of not in (None, args.as_of):
        sys.exit(f"error: --as-of {args.as_of} and as_of={cfg.as_of} disagree: the tick builds "
                 "for --as-of; drop the as_of key")
    try:
        if args.command == "tick":
            summary = tick(cfg, args.as_of)
        elif args.command == "status":
            summary = status(cfg, args.today or dt.datetime.now(dt.UTC).date())
        else:
            from jobs.replay import replay

            strategies = args.strategies.split(",") if args.strategies else None
            summary = replay(cfg, args.start, args.end, strategies)
    except (ConfigError, InputError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps(summary, default=str, sort_keys=True))
    if summary.get("status") == "failed" or (args.command == "status" and args.check
                                                and not summary["healthy"]):
        sys.exit(1)
    return summary


def run(cfg: Config) -> dict:
    """A tick for cfg.as_of (default: today, UTC), for callers that hold a Config."""
    return tick(cfg, cfg.as_of or dt.datetime.now(dt.UTC).date())


if __name__ == "__main__":
    main()
