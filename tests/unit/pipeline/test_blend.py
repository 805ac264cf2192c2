"""bench.experiments.blended: LLM and frequency tables mixed in log space, worked by hand."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from bench.experiments import blended
from common import publish, schemas
from common.catalog import Catalog
from common.lookup import Lookup

CAT = Catalog(tuple(range(6)), tuple(f"c{i}" for i in range(6)), ("",) * 6)


def lookup(rows, back, source):
    table = pa.Table.from_pylist(
        [dict(c1=a, c2=b, rank=r, c3=c, score=s, source=source) for a, b, r, c, s in rows],
        schema=schemas.TABLE,
    )
    backoff = pa.Table.from_pylist(
        [dict(c2=b, rank=r, c3=c, score=s) for b, r, c, s in back], schema=publish.BACKOFF
    )
    return Lookup.from_tables(source, table, backoff, CAT)


FREQ = lookup(
    [(0, 1, 1, 2, 0.5), (0, 1, 2, 3, 0.3), (0, 1, 3, 4, 0.2)],
    [(0, 1, 1, 0.6), (0, 2, 3, 0.4)],
    "frequency",
)
LLM = lookup(
    [(0, 1, 1, 4, 0.6), (0, 1, 2, 5, 0.3), (0, 1, 3, 2, 0.1), (1, 0, 1, 5, 0.9)],
    [],
    "llm",
)


def answer(table, c1, c2):
    return [c for c, _ in table.answer(c1, c2, 10)[1]]


def mix(weight):
    return blended(LLM, FREQ, [weight])[weight]


def test_the_end_weights_are_the_two_tables():
    assert answer(mix(0.0), 0, 1) == [2, 3, 4, 5]  # 5: half frequency's lowest
    assert answer(mix(1.0), 0, 1) == [4, 5, 2, 3]  # 3: half the LLM's lowest


def test_half_weight_ranks_by_the_product_of_the_scores():
    # products: 2: 0.5 * 0.1, 3: 0.3 * 0.05 (LLM floor), 4: 0.2 * 0.6, 5: 0.1 (floor) * 0.3
    got = mix(0.5).pairs[(0, 1)]
    assert [c for c, _ in got] == [4, 2, 5, 3]
    assert got[0][1] == pytest.approx(math.sqrt(0.2 * 0.6))  # the geometric mean


def test_one_lookup_per_weight_from_the_same_answers():
    tables = blended(LLM, FREQ, [0.0, 0.5, 1.0])
    assert list(tables) == [0.0, 0.5, 1.0]
    assert [answer(t, 0, 1) for t in tables.values()] == [answer(mix(w), 0, 1) for w in tables]


def test_a_pair_only_one_table_has_takes_the_others_backoff():
    # (1, 0): the LLM says 5; frequency backs off to c2 = 0's successors, skipping c1 = 1: [3].
    assert answer(mix(0.0), 1, 0) == [3, 5]
    assert answer(mix(1.0), 1, 0) == [5, 3]
