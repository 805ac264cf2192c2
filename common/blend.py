"""An LLM table's answers mixed with the retrieved counts' (`infer.llm_weight`).

The fine-tuned model knows which clusters go together across pairs; the counts know this pair's
last days. A table row ranks the union of both answer lists by
    llm_weight * log(LLM score) + (1 - llm_weight) * log(frequency score),
i.e. a weighted geometric mean of the two probabilities. A candidate missing from one list gets
half of that list's lowest score. llm_weight 1 is the LLM's table, 0 the frequency table.
Used by jobs.infer (RAG strategies) and bench.experiments `blend`.
"""

from __future__ import annotations

import math

import pyarrow as pa

from common import schemas
from common.lookup import rows_by_key

Rows = list[tuple[int, float]]


def blend_rows(llm: Rows, freq: Rows, llm_weight: float, k: int) -> Rows:
    """The first k of both lists' candidates by the mixed score, as (c3, exp(mixed log score)).

    Ties (bf16 scores tie often) keep the order of the list with the larger weight, frequency's
    at 0.5: weight 0 gives `freq` and weight 1 gives `llm` exactly."""
    lists = [dict(freq), dict(llm)]
    first, second = (llm, freq) if llm_weight > 0.5 else (freq, llm)
    cands = list(dict.fromkeys([c for c, _ in first] + [c for c, _ in second]))
    mixed = dict.fromkeys(cands, 0.0)
    for scores, weight in zip(lists, (1 - llm_weight, llm_weight), strict=True):
        if weight == 0:
            continue
        floor = min(scores.values(), default=1.0) / 2
        for c in cands:
            mixed[c] += weight * math.log(max(scores.get(c, floor), 1e-30))
    order = sorted(cands, key=lambda c: -mixed[c])  # stable: ties keep the candidates' order
    return [(c, math.exp(mixed[c])) for c in order[:k]]


def blend_tables(llm: pa.Table, freq: pa.Table, llm_weight: float, k: int) -> pa.Table:
    """schemas.TABLE of `blend_rows` for every pair of `llm` (both tables filled to k over the
    same pairs by jobs.infer.fill_table). A row's source is the LLM row's when the LLM listed
    that cluster, else the frequency row's (`frequency` or `backoff`); at weight 0 the other
    way round."""
    with_source = ("c3", "score", "source")
    f_rows = rows_by_key(freq, ["c1", "c2"], with_source)
    cols: dict[str, list] = {n: [] for n in schemas.TABLE.names}
    for (c1, c2), l_rows in rows_by_key(llm, ["c1", "c2"], with_source).items():
        fr = f_rows.get((c1, c2), [])
        first, last = (l_rows, fr) if llm_weight == 0 else (fr, l_rows)  # the last one wins
        source = {c: s for c, _, s in first} | {c: s for c, _, s in last}
        mixed = blend_rows([r[:2] for r in l_rows], [r[:2] for r in fr], llm_weight, k)
        for rank, (c3, score) in enumerate(mixed, start=1):
            for name, v in zip(
                schemas.TABLE.names, (c1, c2, rank, c3, score, source[c3]), strict=True
            ):
                cols[name].append(v)
    return pa.table(
        {n: pa.array(v, schemas.TABLE.field(n).type) for n, v in cols.items()}, schema=schemas.TABLE
    )
