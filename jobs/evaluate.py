"""Score published tables on chosen days (docs/contracts.md "Evaluation").

Each held-out transition (c1, c2) -> c3 of the scored days counts `count` times and hits at k when
c3 is among the first k answers the server would give for (c1, c2): `common.lookup.Lookup`, with
its backoff, the same class Serve answers with. Writes `<root>/reports/<report>/metrics.json`
with one object per version: hit_rate@k, valid_rate, coverage, n_events, compute_seconds
(the manifest's own, null when it has none), strategy, as_of, eval_seconds and
leaks_scored_days (the table or its adapter learned from a scored day: an as_of after the
first); and beside it timeline.json and hit_rate_over_time.png (per-day hit rates).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from common.cli import InputError, job_parser, run_main
from common.config import Config
from common.lookup import Lookup
from common.model import adapter_as_of
from common.publish import read_manifest
from common.storage import join, read_current, report_dir, write_json
from common.transitions import list_days, read_transitions

log = logging.getLogger(__name__)


def hit_counts(lookup: Lookup, transitions: pa.Table, ks: Iterable[int]) -> dict:
    """Weighted hits per k, events, and events whose pair is in the table itself (not backoff).

    Counts, not rates, so that days and periods add up exactly; `rates` turns them into rates.
    Delegates to common.evaluation.hit_rates (shared with the guards) and converts back.
    """
    from common.evaluation import hit_rates

    ks = sorted(set(int(k) for k in ks))
    if transitions.num_rows == 0:
        return {"n_events": 0, "covered": 0.0, **{f"hits@{k}": 0.0 for k in ks}}
    r = hit_rates(lookup, transitions, ks)
    n = int(r["n_events"])
    out = {"n_events": n, "covered": float(r["coverage"]) * n}
    for k in ks:
        out[f"hits@{k}"] = float(r[f"hit_rate@{k}"]) * n
    return out


def add_counts(a: dict, b: dict) -> dict:
    return {k: a.get(k, 0) + b.get(k, 0) for k in set(a) | set(b)}


def rates(counts: dict, ks: Iterable[int]) -> dict:
    """hit_rate@k and coverage from summed counts (0.0 when there are no events)."""
    n = counts.get("n_events", 0)
    out = {f"hit_rate@{k}": (counts.get(f"hits@{k}", 0.0) / n if n else 0.0) for k in ks}
    out["coverage"] = counts.get("covered", 0.0) / n if n else 0.0
    out["n_events"] = int(n)
    return out


def find_key(obj, key: str):
    """The first value stored under `key` anywhere in a nested manifest (None when absent)."""
    if isinstance(obj, dict):
        if key in obj and not isinstance(obj[key], dict | list):
            return obj[key]
        for v in obj.values():
            found = find_key(v, key)
            if found is not None:
                return found
    elif isinstance(obj, list):
        for v in obj:
            found = find_key(v, key)
            if found is not None:
                return found
    return None


def valid_rate_of(manifest: dict) -> float | None:
    """The valid-rate guard's measured value (manifest.guards.valid_rate.value), if any."""
    guard = (manifest.get("guards") or {}).get("valid_rate")
    if isinstance(guard, dict) and guard.get("value") is not None and guard.get("n", 1):
        return float(guard["value"])
    value = find_key(manifest, "valid_rate")
    return float(value) if value is not None else None


def manifest_of(root: str, version: str) -> dict:
    try:
        return read_manifest(root, version)
    except (FileNotFoundError, OSError):
        return {}


def data_as_of(manifest: dict) -> str | None:
    """The latest as_of the table learned from: its own, or its adapter's when that is later
    (a table can be built for an earlier day with an adapter fine-tuned as of a later one).
    Manifests from before `adapter_as_of` was written: the adapter's meta.json says."""
    trained = manifest.get("adapter_as_of")
    if trained is None and manifest.get("adapter"):
        found = adapter_as_of(manifest["adapter"])
        trained = found.isoformat() if found else None
    days = [str(d) for d in (manifest.get("as_of"), trained) if d]
    return max(days) if days else None


def scored_days(cfg: Config, days: list[dt.date]) -> tuple[dt.date, dt.date]:
    """[start, end) of the days scored: the configured bounds, else the last `days` with counts."""
    ev = cfg.evaluate
    if not days and (ev.start is None or ev.end is None):
        raise InputError(f"no transition counts under {cfg.root}: run jobs.aggregate first")
    end = ev.end or (days[-1] + dt.timedelta(days=1))
    start = ev.start or (end - dt.timedelta(days=ev.days))
    if start >= end:
        raise InputError(f"evaluate.start {start} is not before evaluate.end {end}")
    return start, end


def check_ks_within_tables(manifests: dict[str, dict], ks: list[int]) -> None:
    """A table holds its top_k answers per pair: a hit rate at a larger k would count only
    those (hit@20 equal to hit@10 on pairs in the table), a number that reads as more than it
    is. Refused before any scoring."""
    short = {v: m["top_k"] for v, m in manifests.items() if m.get("top_k") and m["top_k"] < ks[-1]}
    if short:
        held = ", ".join(f"{v} holds its top {k}" for v, k in short.items())
        raise InputError(
            f"evaluate.ks goes up to {ks[-1]}, but {held} per pair: score at most "
            f"k={min(short.values())} (evaluate.ks) or leave those versions out"
        )


def evaluate_version(
    root: str, version: str, manifest: dict, transitions: pa.Table, ks: list[int], start: dt.date
) -> dict:
    t0 = time.perf_counter()
    lookup = Lookup.load(root, version)
    metrics = rates(hit_counts(lookup, transitions, ks), ks)
    valid = valid_rate_of(manifest)
    # The manifest's own top-level key only (a nested one would be some other cost), and null
    # when it has none: 0.0 would read as a table that cost nothing to build.
    build = manifest.get("compute_seconds")
    metrics["valid_rate"] = valid if valid is not None else 1.0
    metrics["compute_seconds"] = float(build) if build is not None else None
    metrics["eval_seconds"] = round(time.perf_counter() - t0, 3)
    metrics["strategy"] = manifest.get("strategy")
    metrics["as_of"] = manifest.get("as_of")
    # The table (or the adapter it serves) was built with data from inside the scored days: say
    # so, loudly, and always carry the flag (false too), since such a hit rate is not an
    # out-of-sample number.
    learned = data_as_of(manifest)
    metrics["leaks_scored_days"] = bool(learned and learned > start.isoformat())
    if metrics["leaks_scored_days"]:
        log.warning(
            "version %s learned from days up to %s, after the first scored day %s",
            version, learned, start,
        )
    return metrics


def save_figure(fig, uri: str) -> str:
    """Save a matplotlib figure to a local path or s3:// URI."""
    import io

    from common.storage import fsspec_for, makedirs

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    makedirs(uri.rsplit("/", 1)[0])
    fs, path = fsspec_for(uri)
    with fs.open(path, "wb") as f:
        f.write(buf.getvalue())
    return uri


def plot_hit_rates(out_dir: str, timeline: dict, ks: list[int]) -> str:
    """hit_rate_over_time.png: hit rate@5 (else the largest k) per day, one line per table or
    strategy ({name: {day: rates}})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = 5 if 5 in ks else ks[-1]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, days in timeline.items():
        xs = sorted(days)
        ax.plot(
            [dt.date.fromisoformat(x) for x in xs],
            [days[x][f"hit_rate@{k}"] for x in xs],
            marker=".",
            label=name,
        )
    ax.set_ylabel(f"hit rate@{k}")
    ax.set_title(f"hit rate@{k} per served day")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, ncol=2)
    fig.autofmt_xdate()
    path = save_figure(fig, join(out_dir, "hit_rate_over_time.png"))
    plt.close(fig)
    return path


def daily_rates(root: str, version: str, transitions: pa.Table, ks: list[int]) -> dict:
    """{day: rates} of one version on each scored day that has events."""
    lookup = Lookup.load(root, version)
    days = sorted(set(transitions["day"].to_pylist()))
    return {
        d.isoformat(): rates(
            hit_counts(lookup, transitions.filter(pc.equal(transitions["day"], d)), ks), ks
        )
        for d in days
    }


def run(cfg: Config) -> dict:
    versions = list(cfg.evaluate.versions)
    if not versions:
        current = read_current(cfg.root)
        if current is None:
            raise InputError(f"nothing published under {cfg.root}: no tables/CURRENT")
        versions = [current]
    ks = sorted(set(cfg.evaluate.ks))
    manifests = {v: manifest_of(cfg.root, v) for v in versions}
    check_ks_within_tables(manifests, ks)
    start, end = scored_days(cfg, list_days(cfg.root))
    transitions = read_transitions(cfg.root, start, end)
    results = {
        v: evaluate_version(cfg.root, v, manifests[v], transitions, ks, start) for v in versions
    }
    out_dir = report_dir(cfg.root, cfg.report)
    write_json(join(out_dir, "metrics.json"), results)
    timeline = {v: daily_rates(cfg.root, v, transitions, ks) for v in versions}
    write_json(join(out_dir, "timeline.json"), {"hit_rates": timeline})
    plot = plot_hit_rates(out_dir, timeline, ks)
    return {
        "report": out_dir,
        "plots": [plot],
        "start": start.isoformat(),
        "end": end.isoformat(),
        "metrics": {
            v: {k: m[k] for k in m if k.startswith("hit_rate") or k == "leaks_scored_days"}
            for v, m in results.items()
        },
    }


def main(argv: list[str] | None = None) -> dict:
    parser = job_parser(
        "python -m jobs.evaluate",
        "Score published tables (tables/CURRENT by default) on chosen days, as Serve would answer.",
        reads="<root>/tables/<version>/, <root>/stats/transitions/ "
        "(days [evaluate.start, evaluate.end))",
        writes="<root>/reports/<report>/metrics.json (one object per version), timeline.json "
        "(per-day hit rates) and hit_rate_over_time.png",
    )
    return run_main(parser, run, argv)


if __name__ == "__main__":
    main()
