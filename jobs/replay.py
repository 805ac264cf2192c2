"""Replay of the cadence over logged history, for every strategy of docs/contracts.md "Evaluation".

The clock advances one day at a time over [start, end). Before anything is built for day d, the
daily counts of the days < d (and nothing later) are copied from `<root>/stats/` into the replay's
own work root (`<root>/reports/<report>/work/`), and every build for day d reads that work root
only: no table that serves day d can see an event of day d or later, whatever the jobs do.

What each strategy builds (the schedule is `plan_builds`, a pure function):
- `frequency`: the retrieved successors alone, a table every `rag_every_days`;
- `base`: the base model without RAG, one table at the start (it sees no data to change with);
- `rag`: the base model with RAG, every `rag_every_days`;
- `ft_once`: an adapter fine-tuned at the start and its table without RAG, never refreshed;
- `ft_monthly`: an adapter and its table without RAG every `finetune_every_days`;
- `hybrid`: the monthly adapters with RAG, a table every `rag_every_days`;
- `adaptive`: a fine-tune when the measured drift since the last one crosses `drift_threshold`,
  or on the monthly day while the last adapter measured weak (jobs.pipeline.finetune_due with
  policy=adaptive), RAG every `rag_every_days`.
One adapter per fine-tune day is trained once and shared by every strategy that uses it; one
retrieval snapshot per day is shared by every strategy built that day. Each day's events are
scored against each strategy's table in effect (with backoff) -> metrics.json + plots.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field

import pyarrow as pa
from tqdm.auto import tqdm

from common import retrieval
from common.cli import InputError
from common.config import Config
from common.lookup import Lookup
from common.storage import (
    arrow_fs_for,
    exists,
    file_stamps,
    fsspec_for,
    join,
    list_dirs,
    read_current,
    read_json,
    remove,
    report_dir,
    write_json,
)
from common.transitions import list_days, read_transitions
from jobs.evaluate import (
    add_counts,
    hit_counts,
    manifest_of,
    plot_hit_rates,
    rates,
    save_figure,
    valid_rate_of,
)
from jobs.pipeline import (
    drift_since_finetune,
    finetune_due,
    last_adapter_weak,
    warn_drift_unmeasured,
    window_jaccard,
    with_overrides,
)

log = logging.getLogger(__name__)

DAY = dt.timedelta(days=1)
STRATEGIES = ("frequency", "base", "rag", "ft_once", "ft_monthly", "hybrid", "adaptive")
# The jobs.infer strategy each replay strategy builds its tables with.
INFER_STRATEGY = {
    "frequency": "frequency",
    "base": "base",
    "rag": "rag",
    "ft_once": "ft",
    "ft_monthly": "ft",
    "hybrid": "hybrid",
    "adaptive": "hybrid",
}
USES_RAG = {"frequency", "rag", "hybrid", "adaptive"}
FINETUNES = {"ft_once", "ft_monthly", "hybrid", "adaptive"}


def serving_days(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + i * DAY for i in range((end - start).days)]


def plan_builds(strategy: str, start: dt.date, end: dt.date, rag_every: int, ft_every: int):
    """({build days}, {fine-tune days}) of a calendar strategy over [start, end); adaptive's
    fine-tune days are decided during the replay from measured drift (its refreshes are here)."""
    days = serving_days(start, end)
    rag_days = {d for i, d in enumerate(days) if i % rag_every == 0}
    monthly = {d for i, d in enumerate(days) if i % ft_every == 0}
    if strategy == "frequency" or strategy == "rag":
        return rag_days, set()
    if strategy == "base":
        return {start}, set()
    if strategy == "ft_once":
        return {start}, {start}
    if strategy == "ft_monthly":
        return set(monthly), monthly
    if strategy == "hybrid":
        return rag_days | monthly, monthly
    if strategy == "adaptive":
        return rag_days, set()
    raise InputError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")


def in_effect(builds: list[tuple[dt.date, str]], day: dt.date) -> str | None:
    """The version serving `day`: the last one built for a day <= day (builds sorted by day)."""
    current = None
    for built, version in builds:
        if built <= day:
            current = version
    return current


@dataclass
class StrategyLog:
    builds: list[tuple[dt.date, str]] = field(default_factory=list)
    finetune_days: list[dt.date] = field(default_factory=list)
    finetune_reasons: dict[str, str] = field(default_factory=dict)  # adaptive: why, per day
    compute_seconds: float = 0.0
    valid_rates: list[float] = field(default_factory=list)


def copy_days_before(src_root: str, dst_root: str, day: dt.date, done: set[dt.date]) -> None:
    """Copy the daily count folders (transitions, and item counts when present) of days < day."""
    for sub in ("transitions", "items"):
        src_base = join(src_root, "stats", sub)
        if not exists(src_base):
            continue
        src_fs, src_path = arrow_fs_for(src_base)
        dst_fs, dst_path = arrow_fs_for(join(dst_root, "stats", sub))
        for name in list_dirs(src_base):
            if not name.startswith("day=") or (sub, name) in done:
                continue
            if dt.date.fromisoformat(name.split("=", 1)[1]) >= day:
                continue
            dst_fs.create_dir(f"{dst_path}/{name}", recursive=True)
            pa.fs.copy_files(
                f"{src_path}/{name}",
                f"{dst_path}/{name}",
                source_filesystem=src_fs,
                destination_filesystem=dst_fs,
            )
            done.add((sub, name))


# Infer settings added after work roots were made, with the value that behaves as before they
# existed: left out of the table key at that value, so the tables those roots cached stay valid.
LATER_INFER_DEFAULTS = {"llm_weight": 1.0}


def without_later_defaults(section, later: dict) -> dict:
    """The section's settings for a cache key, less those in `later` set to the old behaviour."""
    dumped = section.model_dump(mode="json")
    return {k: v for k, v in dumped.items() if k not in later or v != later[k]}


class Replayer:
    """Builds (and caches) snapshots, adapters and tables in the work root, timing each.

    Adapters are recorded in `<work>/replay_adapters.json` under the fine-tune day, a key of
    the settings that decide what is learned (FinetuneConfig.learning_settings, the model, the
    prompt, the retrieval) and the source's fingerprint (`source_key`), so replays that share a
    work root train each one once (an adapter for day f reads only days < f: valid for any
    replay that serves days >= f, until those days' counts or the catalog change).
    """

    def __init__(self, cfg: Config, work: str):
        self.cfg = with_overrides(
            cfg,
            root=work,
            # Every strategy's table is measured; the guards' verdicts are recorded, not enforced.
            guards__enforce=False,
        )
        self.work = work
        self.snapshots: dict[dt.date, float] = {}
        self.index_uri = join(work, "replay_adapters.json")
        self.index = read_json(self.index_uri) if exists(self.index_uri) else {}
        # Tables are cached the same way (replay_tables.json): replays of one source root that
        # share a work root and build the same table for the same day build it once.
        self.tables_uri = join(work, "replay_tables.json")
        self.tables = read_json(self.tables_uri) if exists(self.tables_uri) else {}
        self.key = hashlib.sha1(
            json.dumps(
                [
                    cfg.finetune.learning_settings(),
                    cfg.model.name_or_path,
                    cfg.prompt.model_dump(mode="json"),
                    cfg.retrieval.model_dump(mode="json"),  # the RAG lines of the examples
                    retrieval.RANKING_VERSION,
                ],
                sort_keys=True,
            ).encode()
        ).hexdigest()[:12]
        # What the source holds, listed once: a re-aggregated day or an edited catalog changes
        # the key of every build that reads it, so a shared work root never serves stale builds.
        self.source = {
            sub: file_stamps(join(cfg.root, "stats", sub)) for sub in ("transitions", "items")
        }
        # The catalog names the prompts; the items file feeds each table's top items.
        self.catalog_stamps = {
            "clusters": file_stamps(cfg.inputs.clusters),
            "items": file_stamps(cfg.inputs.items),
        }

    def source_key(self, day: dt.date) -> str:
        """Fingerprint of what a build for `day` reads from the source root: the count files of
        the days < day (by size and mtime or ETag), the cluster catalog and the items file."""
        before = {
            sub: sorted(
                (name, stamp)
                for name, stamp in stamps.items()
                if name.startswith("day=") and name.split("/", 1)[0][4:] < day.isoformat()
            )
            for sub, stamps in self.source.items()
        }
        parts = [before, {k: sorted(v.items()) for k, v in self.catalog_stamps.items()}]
        return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]

    def snapshot(self, day: dt.date) -> float:
        """Build the retrieval snapshot for day once; seconds it took (charged to its users)."""
        if day not in self.snapshots:
            from jobs import retrieve

            t0 = time.perf_counter()
            retrieve.run(with_overrides(self.cfg, as_of=day))
            self.snapshots[day] = time.perf_counter() - t0
        return self.snapshots[day]

    def adapter(self, day: dt.date) -> tuple[str, float]:
        """(adapter dir, seconds) of the fine-tune on [day - W, day), trained once."""
        entry = f"{day.isoformat()}/{self.key}/{self.source_key(day)}"
        if entry not in self.index:
            from jobs import finetune

            t0 = time.perf_counter()
            result = finetune.run(with_overrides(self.cfg, as_of=day))
            path = result["adapter"]  # jobs.finetune's published adapter directory
            self.index[entry] = {"path": path, "seconds": round(time.perf_counter() - t0, 3)}
            write_json(self.index_uri, self.index)
        return self.index[entry]["path"], float(self.index[entry]["seconds"])

    def table(self, day: dt.date, strategy: str, adapter: str | None) -> tuple[str, float, dict]:
        """(version, seconds, result) of one table built for `day` with the infer strategy."""
        from jobs import infer

        cfg = with_overrides(self.cfg, as_of=day, infer__strategy=strategy, infer__adapter=adapter)
        key = f"{table_key(cfg)}/{self.source_key(day)}"
        if key in self.tables and exists(join(self.work, "tables", self.tables[key]["version"])):
            hit = self.tables[key]
            return hit["version"], float(hit["seconds"]), {"cached": True}
        t0 = time.perf_counter()
        result = infer.run(cfg)
        seconds = time.perf_counter() - t0
        version = result.get("version") or read_current(self.work)
        self.tables[key] = {"version": version, "seconds": round(seconds, 3)}
        write_json(self.tables_uri, self.tables)
        return version, seconds, result


def table_key(cfg: Config) -> str:
    """What a table depends on: the day, the infer/prompt/retrieval/model settings, the adapter.
    The work root's counts for days < d are the same in every replay of one source root."""
    from jobs.infer import served_llm_weight

    # the weight the table is served at: 1 (dropped as a later default) without RAG
    served = cfg.infer.model_copy(update={"llm_weight": served_llm_weight(cfg.infer)})
    parts = [
        str(cfg.as_of),
        without_later_defaults(served, LATER_INFER_DEFAULTS),
        cfg.prompt.model_dump(mode="json"),
        cfg.retrieval.model_dump(mode="json"),
        cfg.model.model_dump(mode="json"),
        cfg.guards.model_dump(mode="json"),
        retrieval.RANKING_VERSION,
    ]
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def default_start(cfg: Config, strategies: list[str], first: dt.date, end: dt.date) -> dt.date:
    """The last 14 days before end, after a full fine-tune window of data when a strategy
    fine-tunes (else after the first counted day)."""
    tunes = any(s in FINETUNES for s in strategies)
    start = max(first + (cfg.finetune.window_days if tunes else 1) * DAY, end - 14 * DAY)
    if start >= end:
        raise InputError(
            f"the default replay start {start} (first day with counts {first} + "
            f"finetune.window_days={cfg.finetune.window_days}, for the fine-tunes' data) is "
            f"not before end {end}: pass --start"
        )
    return start


def check_work_root(root: str, work: str) -> None:
    """The replay empties `<work>/stats` and `<work>/retrieval`: refuse a work root where that
    would delete the source's own counts or snapshots."""

    def norm(uri: str) -> str:
        return fsspec_for(uri)[1].rstrip("/") + "/"  # bucket/key on S3, the absolute local path

    source, target = norm(root), norm(work)
    inside = any(source.startswith(target + sub + "/") for sub in ("stats", "retrieval"))
    if source == target or inside:
        raise InputError(
            f"pipeline.work_root={work} is the source root {root} (or holds it): a replay empties "
            "the work root's stats/ and retrieval/; choose another folder"
        )


def replay(
    cfg: Config,
    start: dt.date | None = None,
    end: dt.date | None = None,
    strategies: list[str] | None = None,
) -> dict:
    pcfg = cfg.pipeline
    # Each strategy once ("frequency, rag" and "frequency,frequency" are what a user types).
    strategies = list(dict.fromkeys(s.strip() for s in (strategies or pcfg.strategies)))
    for s in strategies:
        plan_builds(s, dt.date(2000, 1, 1), dt.date(2000, 1, 2), 1, 1)  # validates the name
    if max(pcfg.ks) > cfg.infer.top_k:
        # The tables built hold infer.top_k answers per pair: a larger cut-off would count only
        # those, a hit rate that reads as more than it is.
        raise InputError(
            f"pipeline.ks goes up to {max(pcfg.ks)}, but the tables hold infer.top_k="
            f"{cfg.infer.top_k} answers per pair: raise infer.top_k or lower pipeline.ks"
        )
    days_with_counts = list_days(cfg.root)
    if not days_with_counts:
        raise InputError(f"no transition counts under {cfg.root}: run jobs.aggregate first")
    first = days_with_counts[0]
    end = end or pcfg.end or days_with_counts[-1] + DAY
    start = start or pcfg.start or default_start(cfg, strategies, first, end)
    if start >= end:
        raise InputError(f"replay start {start} is not before end {end}")
    if start <= first:
        raise InputError(
            f"replay start {start} must be after {first}, the first day with counts under "
            f"{cfg.root}: a table serving day d is built from the days before d"
        )
    out_dir = report_dir(cfg.root, cfg.report)
    work = pcfg.work_root or join(out_dir, "work")
    check_work_root(cfg.root, work)
    # The work root's counts are rebuilt day by day from nothing: what a build sees is what the
    # clock allows, even when the work root is shared with an earlier replay.
    remove(join(work, "stats"))
    remove(join(work, "retrieval"))
    rep = Replayer(cfg, work)
    ks = sorted(set(pcfg.ks))
    t_all = time.perf_counter()

    plans = {
        s: plan_builds(s, start, end, pcfg.rag_every_days, pcfg.finetune_every_days)
        for s in strategies
    }
    logs = {s: StrategyLog() for s in strategies}
    all_counts = read_transitions(cfg.root, None, end)  # drift needs history; filtered by day below
    if not pa.compute.any(pa.compute.greater_equal(all_counts["day"], start)).as_py():
        raise InputError(
            f"no events in [{start}, {end}) under {cfg.root} (the last day with counts is "
            f"{days_with_counts[-1]}): nothing to score"
        )
    copied: set = set()
    adaptive_cfg = with_overrides(cfg, pipeline__policy="adaptive")
    drift_by_day: dict[str, dict] = {}
    unmeasured_warned = False
    weak_of: dict[str, bool | None] = {}  # adapter -> its meta.json verdict, read once

    for day in tqdm(serving_days(start, end), desc="replay days", unit="day"):
        copy_days_before(cfg.root, work, day, copied)
        history = all_counts.filter(pa.compute.less(all_counts["day"], pa.scalar(day, pa.date32())))
        w = cfg.aggregate.drift_window_days
        month = window_jaccard(
            history,
            (day - 2 * w * DAY, day - w * DAY),
            (day - w * DAY, day),
            cfg.aggregate.drift_min_support,
        )
        drift_by_day[day.isoformat()] = {"month_over_month_jaccard": month}
        for s in strategies:
            builds, ft_days = plans[s]
            slog = logs[s]
            if s == "adaptive":
                last = slog.finetune_days[-1] if slog.finetune_days else None
                jac = drift_since_finetune(cfg, history, last, day) if last else None
                last_adapter = rep.adapter(last)[0] if last else None
                if last_adapter not in weak_of:
                    weak_of[last_adapter] = last_adapter_weak(
                        adaptive_cfg.pipeline, last_adapter, adaptive_cfg.infer.llm_weight
                    )
                weak = weak_of[last_adapter]
                due, reason = finetune_due(adaptive_cfg.pipeline, last, day, jac, weak)
                drift_by_day[day.isoformat()]["adaptive_jaccard"] = jac
                drift_by_day[day.isoformat()]["adaptive_weak_adapter"] = weak
                if reason == "unmeasured" and not unmeasured_warned:  # once, not every day
                    unmeasured_warned = True
                    warn_drift_unmeasured(adaptive_cfg.pipeline, day)
                if due:
                    ft_days = ft_days | {day}
                    builds = builds | {day}
                    slog.finetune_reasons[day.isoformat()] = reason
                    log.info("adaptive: fine-tune on %s (%s, jaccard=%s)", day, reason, jac)
            if day not in builds:
                continue
            seconds = 0.0
            adapter = None
            if s in FINETUNES:
                if day in ft_days:
                    slog.finetune_days.append(day)
                    _, ft_seconds = rep.adapter(day)
                    seconds += ft_seconds
                adapter = rep.adapter(slog.finetune_days[-1])[0]
            if s in USES_RAG or s in ("ft_once", "ft_monthly", "base"):
                # Every table needs the day's snapshot (pairs, backoff); only RAG users pay for it.
                snap_seconds = rep.snapshot(day)
                if s in USES_RAG:
                    seconds += snap_seconds
            version, t_seconds, result = rep.table(day, INFER_STRATEGY[s], adapter)
            seconds += t_seconds
            slog.builds.append((day, version))
            slog.compute_seconds += seconds
            manifest = manifest_of(work, version)
            valid = valid_rate_of(manifest)
            slog.valid_rates.append(valid if valid is not None else 1.0)

    # Score every day against each strategy's table in effect (one table in memory at a time:
    # a strategy's versions come in day order, and a 120-cluster table is ~17 MB).
    metrics: dict[str, dict] = {}
    timeline: dict[str, dict[str, dict]] = {s: {} for s in strategies}
    for s in tqdm(strategies, desc="scoring", unit="strategy"):
        total: dict = {}
        lookup: Lookup | None = None
        for day in serving_days(start, end):
            version = in_effect(logs[s].builds, day)
            events = read_day(all_counts, day)
            if version is None or events.num_rows == 0:
                continue
            if lookup is None or lookup.version != version:
                lookup = Lookup.load(work, version)
            counts = hit_counts(lookup, events, ks)
            total = add_counts(total, counts)
            timeline[s][day.isoformat()] = {**rates(counts, ks), "version": version}
        slog = logs[s]
        metrics[s] = {
            **rates(total, ks),
            "valid_rate": sum(slog.valid_rates) / len(slog.valid_rates)
            if slog.valid_rates
            else 0.0,
            "compute_seconds": round(slog.compute_seconds, 3),
            "n_tables": len(slog.builds),
            "n_finetunes": len(slog.finetune_days),
            "finetune_days": [d.isoformat() for d in slog.finetune_days],
            **({"finetune_reasons": slog.finetune_reasons} if slog.finetune_reasons else {}),
        }
    summary = {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "strategies": strategies,
        "config": {
            "rag_every_days": pcfg.rag_every_days,
            "finetune_every_days": pcfg.finetune_every_days,
            "drift_threshold": pcfg.drift_threshold,
            "retrieval_window_days": cfg.retrieval.window_days,
            "model": cfg.model.name_or_path,
        },
        "wall_seconds": round(time.perf_counter() - t_all, 1),
    }
    write_json(join(out_dir, "metrics.json"), metrics)
    write_json(
        join(out_dir, "timeline.json"),
        {"summary": summary, "hit_rates": timeline, "drift": drift_by_day},
    )
    plots = plot_replay(out_dir, metrics, timeline, drift_by_day, ks)
    return {
        "report": out_dir,
        **summary,
        "plots": plots,
        "metrics": {
            s: {
                k: round(v, 4) if isinstance(v, float) else v
                for k, v in m.items()
                if k.startswith("hit_rate") or k in ("n_finetunes", "compute_seconds")
            }
            for s, m in metrics.items()
        },
    }


def read_day(all_counts: pa.Table, day: dt.date) -> pa.Table:
    import pyarrow.compute as pc

    return all_counts.filter(pc.equal(all_counts["day"], pa.scalar(day, pa.date32())))


def plot_replay(
    out_dir: str, metrics: dict, timeline: dict, drift: dict, ks: list[int]
) -> list[str]:
    """hit_rate_over_time.png, drift_over_time.png, compute_per_strategy.png under out_dir."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [plot_hit_rates(out_dir, timeline, ks)]

    fig, ax = plt.subplots(figsize=(9, 4))
    xs = sorted(drift)
    for key, label in (
        ("month_over_month_jaccard", "consecutive 30-day windows"),
        ("adaptive_jaccard", "adaptive: fine-tune window vs recent"),
    ):
        pts = [(dt.date.fromisoformat(x), drift[x].get(key)) for x in xs]
        pts = [(x, y) for x, y in pts if y is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=label)
    for d in metrics.get("adaptive", {}).get("finetune_days", []):
        ax.axvline(dt.date.fromisoformat(d), color="grey", lw=0.8, ls="--")
    ax.set_ylabel("mean Jaccard of top-5 successors")
    ax.set_title("drift (dashed: adaptive fine-tunes)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.autofmt_xdate()
    paths.append(save_figure(fig, join(out_dir, "drift_over_time.png")))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    names = list(metrics)
    ax.bar(names, [metrics[s]["compute_seconds"] for s in names])
    for i, s in enumerate(names):
        ax.text(
            i,
            metrics[s]["compute_seconds"],
            f"{metrics[s]['n_finetunes']} ft",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylabel("compute seconds (builds + fine-tunes)")
    ax.set_title("compute spent per strategy")
    paths.append(save_figure(fig, join(out_dir, "compute_per_strategy.png")))
    plt.close(fig)
    return paths


if __name__ == "__main__":
    # One module per job: `python -m jobs.replay ARGS` is `python -m jobs.pipeline replay ARGS`.
    import sys

    from jobs.pipeline import main

    main(["replay", *sys.argv[1:]])
