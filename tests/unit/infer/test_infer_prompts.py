"""jobs.infer's RAG prompts for every `prompt.rag_variant`: each names the successors that
variant ranks, as the fine-tune's prompts do (both go through common.retrieval.rag_for).
`global` is keyed by c2 alone; bulk inference used to look it up by (c1, c2) and crashed."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from common import prompts, schemas
from common.catalog import Catalog
from common.config import load_config
from common.model import load_tokenizer
from common.retrieval import build_snapshot
from jobs.infer import prompt_texts

D = dt.date(2026, 3, 1)
CATALOG = Catalog(
    (10, 11, 12, 13, 14, 15, 16),
    ("sports", "music", "books", "cooking", "travel", "games", "pets"),
    ("",) * 7,
)


def snapshot() -> dict:
    """Window [D, D + 4), halves of 2 days. (10, 11): 12 x5 early, 13 x3 late, so frequency
    ranks 12 first and trend 13. (14, 11): 15 x20, so c2 = 11's global top is 15."""
    rows = [(D, 10, 11, 12, 5), (D + dt.timedelta(days=3), 10, 11, 13, 3), (D, 14, 11, 15, 20)]
    counts = pa.Table.from_pylist(
        [dict(day=d, c1=a, c2=b, c3=c, count=n) for d, a, b, c, n in rows],
        schema=schemas.TRANSITIONS,
    )
    return build_snapshot(counts, D + dt.timedelta(days=4), 4, 5)


@pytest.mark.parametrize("variant, named", [("frequency", [12]), ("trend", [13]), ("global", [15])])
def test_each_variant_names_its_own_top_successor(tiny_model_dir, variant, named):
    tok = load_tokenizer(tiny_model_dir)
    cfg = load_config(None, [f"prompt.rag_variant={variant}", "prompt.rag_top=1"])
    texts = prompt_texts(cfg, tok, CATALOG, [(10, 11), (12, 16)], snapshot())
    assert texts[0] == prompts.render_prompt(tok, CATALOG, 10, 11, named)
    assert f"Recent next: {CATALOG.name(named[0])}" in texts[0]
    # A pair (and a c2) the window never saw: no RAG line, the plain prompt.
    assert texts[1] == prompts.render_prompt(tok, CATALOG, 12, 16, None)
    # Without a snapshot (strategies without RAG) nothing is named either.
    assert prompt_texts(cfg, tok, CATALOG, [(10, 11)], None) == [
        prompts.render_prompt(tok, CATALOG, 10, 11, None)
    ]


def test_global_line_never_names_c1(tiny_model_dir):
    """c2 = 11's global successors are 15 (x20), 12 (x5), 13 (x3) whatever came before; for the
    pair (15, 11) the line names 12, not 15 (a move back to c1 is never a novel answer), and
    still names `prompt.rag_top` successors."""
    tok = load_tokenizer(tiny_model_dir)
    for top, named in ((1, [12]), (2, [12, 13])):
        cfg = load_config(None, ["prompt.rag_variant=global", f"prompt.rag_top={top}"])
        text = prompt_texts(cfg, tok, CATALOG, [(15, 11)], snapshot())[0]
        assert text == prompts.render_prompt(tok, CATALOG, 15, 11, named)
    # Another c1 gets c2's plain top.
    text = prompt_texts(cfg, tok, CATALOG, [(12, 11)], snapshot())[0]
    assert text == prompts.render_prompt(tok, CATALOG, 12, 11, [15, 13])


def test_a_successor_dropped_from_the_catalog_gives_its_place_to_the_next(tiny_model_dir):
    """The counts outlive a cluster removed from the catalog: (10, 11)'s top successor 12 is
    gone, so the one-name line names the next one, 13, not nothing."""
    tok = load_tokenizer(tiny_model_dir)
    without_12 = Catalog(
        (10, 11, 13, 14, 15, 16),
        ("sports", "music", "cooking", "travel", "games", "pets"),
        ("",) * 6,
    )
    cfg = load_config(None, ["prompt.rag_variant=frequency", "prompt.rag_top=1"])
    text = prompt_texts(cfg, tok, without_12, [(10, 11)], snapshot())[0]
    assert text == prompts.render_prompt(tok, without_12, 10, 11, [13])
    assert "Recent next: cooking<" in text
