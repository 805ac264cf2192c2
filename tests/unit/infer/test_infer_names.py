"""Catalog names with stray whitespace (a trailing space, a newline) are rendered, trained,
scored and matched in one form, so free generation can name them back."""

from __future__ import annotations

import numpy as np

from common import prompts
from common.catalog import Catalog
from common.scoring import PrefixScorer
from jobs.infer import free_to_answers

CATALOG = Catalog((1, 2, 3), (" jazz\n", "rock  music ", "books"), ("", "", ""))


def test_names_with_stray_whitespace_render_score_and_match_trimmed(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = prompts.render_prompt(tok, CATALOG, 1, 2, [3])
    assert "Previous: jazz\nCurrent: rock music\nRecent next: books<|im_end|>" in text
    assert prompts.answer_text(CATALOG, 2, tok) == "rock music<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    scorer = PrefixScorer(model, tok, list(CATALOG.names), "<|im_start|>system\n")
    assert scorer.name_tokens == [prompts.answer_ids(tok, CATALOG, c) for c in CATALOG.ids]
    assert scorer.match("jazz") == 0 and scorer.match("rock music") == 1
    rows = [
        {"c1": 2, "c2": 3, "text": "jazz"},
        {"c1": 1, "c2": 3, "text": "rock music"},
        {"c1": 1, "c2": 2, "text": "pop"},
    ]
    answers, valid = free_to_answers(rows, CATALOG)
    assert valid == 2 and answers == {(2, 3): [(1, 1.0)], (1, 3): [(2, 1.0)]}
    assert np.isfinite(scorer.verbalize(["user\nx<|im_end|>\n"], [[2]]).numpy()[0, :2]).all()


def test_names_that_differ_only_in_whitespace_are_refused_at_load():
    import pyarrow as pa
    import pytest

    from common.cli import InputError

    table = pa.table(
        {"cluster_id": pa.array([1, 2], pa.int32()), "name": ["rock music", "rock  music\n"]}
    )
    with pytest.raises(InputError, match="duplicate names"):
        Catalog.from_table(table)
    ok = Catalog.from_table(
        pa.table({"cluster_id": pa.array([1, 2], pa.int32()), "name": ["rock", "rock music"]})
    )
    assert ok.names == ("rock", "rock music")
