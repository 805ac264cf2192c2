"""The paper's experiments, reproduced on a root that holds aggregated counts (docs/results.md).

    python -m bench.experiments DATASET EXPERIMENT [--config FILE] [--set key=value ...]

EXPERIMENT is one of:
- `drift`      month-over-month Jaccard of the top-5 successors (paper: mean 0.17);
- `tables`     no model: the retrieved successors alone as the served table, by variant
               (frequency, trend, global), refreshed every `pipeline.rag_every_days`, and the
               frequency table refreshed every 2 days vs fixed at the first day; replayed in memory
               with the same code the jobs use (common.retrieval, jobs.infer.fill_table, Lookup);
- `schedule`   no model: the days the adaptive policy would fine-tune over the replayed window
               for several drift thresholds, against the fixed monthly calendar;
- `identical`  share of pairs whose answers with RAG equal those without (paper: 7.8%), for the
               base model (base vs rag) and the fine-tuned one (ft_once vs hybrid) on one day;
- `retrieval`  frequency vs trend vs global retrieval in the RAG prompt, replayed for `rag` and
               `hybrid` (those of `pipeline.strategies`); hybrid's adapters are fine-tuned on
               prompts of their own variant, as a deployment that switched variant would;
- `refresh`    a hybrid table refreshed every 2 days vs one fixed at the first day (replayed);
- `compare`    the full strategy comparison, adaptive included (jobs.pipeline replay);
- `blend`      does the fine-tuned model know anything the counts do not? Replays `frequency` and
               `hybrid` with `infer.llm_weight=1` (the LLM alone; cached when `compare` ran with
               it) and scores, day by day, tables that rank each pair's candidates by
               w * log(hybrid score) + (1 - w) * log(frequency score) (common.blend: what
               `infer.llm_weight` = w publishes) for w in BLEND_WEIGHTS (0: the frequency table);
- `all`        each of the above in turn.
`identical`, `retrieval`, `refresh` and `blend` score the model's own tables (`infer.llm_weight=1`,
what the paper measures); `compare` uses the configured weight.
Each writes `<root>/reports/exp-<DATASET>-<EXPERIMENT>[...]/` and prints a JSON line; the replays
share one work root (`<root>/reports/exp-<DATASET>-work`) so each fine-tune is trained once.
DATASET is only a label for the report names (sim, movielens, movietweetings).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

import pyarrow as pa

from common.blend import blend_rows
from common.cli import config_from_args, setup_logging
from common.config import Config
from common.evaluation import hit_rates
from common.lookup import Lookup, rows_by_key
from common.storage import join, report_dir, write_json
from common.transitions import list_days, read_transitions
from jobs.pipeline import with_overrides
from jobs.replay import replay

DAY = dt.timedelta(days=1)


def work_root(cfg: Config, dataset: str) -> str:
    return cfg.pipeline.work_root or report_dir(cfg.root, f"exp-{dataset}-work")


def window(cfg: Config) -> tuple[dt.date, dt.date]:
    """[start, end) replayed: pipeline.start/end, else the last 14 days with counts."""
    days = list_days(cfg.root)
    end = cfg.pipeline.end or days[-1] + DAY
    start = cfg.pipeline.start or end - 14 * DAY
    return start, end


def exp_drift(cfg: Config, dataset: str) -> dict:
    from common.drift import drift_series

    out = {}
    for w in (30, 14, 7):
        r = drift_series(read_transitions(cfg.root), w, cfg.aggregate.drift_min_support, 5)
        out[f"window_{w}d"] = {
            "mean_jaccard": r["mean_jaccard"],
            "per_window": [
                (str(x["next_start"]), x["pairs"], x["mean_jaccard"]) for x in r["windows"]
            ],
        }
    write_json(join(report_dir(cfg.root, f"exp-{dataset}-drift"), "drift.json"), out)
    return {w: v["mean_jaccard"] for w, v in out.items()}


def retrieval_table_rates(
    cfg: Config, start: dt.date, end: dt.date, variant: str, every_days: int
) -> dict:
    """Hit rates over [start, end) of a table that is one retrieval ranking alone (no model),
    rebuilt every `every_days` from the counts in [d - W, d) only, answered with Serve's backoff."""
    import pyarrow.compute as pc

    from common import publish
    from common.catalog import load_catalog
    from common.retrieval import build_snapshot
    from jobs.evaluate import add_counts, hit_counts, rates
    from jobs.infer import all_pairs, fill_table

    catalog = load_catalog(cfg.inputs.clusters)
    W, k, ks = cfg.retrieval.window_days, cfg.infer.top_k, sorted(set(cfg.pipeline.ks))
    counts = read_transitions(cfg.root, start - W * DAY, end)

    def days(lo: dt.date, hi: dt.date):
        return counts.filter(
            pc.and_(
                pc.greater_equal(counts["day"], pa.scalar(lo, pa.date32())),
                pc.less(counts["day"], pa.scalar(hi, pa.date32())),
            )
        )

    total: dict = {}
    lookup, built = None, None
    n_tables = 0
    active = set(counts["day"].unique().to_pylist())
    for i in range((end - start).days):
        day = start + i * DAY
        if day not in active:
            continue  # nothing to score; the table in effect is built lazily (sparse real logs)
        build_day = start + (i - i % every_days) * DAY  # the last scheduled build day <= day
        if build_day != built:
            built = build_day
            window = days(build_day - W * DAY, build_day)
            snap = build_snapshot(window, build_day, W, cfg.retrieval.top_n)
            backoff = publish.build_backoff(snap["global"], window, catalog, k)
            pairs = all_pairs(catalog, snap["frequency"], cfg.infer.min_support)
            if variant == "global":
                per_c2 = rows_by_key(snap["global"], ["c2"])
                answers = {(a, b): per_c2.get((b,), []) for a, b in pairs}
            else:
                answers = rows_by_key(snap[variant])
            table = fill_table(pairs, answers, "frequency", backoff, catalog, k)
            lookup = Lookup.from_tables(f"{variant}@{build_day}", table, backoff, catalog)
            n_tables += 1
        total = add_counts(total, hit_counts(lookup, days(day, day + DAY), ks))
    return {**rates(total, ks), "n_tables_used": n_tables}


def exp_tables(cfg: Config, dataset: str) -> dict:
    start, end = window(cfg)
    every = cfg.pipeline.rag_every_days
    out: dict = {"start": start.isoformat(), "end": end.isoformat(), "rag_every_days": every}
    out["variants"] = {
        v: retrieval_table_rates(cfg, start, end, v, every)
        for v in ("frequency", "trend", "global")
    }
    out["refresh"] = {
        "every_2_days": retrieval_table_rates(cfg, start, end, "frequency", 2),
        "fixed_day_1": retrieval_table_rates(cfg, start, end, "frequency", 10**6),
    }
    write_json(join(report_dir(cfg.root, f"exp-{dataset}-tables"), "metrics.json"), out)
    return out


def adaptive_days(
    cfg: Config, start: dt.date, end: dt.date, transitions: pa.Table, cache: dict
) -> list:
    """Fine-tune days of the adaptive policy over [start, end) (jobs.pipeline.finetune_due with
    the measured drift since the last fine-tune, as jobs.pipeline.drift_since_finetune measures
    it), the first one on `start`, as replay runs it but on drift alone: no adapter is trained
    here, so the weak-adapter check (which can only add fine-tunes on monthly days) is left out.
    `cache` keeps each window's top successors across calls (the windows repeat across
    thresholds)."""
    from jobs.pipeline import finetune_due, mean_jaccard, top_successors

    pcfg = with_overrides(cfg, pipeline__policy="adaptive").pipeline

    def tops(lo: dt.date, hi: dt.date) -> dict:
        if (lo, hi) not in cache:
            cache[(lo, hi)] = top_successors(transitions, lo, hi, 5, pcfg.drift_min_support)
        return cache[(lo, hi)]

    def jaccard(last: dt.date, day: dt.date) -> float | None:
        return mean_jaccard(
            tops(last - cfg.finetune.window_days * DAY, last),
            tops(day - pcfg.drift_window_days * DAY, day),
        )

    days: list[tuple[str, float | None]] = []
    last = None
    for i in range((end - start).days):
        day = start + i * DAY
        jac = jaccard(last, day) if last else None
        if finetune_due(pcfg, last, day, jac)[0]:
            days.append((day.isoformat(), None if jac is None else round(jac, 3)))
            last = day
    return days


def exp_schedule(cfg: Config, dataset: str) -> dict:
    start, end = window(cfg)
    transitions = read_transitions(cfg.root, None, end)
    out: dict = {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "monthly": [
            (start + i * DAY).isoformat()
            for i in range(0, (end - start).days, cfg.pipeline.finetune_every_days)
        ],
    }
    cache: dict = {}
    for threshold in (0.1, 0.15, 0.2, 0.25, 0.3, 0.4):
        c = with_overrides(cfg, pipeline__drift_threshold=threshold)
        out[f"adaptive_{threshold}"] = adaptive_days(c, start, end, transitions, cache)
    write_json(join(report_dir(cfg.root, f"exp-{dataset}-schedule"), "schedule.json"), out)
    return {k: (len(v) if isinstance(v, list) else v) for k, v in out.items()}


def same_answers(a: Lookup, b: Lookup, k: int) -> dict:
    """Share of the pairs both tables answer whose top-1 (and top-k list) is identical."""
    pairs = sorted(set(a.pairs) & set(b.pairs))
    top1 = sum(a.pairs[p][0][0] == b.pairs[p][0][0] for p in pairs)
    topk = sum([c for c, _ in a.pairs[p][:k]] == [c for c, _ in b.pairs[p][:k]] for p in pairs)
    overlap = sum(
        len({c for c, _ in a.pairs[p][:k]} & {c for c, _ in b.pairs[p][:k]}) / k for p in pairs
    )
    n = max(len(pairs), 1)
    return {
        "pairs": len(pairs),
        "top1_identical": top1 / n,
        f"top{k}_list_identical": topk / n,
        f"top{k}_overlap": overlap / n,
    }


def model_replay(
    cfg: Config, dataset: str, name: str, start: dt.date, end: dt.date, strategies: list[str]
) -> tuple[dict, dict, str]:
    """(replay result, per-strategy per-day timeline, work root) of a replay of the model's own
    tables (`infer.llm_weight=1`, what the paper compares) in the dataset's shared work root."""
    c = with_overrides(
        cfg,
        report=f"exp-{dataset}-{name}",
        pipeline__work_root=work_root(cfg, dataset),
        infer__llm_weight=1.0,
    )
    rep = replay(c, start, end, strategies)
    timeline = json.loads(open_text(join(rep["report"], "timeline.json")))["hit_rates"]
    return rep, timeline, c.pipeline.work_root


def exp_identical(cfg: Config, dataset: str) -> dict:
    start, _ = window(cfg)
    strategies = ["base", "rag", "ft_once", "hybrid"]
    rep, timeline, work = model_replay(cfg, dataset, "identical", start, start + DAY, strategies)
    version = {s: next(iter(v.values()))["version"] for s, v in timeline.items() if v}
    tables = {s: Lookup.load(work, v) for s, v in version.items()}
    out = {"day": start.isoformat(), "versions": version}
    if "base" in tables and "rag" in tables:
        out["base_vs_rag"] = same_answers(tables["base"], tables["rag"], 5)
    if "ft_once" in tables and "hybrid" in tables:
        out["ft_vs_hybrid"] = same_answers(tables["ft_once"], tables["hybrid"], 5)
    write_json(join(rep["report"], "identical.json"), out)
    return out


def exp_retrieval(cfg: Config, dataset: str) -> dict:
    start, end = window(cfg)
    strategies = [s for s in ("rag", "hybrid") if s in cfg.pipeline.strategies]
    if not strategies:
        raise SystemExit("retrieval: pipeline.strategies names neither rag nor hybrid")
    out = {}
    for variant in ("frequency", "trend", "global"):
        # what the variant in the prompt does to the model's own answers
        c = with_overrides(cfg, prompt__rag_variant=variant)
        rep, _, _ = model_replay(c, dataset, f"retrieval-{variant}", start, end, strategies)
        out[variant] = rep["metrics"]
    write_json(join(report_dir(cfg.root, f"exp-{dataset}-retrieval"), "metrics.json"), out)
    return out


def exp_refresh(cfg: Config, dataset: str) -> dict:
    start, end = window(cfg)
    out = {}
    for label, every in (("every_2_days", 2), ("fixed_day_1", 10_000)):
        # fresh prompts alone, not fresh counts mixed into the table
        c = with_overrides(cfg, pipeline__rag_every_days=every)
        rep, _, _ = model_replay(c, dataset, f"refresh-{label}", start, end, ["hybrid"])
        out[label] = rep["metrics"]["hybrid"]
    write_json(join(report_dir(cfg.root, f"exp-{dataset}-refresh"), "metrics.json"), out)
    return out


def exp_compare(cfg: Config, dataset: str) -> dict:
    start, end = window(cfg)
    c = with_overrides(
        cfg, report=f"exp-{dataset}-compare", pipeline__work_root=work_root(cfg, dataset)
    )
    return replay(c, start, end, list(cfg.pipeline.strategies))["metrics"]


BLEND_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def blended(llm: Lookup, freq: Lookup, weights, k: int = 10) -> dict[float, Lookup]:
    """{weight: the table common.blend makes of the two} for every pair either answers (a pair
    missing from one table takes that table's backoff answer, as Serve would give it). Both
    tables' answers are looked up once for all the weights."""
    answers = {
        key: (llm.answer(*key, k)[1], freq.answer(*key, k)[1])
        for key in sorted(set(llm.pairs) | set(freq.pairs))
    }
    out = {}
    for w in weights:
        pairs = {key: tuple(blend_rows(a, b, w, k)) for key, (a, b) in answers.items()}
        sources = dict.fromkeys(pairs, "blend")
        out[w] = Lookup(f"blend-{w}", pairs, sources, freq.backoff, freq.catalog)
    return out


def exp_blend(cfg: Config, dataset: str) -> dict:
    start, end = window(cfg)
    rep, timeline, work = model_replay(cfg, dataset, "blend", start, end, ["frequency", "hybrid"])
    sums = {w: {f"hit_rate@{k}": 0.0 for k in (1, 5, 10)} for w in BLEND_WEIGHTS}
    n_events, loaded = 0, {}
    for day, freq_row in sorted(timeline["frequency"].items()):
        llm_row = timeline["hybrid"].get(day)
        if not llm_row or not freq_row["n_events"]:
            continue
        versions = (llm_row["version"], freq_row["version"])
        for v in versions:
            if v not in loaded:
                loaded[v] = Lookup.load(work, v)
        d = dt.date.fromisoformat(day)
        events = read_transitions(cfg.root, d, d + DAY)
        tables = blended(*(loaded[v] for v in versions), BLEND_WEIGHTS)
        for w, table in tables.items():
            rates = hit_rates(table, events)
            for key in sums[w]:
                sums[w][key] += rates[key] * rates["n_events"]
        n_events += freq_row["n_events"]
    out = {
        "n_events": n_events,
        "hit_rates": {
            str(w): {key: v / max(n_events, 1) for key, v in r.items()} for w, r in sums.items()
        },
    }
    write_json(join(rep["report"], "blend.json"), out)
    return out


def open_text(uri: str) -> str:
    from common.storage import read_text

    return read_text(uri)


EXPERIMENTS = {
    "drift": exp_drift,
    "tables": exp_tables,
    "schedule": exp_schedule,
    "identical": exp_identical,
    "retrieval": exp_retrieval,
    "refresh": exp_refresh,
    "compare": exp_compare,
    "blend": exp_blend,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.experiments",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset")
    parser.add_argument("experiment", choices=[*EXPERIMENTS, "all"])
    parser.add_argument("--config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    setup_logging()
    cfg = config_from_args(args)
    names = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    for name in names:
        result = EXPERIMENTS[name](cfg, args.dataset)
        print(
            json.dumps(
                {"dataset": args.dataset, "experiment": name, "result": result}, default=str
            ),
            flush=True,
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
