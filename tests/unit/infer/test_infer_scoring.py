"""PrefixScorer on a tiny random Llama: the cached, batched scores equal a plain full forward."""

import numpy as np
import pytest
import torch

from common.scoring import PrefixScorer, Trie

NAMES = [
    "sports",
    "football",
    "rock music",
    "rock climbing",
    "jazz",
    "red wine",
    "red",
    "books fiction",
]
PREFIX = (
    "<|im_start|>system\nYou recommend the next interest cluster.<|im_end|>\n<|im_start|>user\n"
)
SUFFIXES = [
    "Previous interest: jazz\nCurrent interest: red<|im_end|>\n<|im_start|>assistant\n",
    "Previous interest: books fiction\nCurrent interest: rock music, often next: football"
    "<|im_end|>\n<|im_start|>assistant\n",
    "x<|im_end|>\n<|im_start|>assistant\n",
]
EXCLUDE = [[4, 6], [7, 2], [0, 1]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.tiny_model import build_tiny_model

    path = build_tiny_model(tmp_path_factory.mktemp("tiny"))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(path)


def brute_force(model, tok, scorer, suffix, exclude):
    """Constrained-decoding log-probability of every name from full forwards, no cache."""
    base = (
        tok(PREFIX, add_special_tokens=False)["input_ids"]
        + tok(suffix, add_special_tokens=False)["input_ids"]
    )
    out = []
    for i, tokens in enumerate(scorer.name_tokens):
        if i in exclude:
            out.append(-np.inf)
            continue
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([base + tokens])).logits[0].float(), -1)
        node, total = 0, 0.0
        for j, t in enumerate(tokens):
            kids = [
                tt for tt, c in scorer.trie.children[node].items() if scorer._alive(c, set(exclude))
            ]
            total += torch.log_softmax(lp[len(base) - 1 + j][kids], 0)[kids.index(t)].item()
            node = scorer.trie.children[node][t]
        out.append(total)
    return np.array(out)


def test_trie_branches_only_where_names_share_tokens():
    trie = Trie.build([[1, 2, 9], [1, 3, 9], [4, 9]])
    assert sorted(trie.children[0]) == [1, 4]
    assert trie.leaf_name == {3: 0, 5: 1, 7: 2}
    with pytest.raises(ValueError):
        Trie.build([[1, 9], [1, 9]])


def test_verbalize_equals_constrained_probabilities(tiny):
    model, tok = tiny
    scorer = PrefixScorer(model, tok, NAMES, PREFIX)
    assert scorer.ext_tokens, "names sharing a first token need appended trie tokens"
    scores = scorer.verbalize(SUFFIXES, EXCLUDE).numpy()
    for b, suffix in enumerate(SUFFIXES):
        expected = brute_force(model, tok, scorer, suffix, EXCLUDE[b])
        np.testing.assert_allclose(scores[b], expected, atol=1e-4)
        assert np.isclose(np.exp(scores[b][np.isfinite(scores[b])]).sum(), 1.0, atol=1e-4)


def test_top_k_distinct_valid_deterministic_and_batch_invariant(tiny):
    model, tok = tiny
    scorer = PrefixScorer(model, tok, NAMES, PREFIX)
    idx, val = scorer.top_k(SUFFIXES, EXCLUDE, 10)
    assert idx.shape == (3, 6)  # 8 names minus c1 and c2
    for b in range(3):
        row = idx[b].tolist()
        assert len(set(row)) == 6 and not set(row) & set(EXCLUDE[b])
        assert all(val[b, i] >= val[b, i + 1] for i in range(5))
    again, _ = scorer.top_k(SUFFIXES, EXCLUDE, 10)
    assert torch.equal(idx, again)
    alone, alone_val = scorer.top_k(SUFFIXES[2:], EXCLUDE[2:], 10)  # no padding in this batch
    assert torch.equal(alone[0], idx[2])
    np.testing.assert_allclose(alone_val[0], val[2], atol=1e-5)


def test_constrained_beam_search_with_full_width_is_exact(tiny):
    model, tok = tiny
    scorer = PrefixScorer(model, tok, NAMES, PREFIX)
    exact, exact_val = scorer.top_k(SUFFIXES, EXCLUDE, 8)
    beam, beam_val = scorer.constrained(SUFFIXES, EXCLUDE, 8)
    assert torch.equal(beam, exact)
    np.testing.assert_allclose(beam_val, exact_val, atol=1e-4)
    narrow, narrow_val = scorer.constrained(SUFFIXES, EXCLUDE, 3)
    assert narrow.shape == (3, 3)
    for b in range(3):
        assert not set(narrow[b].tolist()) & set(EXCLUDE[b])
        # Whatever the narrow beam keeps, each cluster carries its exact log-probability.
        exact_of = dict(zip(exact[b].tolist(), np.asarray(exact_val[b]).tolist(), strict=True))
        want = [exact_of[c] for c in narrow[b].tolist()]
        np.testing.assert_allclose(narrow_val[b], want, atol=1e-4)


def test_generate_matches_hf_greedy(tiny):
    model, tok = tiny
    scorer = PrefixScorer(model, tok, NAMES, PREFIX)
    texts = scorer.generate(SUFFIXES, 5)
    for suffix, text in zip(SUFFIXES, texts, strict=True):
        ids = tok(PREFIX + suffix, return_tensors="pt", add_special_tokens=False)
        g = model.generate(**ids, max_new_tokens=5, do_sample=False)
        ref = tok.decode(g[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        assert text == ref.split("\n", 1)[0].strip()
    assert scorer.match("jazz") == 4 and scorer.match("Jazz") is None


def test_grouped_first_lines_give_the_same_scores(tiny):
    """Rows sharing their first line (bulk prompts of one c1) reuse its cache: same numbers."""
    model, tok = tiny
    suffixes = [
        "Previous: jazz\nCurrent: red<|im_end|>\n<|im_start|>assistant\n",
        "Previous: jazz\nCurrent: rock music, football<|im_end|>\n<|im_start|>assistant\n",
        "Previous: books fiction\nCurrent: tea<|im_end|>\n<|im_start|>assistant\n",
        "Previous: books fiction\nCurrent: jazz<|im_end|>\n<|im_start|>assistant\n",
        "no newline here<|im_end|>",
    ]
    exclude = [[4, 6], [4, 2], [7, 0], [7, 4], [0, 1]]
    grouped = PrefixScorer(model, tok, NAMES, PREFIX)
    plain = PrefixScorer(model, tok, NAMES, PREFIX, group_lines=False)
    base, rests = grouped._grouped_base(suffixes)
    assert base is not None and rests[4] == tok(suffixes[4], add_special_tokens=False)["input_ids"]
    np.testing.assert_allclose(
        grouped.verbalize(suffixes, exclude).numpy(),
        plain.verbalize(suffixes, exclude).numpy(),
        atol=1e-4,
    )


def test_scores_stay_float32_under_bf16_autocast(tiny):
    """The fine-tune scores its held-out slice under bf16 autocast on hardware that has bf16."""
    model, tok = tiny
    scorer = PrefixScorer(model, tok, NAMES, PREFIX)
    exact = scorer.verbalize(SUFFIXES, EXCLUDE).numpy()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = scorer.verbalize(SUFFIXES, EXCLUDE)
        idx, val = scorer.top_k(SUFFIXES, EXCLUDE, 10)
    assert scores.dtype == torch.float32 and val.dtype == torch.float32
    for b in range(3):
        finite = np.isfinite(scores[b].numpy())
        assert np.isclose(np.exp(scores[b][finite].numpy()).sum(), 1.0, atol=1e-4)
        np.testing.assert_allclose(scores[b].numpy()[finite], exact[b][finite], atol=0.05)
        assert not set(idx[b].tolist()) & set(EXCLUDE[b])
