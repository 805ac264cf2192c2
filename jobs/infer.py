"""Bulk inference for day d: the top-k answer of every cluster pair, guards, atomic publish.

docs/contracts.md "Published table" and "Guards"; issue 4. Strategies: `frequency` (the retrieval
snapshot's ranking, no model), `base` (base model, no RAG), `rag` (base + RAG prompts), `ft`
(adapter, no RAG), `hybrid` (adapter + RAG). LLM strategies run one Ray Data `map_batches` pass
over the prompt rows with `PairScorer` (model loaded once per actor, shared-prefix KV cache, see
common/scoring.py). The same pass carries the guard rows: the held-out ("shadow") prompts built
as of d - h and a free-generation sample for the valid rate (common/guards.py says why).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import sys
import time
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common import guards, publish, schemas, storage
from common.blend import blend_tables
from common.catalog import Catalog, load_catalog
from common.cli import InputError, job_parser, run_main
from common.config import Config, InferConfig
from common.evaluation import hit_rates
from common.lookup import GLOBAL, Lookup, known_mask, padded_rows, rows_by_key
from common.model import ModelError, adapter_as_of, adapter_meta
from common.prompts import common_prefix
from common.retrieval import build_snapshot, rag_for, read_snapshot, retrieved_lists
from common.tables_io import read_table
from common.threads import cpu_cores, node_resources, threads_for
from common.transitions import list_days, read_transitions, top_pairs

log = logging.getLogger(__name__)
DAY = dt.timedelta(days=1)
LLM_STRATEGIES = ("base", "rag", "ft", "hybrid")
Answers = dict[tuple[int, int], Sequence[tuple[int, float]]]  # (c3, score) in rank order


# ---------------------------------------------------------------- pure functions
def build_day(cfg: Config) -> dt.date:
    """The day d the table is for: cfg.as_of, else the last day with counts + 1."""
    if cfg.as_of is not None:
        return cfg.as_of
    days = list_days(cfg.root)
    if not days:
        raise InputError(f"no transition counts under {cfg.root}: run jobs.aggregate first")
    return days[-1] + DAY


def uses_rag(strategy: str) -> bool:
    return strategy in ("rag", "hybrid")


def served_llm_weight(infer: InferConfig) -> float:
    """The weight of the model's scores in the table this strategy publishes: infer.llm_weight
    for a RAG strategy (mixed with the retrieved counts), 1 (the model alone) otherwise."""
    return infer.llm_weight if uses_rag(infer.strategy) else 1.0


def uses_adapter(strategy: str) -> bool:
    return strategy in ("ft", "hybrid")


def all_pairs(catalog: Catalog, freq: pa.Table, min_support: int) -> list[tuple[int, int]]:
    """Every ordered pair c1 != c2, or only those seen at least min_support times in the window."""
    if min_support <= 0:
        return [(a, b) for a in catalog.ids for b in catalog.ids if a != b]
    seen = freq.filter(pc.greater_equal(freq["support"], min_support))
    pairs = set(zip(seen["c1"].to_pylist(), seen["c2"].to_pylist(), strict=True))
    return sorted(p for p in pairs if p[0] in catalog and p[1] in catalog and p[0] != p[1])


def fill_table(
    pairs: list[tuple[int, int]],
    answers: Answers,
    source: str,
    backoff: pa.Table,
    catalog: Catalog,
    k: int,
) -> pa.Table:
    """schemas.TABLE rows: each pair's answers (invalid, repeated, c1/c2 dropped) then padding to
    k from the backoff of c2 and the global top (source "backoff", score capped by the row's last
    score so scores never rise down a row)."""
    back = rows_by_key(backoff, ["c2"])
    glob = back.get((GLOBAL,), [])
    cols: dict[str, list] = {n: [] for n in schemas.TABLE.names}
    for c1, c2 in pairs:
        lists = (
            (answers.get((c1, c2), []), source),
            (back.get((c2,), []), "backoff"),
            (glob, "backoff"),
        )
        for rank, (c3, score, src) in enumerate(padded_rows(lists, (c1, c2), k, catalog), start=1):
            for name, v in zip(schemas.TABLE.names, (c1, c2, rank, c3, score, src), strict=True):
                cols[name].append(v)
    return pa.table(
        {n: pa.array(v, schemas.TABLE.field(n).type) for n, v in cols.items()}, schema=schemas.TABLE
    )


def answer_table(
    cfg: Config,
    pairs: list[tuple[int, int]],
    answers: Answers,
    source: str,
    snap: dict,
    backoff: pa.Table,
    catalog: Catalog,
) -> pa.Table:
    """fill_table, mixed with the frequency table (common/blend.py) for a RAG strategy with
    infer.llm_weight < 1: the counts it mixes in are the retrieved ones it may see."""
    k = cfg.infer.top_k
    table = fill_table(pairs, answers, source, backoff, catalog, k)
    weight = served_llm_weight(cfg.infer)
    if source != "llm" or weight >= 1:
        return table
    freq = fill_table(pairs, rows_by_key(snap["frequency"]), "frequency", backoff, catalog, k)
    return blend_tables(table, freq, weight, k)


def only_pairs(events: pa.Table, pairs: list[tuple[int, int]]) -> pa.Table:
    """The events of the given pairs."""
    keys = pc.add(
        pc.multiply(pc.cast(events["c1"], pa.int64()), 1 << 32), pc.cast(events["c2"], pa.int64())
    )
    wanted = pa.array([(a << 32) + b for a, b in pairs], pa.int64())
    return events.filter(pc.is_in(keys, value_set=wanted))


# ---------------------------------------------------------------- data the job reads
def snapshot_for(cfg: Config, day: dt.date) -> tuple[dict, str]:
    """The retrieval snapshot for day (read when stored, else built in memory from the counts)."""
    W = cfg.retrieval.window_days
    try:
        return read_snapshot(cfg.root, day, W), "stored"
    except FileNotFoundError:  # none stored, incomplete or of an older ranking: built here
        pass
    window = read_transitions(cfg.root, day - W * DAY, day)
    return build_snapshot(window, day, W, cfg.retrieval.top_n), "built"


def item_inputs(cfg: Config, day: dt.date) -> tuple[pa.Table | None, pa.Table | None]:
    """(items, top items of the window) for item grounding; None where the input is missing."""
    items = read_table(cfg.inputs.items) if storage.exists(cfg.inputs.items) else None
    base = storage.join(cfg.root, "stats", "items")
    start = day - cfg.retrieval.window_days * DAY
    parts = [
        read_table(storage.join(base, name))
        for name in storage.list_dirs(base)
        if name.startswith("day=") and start <= dt.date.fromisoformat(name[4:]) < day
    ]
    counts = (
        pa.concat_tables(
            [
                p.select(["cluster_id", "item_id", "count"]).cast(
                    pa.schema(
                        [
                            ("cluster_id", pa.int32()),
                            ("item_id", pa.string()),
                            ("count", pa.int64()),
                        ]
                    )
                )
                for p in parts
            ]
        )
        if parts
        else None
    )
    return items, (publish.build_top_items(counts) if counts is not None else None)


def adapter_path(cfg: Config, day: dt.date) -> str | None:
    """The adapter of ft/hybrid for the table of `day`: cfg.infer.adapter, else the one
    `adapters/LATEST` names, else (a backfill, where LATEST learned from days the table is for)
    the newest adapter fine-tuned as of `day` or before: what LATEST named on that day."""
    if not uses_adapter(cfg.infer.strategy):
        return None
    if cfg.infer.adapter:
        return cfg.infer.adapter
    adapters = storage.adapters_dir(cfg.root)
    latest = storage.join(adapters, "LATEST")
    if not storage.exists(latest):
        raise InputError(
            f"strategy {cfg.infer.strategy} needs an adapter: none under {latest} "
            "(run jobs.finetune or set infer.adapter)"
        )
    name = storage.read_text(latest).strip()
    path = name if "/" in name else storage.join(adapters, name)
    as_of = adapter_as_of(path)
    if as_of is None or as_of <= day:
        return path
    metas = {v: adapter_meta(storage.join(adapters, v)) for v in storage.list_dirs(adapters)}
    older = sorted(
        (m["as_of"], m.get("created_at", ""), v)
        for v, m in metas.items()
        if m.get("as_of") and dt.date.fromisoformat(m["as_of"]) <= day
    )
    if not older:
        raise InputError(
            f"no adapter under {adapters} was fine-tuned as of {day} or before (LATEST, {name}, "
            f"as of {as_of}, learned from days the table of {day} would serve): run jobs.finetune "
            f"with as_of={day} or earlier, or set infer.adapter"
        )
    chosen = older[-1][-1]
    log.info("table of %s: adapter %s (LATEST, %s, is as of %s)", day, chosen, name, as_of)
    return storage.join(adapters, chosen)


def check_adapter_day(adapter: str | None, day: dt.date) -> dt.date | None:
    """The adapter's as_of, which must not be after `day`: a table of day d serves days >= d,
    and an adapter fine-tuned as of a later day learned from them (jobs.evaluate would score it
    on its own training data)."""
    as_of = adapter_as_of(adapter) if adapter else None
    if as_of is not None and as_of > day:
        raise InputError(
            f"adapter {adapter} was fine-tuned as of {as_of}, on days the table of {day} would "
            f"serve: set infer.adapter to one fine-tuned as of {day} or before"
        )
    return as_of


def check_adapter_prompts(cfg: Config, adapter: str | None) -> None:
    """Serve an adapter only on the prompts it was trained on: a RAG strategy renders
    prompt.rag_variant's top prompt.rag_top successors, so those must be what the fine-tune's
    RAG prompts named (its meta.json "prompt"); an adapter trained without RAG would meet RAG
    lines it never saw. A different base model than the one it was trained on is a warning (the
    same model can be named two ways)."""
    if adapter is None:
        return
    from common.model import read_adapter_meta

    try:
        meta = read_adapter_meta(adapter)
    except (FileNotFoundError, ValueError):
        log.warning("adapter %s has no meta.json: its prompt settings cannot be checked", adapter)
        return
    trained = meta.get("prompt") or {}
    if meta.get("base_model") and meta["base_model"] != cfg.model.name_or_path:
        log.warning(
            "adapter %s was trained on base model %s; this run loads %s",
            adapter,
            meta["base_model"],
            cfg.model.name_or_path,
        )
    if not trained or not uses_rag(cfg.infer.strategy):
        return
    now = {**cfg.prompt.model_dump(mode="json"), "rag": True}  # a RAG strategy renders RAG
    keys = [k for k in ("rag", "rag_top", "rag_variant") if k in trained and trained[k] != now[k]]
    if keys:
        was = ", ".join(f"prompt.{k}={trained[k]}" for k in keys)
        serves = ", ".join(f"prompt.{k}={now[k]}" for k in keys)
        raise InputError(
            f"adapter {adapter} was trained with {was}, but infer.strategy={cfg.infer.strategy} "
            f"would serve it prompts with {serves}: set the same prompt settings, or fine-tune "
            "again with these"
        )


# ---------------------------------------------------------------- the Ray Data callable
class PairScorer:
    """Ray Data callable: loads the model (+ adapter) and the prefix cache once per actor, then
    maps batches of prompt rows to ranked cluster positions (task "rank") or free text ("free").

    `loader(model_cfg, adapter, device) -> (model, tokenizer)` is an argument so tests and a GPU
    box without Ray can call this class directly. `use_gpu`: the job passes `infer.num_gpus > 0`,
    so an actor runs on the GPU Ray gave it and never on one it was not given; None (outside
    Ray) takes a GPU where torch sees one."""

    def __init__(
        self,
        model_cfg: dict,
        adapter: str | None,
        names: list[str],
        prefix: str,
        mode: str,
        k: int,
        threads: int | None = None,
        actors: int = 1,
        cpus_per_actor: float = 1.0,
        gpus_per_actor: float = 0.0,
        max_new_tokens: int | None = None,
        loader=None,
        measure_ceiling: bool = True,
        env: dict[str, str] | None = None,
        use_gpu: bool | None = None,
    ):
        import torch

        from common.model import matmul_ceiling, pick_device
        from common.scoring import PrefixScorer

        for key, value in (env or {}).items():  # the driver's S3 settings; the worker's own win
            os.environ.setdefault(key, value)
        # Sized here, on the actor's node (a cluster's driver runs on a smaller head node).
        torch.set_num_threads(
            threads
            or threads_for(actors, cpus_per_actor, gpus_per_actor, node_resources(), cpu_cores())
        )
        self.threads = torch.get_num_threads()
        device = pick_device(use_gpu)
        model, tokenizer = (loader or load_model_and_tokenizer)(model_cfg, adapter, device)
        self.scorer = PrefixScorer(model, tokenizer, names, prefix)
        self.device = str(self.scorer.device)
        self.mode, self.k, self.max_new_tokens = mode, k, max_new_tokens
        dtype = next(model.parameters()).dtype
        self.ceiling = matmul_ceiling(dtype, self.scorer.device, n=2048) if measure_ceiling else 0.0

    def __call__(self, batch: dict) -> dict:
        t0 = time.perf_counter()
        f0 = self.scorer.flops
        n = len(batch["order"])
        idx = np.full((n, self.k), -1, dtype=np.int64)
        logp = np.full((n, self.k), -np.inf, dtype=np.float32)
        text = np.array([""] * n, dtype=object)
        tasks = np.asarray(batch["task"])
        suffixes = [str(s) for s in batch["suffix"]]
        exclude = [[int(a), int(b)] for a, b in zip(batch["x1"], batch["x2"], strict=True)]
        rank_rows = np.flatnonzero(tasks == "rank")
        if len(rank_rows):
            sub_s = [suffixes[i] for i in rank_rows]
            sub_x = [exclude[i] for i in rank_rows]
            fn = self.scorer.constrained if self.mode == "constrained" else self.scorer.top_k
            top, val = fn(sub_s, sub_x, self.k)
            idx[rank_rows, : top.shape[1]] = top.numpy()
            logp[rank_rows, : val.shape[1]] = val.numpy()
        free_rows = np.flatnonzero(tasks == "free")
        if len(free_rows):
            out = self.scorer.generate([suffixes[i] for i in free_rows], self.max_new_tokens)
            text[free_rows] = out
        busy = time.perf_counter() - t0
        return {
            "order": np.asarray(batch["order"]),
            "idx": idx,
            "logp": logp,
            "text": text,
            "busy_s": np.full(n, busy / n),
            "flops": np.full(n, (self.scorer.flops - f0) / n),
            "ceiling": np.full(n, self.ceiling),
            "device": np.array([self.device] * n, dtype=object),
            "threads": np.full(n, self.threads),
        }


def load_model_and_tokenizer(model_cfg: dict, adapter: str | None, device: str = "cpu"):
    """The default loader: common.model (packaged or HF dir) on `device`, in the dtype
    `model.dtype` picks (bf16 only where matmuls have hardware bf16), adapter merged into the
    weights (one matmul per projection instead of three)."""
    from common.config import ModelConfig
    from common.model import load_model, load_tokenizer, resolve_model

    mcfg = ModelConfig.model_validate(model_cfg)
    model_dir = resolve_model(mcfg)
    model = load_model(model_dir, mcfg.dtype, adapter=adapter, device=device)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model, load_tokenizer(model_dir)


# ---------------------------------------------------------------- prompts and the Ray pass
def prompt_texts(
    cfg: Config, tokenizer, catalog: Catalog, pairs, snapshot: dict | None
) -> list[str]:
    """Rendered chat prompts of the pairs; with a retrieval `snapshot` each names the successors
    of `prompt.rag_variant` the fine-tune's prompts named (common.retrieval.rag_for)."""
    from common import prompts

    lists = None
    if snapshot is not None:
        lists = retrieved_lists(snapshot, cfg.prompt.rag_variant, cfg.prompt.rag_top, catalog)
    top = cfg.prompt.rag_top
    return [
        prompts.render_prompt(
            tokenizer, catalog, c1, c2, rag_for(lists, c1, c2, top) if lists is not None else None
        )
        for c1, c2 in pairs
    ]


def run_llm(
    cfg: Config, catalog: Catalog, rows: list[dict], prefix: str, adapter: str | None
) -> tuple[list[dict], dict]:
    """Score the prompt rows in one Ray Data pass; rows come back in their `order`."""
    import ray

    from common.rayinit import init_ray, warn_if_gpus_missing

    init_ray(cfg)
    inf = cfg.infer
    warn_if_gpus_missing(inf.num_gpus, "infer.num_gpus", "infer.num_gpus=0")
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // inf.batch_size, 16)))
    t0 = time.perf_counter()
    scored = ds.map_batches(
        PairScorer,
        fn_constructor_kwargs={
            "model_cfg": cfg.model.model_dump(),
            "adapter": adapter,
            "names": list(catalog.names),
            "prefix": prefix,
            "mode": inf.mode,
            "k": inf.top_k,
            "threads": inf.threads,
            "actors": inf.pool_size,
            "cpus_per_actor": inf.cpus_per_actor,
            "gpus_per_actor": inf.num_gpus,
            "max_new_tokens": inf.max_new_tokens,
            "env": storage_env(),
            "use_gpu": inf.num_gpus > 0,
        },
        batch_size=inf.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=inf.pool_size),
        num_gpus=inf.num_gpus,
        num_cpus=inf.cpus_per_actor,
    )
    try:
        out = scored.take_all()
    except ray.exceptions.RayActorError as e:
        error = actor_model_error(e)
        if error is None:
            raise
        raise error from e
    wall = time.perf_counter() - t0
    # The actors return only what they computed: join it back to each input row by `order`.
    by_order = {r["order"]: r for r in rows}
    out = [{**by_order[int(r["order"])], **r} for r in sorted(out, key=lambda r: r["order"])]
    busy = float(sum(r["busy_s"] for r in out))
    flops = float(sum(r["flops"] for r in out))
    ceiling = float(max(r["ceiling"] for r in out)) if out else 0.0
    perf = {
        "rows": len(out),
        "wall_s": wall,
        "busy_s": busy,
        "model_tflops": flops / 1e12,
        "rows_per_s": len(out) / wall if wall else 0.0,
        "rows_per_busy_s": len(out) / busy if busy else 0.0,
        "achieved_gflops_per_s": flops / busy / 1e9 if busy else 0.0,
        "ceiling_gflops_per_s": ceiling / 1e9,
        # busy_s sums every actor's time in __call__, so flops / busy is one actor's FLOP/s,
        # against the matmul ceiling one actor measured on its own threads.
        "mfu": (flops / busy) / ceiling if busy and ceiling else 0.0,
        "threads_per_actor": int(max(r["threads"] for r in out)) if out else 0,
        "device": ",".join(sorted({str(r["device"]) for r in out})),
    }
    return out, perf


def actor_model_error(e: Exception) -> ModelError | None:
    """Ray reports an actor whose __init__ raised as a RayActorError carrying the traceback as
    text: a ModelError there (no GPU for `infer.num_gpus`, an unloadable model) comes back as a
    ModelError, so the job prints its one clear line instead of a Ray traceback."""
    lines = re.findall(r"common\.model\.ModelError: (.+)", str(e))
    return ModelError(lines[-1]) if lines else None


def storage_env() -> dict[str, str]:
    """The driver's S3 endpoint and credential variables, for actors that read an s3:// adapter
    (a worker started before they were set, or on another node, would not see them)."""
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}


def rows_to_answers(rows: list[dict], catalog: Catalog) -> Answers:
    """Ranked rows -> {(c1, c2): [(c3, probability), ...]}."""
    out: Answers = {}
    for r in rows:
        out[(r["c1"], r["c2"])] = [
            (catalog.ids[int(i)], float(np.exp(lp)))
            for i, lp in zip(r["idx"], r["logp"], strict=True)
            if i >= 0
        ]
    return out


def free_to_answers(rows: list[dict], catalog: Catalog) -> tuple[Answers, int]:
    """Free-generation rows -> ({pair: [(matched c3, 1.0)]}, how many named a real cluster).
    Names match in the one-line, trimmed form prompts and answers use (prompts.name_text)."""
    from common.prompts import clean, name_text

    index = {name_text(catalog, c): c for c in catalog.ids}
    out: Answers = {}
    valid = 0
    for r in rows:
        c3 = index.get(clean(r["text"]))
        if c3 is not None:
            valid += 1
            out[(r["c1"], r["c2"])] = [(c3, 1.0)]
    return out, valid


# ---------------------------------------------------------------- the job
def _pair_rows(
    catalog: Catalog, pairs, texts, prefix: str, part: str, task: str, start: int
) -> list[dict]:
    return [
        {
            "order": start + i,
            "part": part,
            "task": task,
            "c1": a,
            "c2": b,
            "x1": catalog.position(a),
            "x2": catalog.position(b),
            "suffix": t[len(prefix) :],
        }
        for i, ((a, b), t) in enumerate(zip(pairs, texts, strict=True))
    ]


def infer_llm(
    cfg: Config, adapter: str | None, catalog: Catalog, pairs, snap, gpairs, shadow_snap
) -> dict:
    """Table answers, shadow answers and free-generation rows of an LLM strategy, one Ray pass."""
    from common.model import load_tokenizer, resolve_model

    inf, g = cfg.infer, cfg.guards
    tokenizer = load_tokenizer(resolve_model(cfg.model))
    rag = uses_rag(inf.strategy)
    texts = prompt_texts(cfg, tokenizer, catalog, pairs, snap if rag else None)
    # Without RAG a pair's prompt does not depend on the day: the table's answers are the shadow's.
    table_set = set(pairs)
    # Sorted by pair: rows of one c1 share their first prompt line (PrefixScorer groups them).
    extra = sorted(p for p in gpairs if rag or p not in table_set)
    shadow_texts = prompt_texts(
        cfg, tokenizer, catalog, extra, shadow_snap if rag and extra else None
    )
    sample: list[int] = []
    if inf.mode != "free" and g.valid_sample:
        rng = np.random.default_rng(0)
        sample = sorted(
            rng.choice(len(pairs), size=min(g.valid_sample, len(pairs)), replace=False).tolist()
        )
    prefix = common_prefix(texts + shadow_texts)
    task = "free" if inf.mode == "free" else "rank"
    rows = _pair_rows(catalog, pairs, texts, prefix, "table", task, 0)
    rows += _pair_rows(catalog, extra, shadow_texts, prefix, "shadow", task, len(rows))
    rows += _pair_rows(
        catalog,
        [pairs[i] for i in sample],
        [texts[i] for i in sample],
        prefix,
        "valid",
        "free",
        len(rows),
    )
    log.info(
        "scoring %d rows (%d table, %d shadow, %d free-generation sample); prefix %d chars",
        len(rows),
        len(pairs),
        len(extra),
        len(sample),
        len(prefix),
    )
    out, perf = run_llm(cfg, catalog, rows, prefix, adapter)
    part = {name: [r for r in out if r["part"] == name] for name in ("table", "shadow", "valid")}
    convert = (
        free_to_answers if inf.mode == "free" else (lambda rs, c: (rows_to_answers(rs, c), len(rs)))
    )
    answers, table_valid = convert(part["table"], catalog)
    shadow, _ = convert(part["shadow"], catalog)
    shadow = {**{p: answers[p] for p in gpairs if p in answers and not rag}, **shadow}
    if inf.mode == "free":
        n_valid, n_free = table_valid, len(part["table"])
    else:
        _, n_valid = free_to_answers(part["valid"], catalog)
        n_free = len(part["valid"])
    # Every row is one pair's prompt; the table's pairs per second also pay for the guard rows.
    perf["pairs_per_s"] = perf["rows_per_s"]
    perf["table_pairs_per_s"] = len(pairs) / perf["wall_s"] if perf["wall_s"] else 0.0
    examples = [(r["c1"], r["c2"], r["text"]) for r in (part["valid"] or part["table"])[:5]]
    return {
        "answers": answers,
        "shadow": shadow,
        "n_valid": n_valid,
        "n_free": n_free,
        "perf": perf,
        "adapter": adapter,
        "prefix_chars": len(prefix),
        "free_examples": examples,
    }


def run(cfg: Config) -> dict:
    t_start = time.perf_counter()
    inf, g = cfg.infer, cfg.guards
    W, k, strategy = cfg.retrieval.window_days, inf.top_k, inf.strategy
    day = build_day(cfg)
    catalog = load_catalog(cfg.inputs.clusters)
    adapter = adapter_path(cfg, day)  # checked before any work
    trained_as_of = check_adapter_day(adapter, day)
    check_adapter_prompts(cfg, adapter)
    snap, snap_how = snapshot_for(cfg, day)
    backoff = publish.build_backoff(
        snap["global"], read_transitions(cfg.root, day - W * DAY, day), catalog, k
    )
    pairs = all_pairs(catalog, snap["frequency"], inf.min_support)
    if not pairs:
        raise InputError(
            f"no cluster pairs with support >= {inf.min_support} in [{day - W * DAY}, {day})"
        )

    log.info(
        "infer %s for %s: %d pairs x top %d, snapshot %s (window %d days)",
        strategy,
        day,
        len(pairs),
        k,
        snap_how,
        W,
    )
    # Guard data: held-out days [d - h, d) and the shadow build as of d - h (see common/guards.py).
    gday = day - g.holdout_days * DAY
    held = read_transitions(cfg.root, gday, day)
    # Only pairs of the catalog get a prompt: counts may name a cluster dropped from it since.
    known = pc.and_(known_mask(held["c1"], catalog), known_mask(held["c2"], catalog))
    gpairs = top_pairs(held.filter(known), g.max_pairs)
    shadow_snap, _ = snapshot_for(cfg, gday)
    shadow_backoff = publish.build_backoff(
        shadow_snap["global"], read_transitions(cfg.root, gday - W * DAY, gday), catalog, k
    )
    t_infer = time.perf_counter()
    llm: dict = {}
    if strategy == "frequency":
        answers, shadow, source = (
            rows_by_key(snap["frequency"]),
            rows_by_key(shadow_snap["frequency"]),
            "frequency",
        )
        valid = guards.check_valid_rate(g, 0, 0, "frequency strategy: no generated answers")
    else:
        llm = infer_llm(cfg, adapter, catalog, pairs, snap, gpairs, shadow_snap)
        answers, shadow, source = llm["answers"], llm["shadow"], "llm"
        note = (
            "free generation on the table's own prompts"
            if inf.mode == "free"
            else f"free generation on a sample of {llm['n_free']} table prompts "
            "(ranked answers are valid by construction)"
        )
        valid = guards.check_valid_rate(g, llm["n_valid"], llm["n_free"], note)
    table = answer_table(cfg, pairs, answers, source, snap, backoff, catalog)
    infer_s = time.perf_counter() - t_infer

    log.info("answers ready in %.1f s; scoring the guards", infer_s)
    t_guard = time.perf_counter()
    held_g = only_pairs(held, gpairs)
    cand = Lookup.from_tables(
        "candidate@holdout",
        answer_table(cfg, gpairs, shadow, source, shadow_snap, shadow_backoff, catalog),
        shadow_backoff,
        catalog,
    )
    cand_metrics = hit_rates(cand, held_g)
    current, pub_asof = publish.served_as_of(cfg.root) or (None, None)
    reg_info: dict = {"published_version": current}
    cand_common = pub_common = None
    if current:
        start = max(gday, pub_asof)
        reg_info.update(published_as_of=str(pub_asof), days=[str(start), str(day)])
        common = held_g.filter(pc.greater_equal(held_g["day"], pa.scalar(start, pa.date32())))
        if common.num_rows:
            cand_common = hit_rates(cand, common)
            pub_common = hit_rates(Lookup.load(cfg.root, current), common)
        else:
            reg_info["skipped"] = "no held-out day after the published table's as_of"
    decision = guards.decide(
        g,
        {
            "valid_rate": valid,
            "hit_rate": guards.check_hit_rate(g, cand_metrics),
            "regression": guards.check_regression(g, cand_common, pub_common, reg_info),
        },
    )
    decision["holdout_days"] = [str(gday), str(day)]
    guard_s = time.perf_counter() - t_guard

    summary = {
        "as_of": str(day),
        "strategy": strategy,
        "mode": inf.mode if strategy != "frequency" else None,
        "n_pairs": len(pairs),
        "n_rows": table.num_rows,
        "snapshot": snap_how,
        "guards": decision,
        "published": False,
        "version": None,
        "current": current,
    }
    if llm:
        summary.update(
            perf=llm["perf"],
            pairs_per_s=llm["perf"]["pairs_per_s"],
            mfu=llm["perf"]["mfu"],
            adapter=llm["adapter"],
            free_examples=llm["free_examples"],
        )
    if decision["passed"] or not g.enforce:
        t_pub = time.perf_counter()
        version = publish.new_version(day, strategy)
        items, top_items = item_inputs(cfg, day)
        # A table for a day before the served one's is written (jobs.evaluate scores it) but
        # never moves CURRENT back: a backfill or a late rerun must not roll back what is served.
        older = pub_asof is not None and day < pub_asof
        (publish.write_version if older else publish.publish_version)(
            cfg.root,
            version,
            table=table,
            backoff=backoff,
            catalog=catalog,
            items=items,
            top_items=top_items,
            manifest={
                "as_of": str(day),
                "window_days": W,
                "strategy": strategy,
                "mode": summary["mode"],
                "top_k": k,
                "min_support": inf.min_support,
                "base_model": cfg.model.name_or_path if strategy != "frequency" else None,
                "adapter": llm.get("adapter"),
                # The adapter learned days before this one (jobs.evaluate's leak check reads it).
                "adapter_as_of": str(trained_as_of) if trained_as_of else None,
                "rag_snapshot_day": str(day)
                if strategy in ("frequency", "rag", "hybrid")
                else None,
                "rag_variant": cfg.prompt.rag_variant if uses_rag(strategy) else None,
                "rag_top": cfg.prompt.rag_top if uses_rag(strategy) else None,
                "llm_weight": inf.llm_weight if uses_rag(strategy) else None,
                "guards": decision,
                "metrics": {"holdout": cand_metrics, "perf": llm.get("perf")},
                # What building this table cost (jobs.evaluate reports it per version).
                "compute_seconds": round(time.perf_counter() - t_start, 3),
            },
        )
        summary.update(
            published=not older,
            version=version,
            current=current if older else version,
            publish_s=time.perf_counter() - t_pub,
        )
        if older:
            summary["reason"] = (
                f"as_of {day} is before the served table's ({current}, as_of {pub_asof}): "
                f"written as tables/{version}/, CURRENT unchanged"
            )
            log.warning("not published: %s", summary["reason"])
        elif decision["override"]:
            log.warning(
                "published %s although guards failed (guards.enforce=false): %s",
                version,
                guards.describe_failures(decision),
            )
    else:
        summary["reason"] = "guard failed: " + guards.describe_failures(decision)
        log.warning("not published, CURRENT stays %s: %s", current, summary["reason"])
    summary["seconds"] = {
        "infer": infer_s,
        "guards": guard_s,
        "total": time.perf_counter() - t_start,
    }
    storage.write_json(
        storage.join(storage.report_dir(cfg.root, cfg.report), f"infer-{day}-{strategy}.json"),
        summary,
    )
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = job_parser(
        "python -m jobs.infer",
        "Bulk inference for day d (as_of; default: the day after the last counted day): the "
        "top-k next clusters of every ordered cluster pair, then guards, then an atomic "
        "publish.\n\n"
        "Strategies (infer.strategy): frequency = the retrieval snapshot's ranking, no model; "
        "base = base model, no RAG; rag = base model + retrieved successors in the prompt; "
        "ft = latest LoRA adapter, no RAG; hybrid = adapter + RAG (default).\n"
        "Modes (infer.mode): verbalizer = one forward scores every cluster name (default); "
        "constrained = beam search over a prefix tree of the names; free = greedy text mapped "
        "back by exact name match.\n"
        "Blend (infer.llm_weight, rag and hybrid): each pair's answers rank by the weighted "
        "geometric mean of the model's score and the retrieved count share (default 0.3; 1 = the "
        "model alone, 0 = the counts alone).\n"
        "Guards (guards.*): valid rate of free generation >= 0.9, hit rate@10 on the last "
        "held-out days >= 0.015, no drop > 10% against the published table; a failure leaves "
        "tables/CURRENT unchanged; --set guards.enforce=false publishes anyway and records the "
        "override in the manifest. A table for a day before the served table's is written but "
        "not published (CURRENT never moves back in time).\n"
        "Speed knobs: infer.batch_size, infer.pool_size (Ray Data actors), infer.threads, "
        "infer.num_gpus. The one-line JSON result holds pairs_per_s and mfu.\n"
        "Exit status: 0 when the table was published; 1 when it was not (a guard failed, or a "
        "day before the served table's), after the JSON line, which says why ('reason'); so "
        "`ray job submit` reports such a run as FAILED.",
        reads="stats/transitions/, retrieval/ (or builds it), inputs.clusters, inputs.items, "
        "stats/items/, the model and adapters/",
        writes="tables/<version>/ and tables/CURRENT (when the guards pass), "
        "reports/<report>/infer-<day>-<strategy>.json",
    )
    summary = run_main(parser, run, argv)
    if not summary["published"]:
        sys.exit(1)  # the summary line is printed; CURRENT did not move to this table
    return summary


if __name__ == "__main__":
    main()
