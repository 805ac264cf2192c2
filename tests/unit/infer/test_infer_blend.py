"""common.blend.blend_tables: an LLM table mixed with the frequency table, worked by hand."""

from __future__ import annotations

import math

import pytest
from helpers_infer import table

from common.blend import blend_tables

LLM = table(
    [
        (0, 1, 1, 2, 0.6, "llm"),
        (0, 1, 2, 3, 0.3, "llm"),
        (0, 1, 3, 0, 0.1, "backoff"),  # fill_table's padding of a short LLM answer
        (1, 0, 1, 3, 0.4, "llm"),
        (1, 0, 2, 2, 0.4, "llm"),  # a tie, ordered otherwise than by frequency
        (1, 0, 3, 1, 0.1, "llm"),
    ]
)
FREQ = table(
    [
        (0, 1, 1, 3, 0.8, "frequency"),
        (0, 1, 2, 0, 0.1, "frequency"),
        (0, 1, 3, 2, 0.05, "backoff"),
        (1, 0, 1, 2, 0.9, "frequency"),
        (1, 0, 2, 3, 0.1, "frequency"),
    ]
)


def rows(t):
    t = t.sort_by([("c1", "ascending"), ("c2", "ascending"), ("rank", "ascending")])
    return [
        (a, b, r, c, src)
        for a, b, r, c, src in zip(
            *(t[n].to_pylist() for n in ("c1", "c2", "rank", "c3", "source")), strict=True
        )
    ]


def test_weight_zero_is_the_frequency_table_and_one_the_llm_table():
    assert rows(blend_tables(LLM, FREQ, 0.0, 3)) == rows(FREQ.slice(0, 3)) + [
        (1, 0, 1, 2, "frequency"),
        (1, 0, 2, 3, "frequency"),
        (1, 0, 3, 1, "llm"),  # frequency listed two; the third is the LLM's
    ]
    assert rows(blend_tables(LLM, FREQ, 1.0, 3)) == rows(LLM)  # ties too


def test_half_weight_ranks_by_geometric_mean_and_keeps_sources():
    # (0, 1): 2: sqrt(0.6 * 0.05) = 0.173, 3: sqrt(0.3 * 0.8) = 0.490, 0: sqrt(0.1 * 0.1) = 0.1
    out = blend_tables(LLM, FREQ, 0.5, 3)
    assert rows(out)[:3] == [
        (0, 1, 1, 3, "llm"),
        (0, 1, 2, 2, "llm"),
        (0, 1, 3, 0, "backoff"),
    ]
    assert out["score"].to_pylist()[:3] == pytest.approx(
        [math.sqrt(0.24), math.sqrt(0.03), 0.1], rel=1e-6
    )
    # (1, 0): 1 is missing from frequency's list: half its lowest score, sqrt(0.1 * 0.05)
    assert rows(out)[3:] == [(1, 0, 1, 2, "llm"), (1, 0, 2, 3, "llm"), (1, 0, 3, 1, "llm")]
    assert out["score"].to_pylist()[5] == pytest.approx(math.sqrt(0.1 * 0.05), rel=1e-6)
