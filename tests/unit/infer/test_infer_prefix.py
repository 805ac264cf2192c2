"""The shared prefix and the per-pair suffixes: a run of one pair (all prompts identical) keeps
a suffix, an empty prefix scores like any other, and an empty suffix is refused, not misread."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common import prompts
from common.catalog import Catalog
from common.prompts import common_prefix
from common.scoring import PrefixScorer

NAMES = ["jazz", "rock", "books", "red", "red wine"]
CATALOG = Catalog((1, 2, 3, 4, 5), tuple(NAMES), ("",) * 5)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def reference(model, tok, text: str):
    """top_k, constrained and generate for `text` under the prefix a two-pair run cuts."""
    other = prompts.render_prompt(tok, CATALOG, 3, 2, None)
    prefix = common_prefix([text, other])
    scorer = PrefixScorer(model, tok, NAMES, prefix)
    suffix = [text[len(prefix) :]]
    return (
        scorer.top_k(suffix, [[0, 1]], 3),
        scorer.constrained(suffix, [[0, 1]], 3),
        scorer.generate(suffix, 3),
    )


def assert_scores_like_whole_prompt(scorer, suffix, model, tok, text):
    """top_k, constrained and generate on `suffix` equal the reference on the whole prompt."""
    (ref_idx, ref_val), (ref_bidx, ref_bval), ref_text = reference(model, tok, text)
    idx, val = scorer.top_k([suffix], [[0, 1]], 3)
    assert torch.equal(idx, ref_idx)
    np.testing.assert_allclose(val, ref_val, atol=1e-5)
    bidx, bval = scorer.constrained([suffix], [[0, 1]], 3)
    assert torch.equal(bidx, ref_bidx)
    np.testing.assert_allclose(bval, ref_bval, atol=1e-5)
    assert scorer.generate([suffix], 3) == ref_text


@pytest.mark.parametrize("copies", [1, 3])
def test_identical_prompts_keep_a_suffix_and_score_as_usual(tiny, copies):
    model, tok = tiny
    text = prompts.render_prompt(tok, CATALOG, 1, 2, None)
    prefix = common_prefix([text] * copies)
    suffix = text[len(prefix) :]
    assert suffix and prefix.endswith("\n")
    # A clean token boundary, as between any prefix and suffix.
    whole = prompts.prompt_ids(tok, text)
    assert prompts.prompt_ids(tok, prefix) + prompts.prompt_ids(tok, suffix) == whole
    assert_scores_like_whole_prompt(
        PrefixScorer(model, tok, NAMES, prefix), suffix, model, tok, text
    )


def test_common_prefix_never_swallows_a_prompt_that_prefixes_another():
    assert common_prefix(["a\nb\n", "a\nb\nc\n"]) == "a\n"
    assert common_prefix(["a\nb\n", "a\nc\n"]) == "a\n"
    assert common_prefix(["no newline", "no newline"]) == ""
    assert common_prefix([]) == ""


def test_empty_prefix_scores_like_any_prefix(tiny):
    model, tok = tiny
    text = prompts.render_prompt(tok, CATALOG, 1, 2, None)
    scorer = PrefixScorer(model, tok, NAMES, "")
    assert scorer.P == 0
    assert_scores_like_whole_prompt(scorer, text, model, tok, text)


def test_an_empty_suffix_is_refused_not_scored_from_another_position(tiny):
    model, tok = tiny
    text = prompts.render_prompt(tok, CATALOG, 1, 2, None)
    scorer = PrefixScorer(model, tok, NAMES, text)
    for call in (
        lambda: scorer.verbalize(["", "x"], [[0, 1], [0, 1]]),
        lambda: scorer.constrained([""], [[0, 1]], 3),
        lambda: scorer.generate([""], 3),
    ):
        with pytest.raises(ValueError, match="at least one token after the shared prefix"):
            call()
