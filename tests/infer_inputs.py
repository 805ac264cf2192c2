"""Tiny inputs for jobs.infer, written straight in the storage contract (no simulate/aggregate),
and the model's own ranking outside Ray that the LLM tables are checked against (here, not in
tests/integration/infer/, so the e2e `ray job submit` tests share them).

Eight clusters whose names the tiny test tokenizer knows, and 16 days of daily transition counts
(docs/contracts.md "Transitions": `stats/transitions/day=YYYY-MM-DD/*.parquet`) in which each pair
(c1, c2) prefers successors (c1 + c2 + j) mod 8, j = 1, 2, 3, ..., with falling counts, so the
frequency ranking of every pair is known and the held-out days are predictable.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from common import schemas, storage
from common.config import load_config
from common.tables_io import read_table, write_parquet
from common.transitions import day_dir

NAMES = ["jazz", "rock", "books", "coffee", "chess", "yoga", "hiking", "tea"]
IDS = [10 + 3 * i for i in range(len(NAMES))]  # not 0..n-1: ids and catalog positions differ
FIRST_DAY = dt.date(2026, 3, 1)
N_DAYS = 16
AS_OF = FIRST_DAY + dt.timedelta(days=N_DAYS)  # 2026-03-17: window [03-03, 03-17) with W = 14


def daily_counts(day_index: int) -> pa.Table:
    """One day's counts: per ordered pair, successors in a fixed preference order plus noise."""
    rng = np.random.default_rng(day_index)
    n = len(IDS)
    rows = []
    for a in range(n):
        for b in range(n):
            if a == b:
                continue
            prefs = [j for j in ((a + b + s) % n for s in range(1, n + 2)) if j not in (a, b)]
            for rank, j in enumerate(dict.fromkeys(prefs)):
                count = max(0, 9 - 3 * rank + int(rng.integers(0, 2)))
                if count:
                    rows.append((IDS[a], IDS[b], IDS[j], count))
    c1, c2, c3, cnt = zip(*rows, strict=True)
    day = FIRST_DAY + dt.timedelta(days=day_index)
    return pa.table(
        {
            "day": pa.array([day] * len(rows), pa.date32()),
            "c1": pa.array(c1, pa.int32()),
            "c2": pa.array(c2, pa.int32()),
            "c3": pa.array(c3, pa.int32()),
            "count": pa.array(cnt, pa.int64()),
        },
        schema=schemas.TRANSITIONS,
    )


def write_inputs(root: str) -> None:
    clusters = pa.table(
        {
            "cluster_id": pa.array(IDS, pa.int32()),
            "name": pa.array(NAMES, pa.string()),
            "description": pa.array([f"{n} fans" for n in NAMES], pa.string()),
        },
        schema=schemas.CLUSTERS,
    )
    write_parquet(clusters, storage.join(root, "inputs", "clusters.parquet"))
    for i in range(N_DAYS):
        day = FIRST_DAY + dt.timedelta(days=i)
        write_parquet(daily_counts(i), storage.join(day_dir(root, day), "part-0.parquet"))


def cfg_sets(root: str, *overrides: str) -> list[str]:
    """The `--set` values of the job's config for the tiny inputs: small batches, one actor,
    guards on 2 held-out days."""
    return [
        f"root={root}",
        f"as_of={AS_OF}",
        "infer.top_k=5",
        "infer.batch_size=32",
        "infer.pool_size=1",
        "guards.valid_sample=16",
        *overrides,
    ]


def make_cfg(root: str, *overrides: str):
    """The job's config for the tiny inputs (cfg_sets)."""
    return load_config(None, cfg_sets(root, *overrides))


def published_table(root: str, version: str) -> pa.Table:
    """The table.parquet of tables/<version>/."""
    return read_table(storage.join(storage.table_dir(root, version), "table.parquet"))


def manifest(root: str, version: str) -> dict:
    """The manifest.json of tables/<version>/."""
    return storage.read_json(storage.join(storage.table_dir(root, version), "manifest.json"))


def rows_by_pair(table: pa.Table, col: str = "source") -> dict[tuple[int, int], list[tuple]]:
    """{(c1, c2): [(c3, the row's `col`), ...] in rank order}."""
    t = table.sort_by([("c1", "ascending"), ("c2", "ascending"), ("rank", "ascending")])
    out: dict[tuple[int, int], list[tuple]] = {}
    for a, b, c, s in zip(*(t[n].to_pylist() for n in ("c1", "c2", "c3", col)), strict=True):
        out.setdefault((a, b), []).append((c, s))
    return out


REF_PAIRS = (0, 17, 38, 55)  # pairs from both batches of 32 (batch_size), ends included


def model_reference(cfg, model_dir: str, adapter: str | None, snapshot: dict | None) -> dict:
    """{pair: (top-5 c3s, their probabilities)} for the REF_PAIRS, from the scorer outside Ray:
    the prompts jobs.infer renders (with the RAG line when given a snapshot), the model in
    float32 with the adapter merged as the job's loader merges it."""
    from common.catalog import load_catalog
    from common.model import load_model, load_tokenizer
    from common.scoring import PrefixScorer
    from jobs import infer

    catalog = load_catalog(cfg.inputs.clusters)
    tok = load_tokenizer(model_dir)
    pairs = [(a, b) for a in IDS for b in IDS if a != b]
    texts = infer.prompt_texts(cfg, tok, catalog, pairs, snapshot)
    assert all(("Recent next:" in texts[i]) == (snapshot is not None) for i in REF_PAIRS)
    prefix = infer.common_prefix(texts)
    model = load_model(model_dir, "float32", adapter=adapter)
    if adapter:
        model = model.merge_and_unload()
    scorer = PrefixScorer(model, tok, list(catalog.names), prefix)
    out = {}
    for i in REF_PAIRS:
        (a, b), text = pairs[i], texts[i]
        idx, logp = scorer.top_k(
            [text[len(prefix) :]], [[catalog.position(a), catalog.position(b)]], 5
        )
        out[(a, b)] = ([catalog.ids[j] for j in idx[0].tolist()], logp[0].exp().tolist())
    return out


def assert_rows_are(got: dict, ref: dict) -> None:
    """Published rows (rows_by_pair with "score") hold the reference's clusters in its rank
    order, with its probabilities."""
    for pair, (c3s, probs) in ref.items():
        assert [c for c, _ in got[pair]] == c3s, pair
        assert [p for _, p in got[pair]] == pytest.approx(probs, rel=1e-4), pair


def differs(a: dict, b: dict) -> bool:
    """Two references name other clusters, or other probabilities, for some pair."""
    return any(a[p][0] != b[p][0] or a[p][1] != pytest.approx(b[p][1], rel=1e-3) for p in a)
