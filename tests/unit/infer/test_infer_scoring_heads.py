"""PrefixScorer's name logits are the model's own, in fp32: a bf16 model is not rounded to bf16
logit steps, and heads with a bias or a logit transform (Phi, Granite, Cohere, Gemma-2) score
what a full forward gives; a head it does not know is refused at load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_infer_scoring import EXCLUDE, NAMES, PREFIX, SUFFIXES, brute_force

from common.model import ModelError
from common.scoring import PrefixScorer

# More names than test_infer_scoring's, so that two of them could tie.
MORE_NAMES = [*NAMES, "tea", "green tea", "chess", "yoga", "hiking", "coffee", "pets", "dogs"]


@pytest.fixture(scope="module")
def sharp_dir(tmp_path_factory):
    """The tiny model with weights of std 0.2: logits of magnitude ~10, where bf16 steps are
    1/16 (at the default 0.02 they are ~1 and bf16 rounding hides under 1e-2)."""
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("sharp"), initializer_range=0.2)


@pytest.fixture(scope="module")
def tok(sharp_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(sharp_dir)


class Recorder:
    """Stands in for the scorer's decoder and keeps the hidden states of each call."""

    def __init__(self, decoder):
        self.decoder, self.states = decoder, []

    def __call__(self, **kwargs):
        out = self.decoder(**kwargs)
        self.states.append(out.last_hidden_state)
        return out

    def __getattr__(self, name):
        return getattr(self.decoder, name)


def fp32_scores(scorer, h, suffix_lens, exclude) -> np.ndarray:
    """Each name's constrained-decoding log-probability from hidden states `h` (B, Q, H) of a
    verbalize forward, with every logit computed in fp32 from the (bf16) states and head rows."""
    head = scorer.head.float()
    L = h.shape[1] - len(scorer.ext_tokens)
    where = {n: L + i for i, n in enumerate(scorer.ext_nodes)}
    out = np.full((h.shape[0], len(scorer.names)), -np.inf)
    for b in range(h.shape[0]):
        for i, tokens in enumerate(scorer.name_tokens):
            if i in exclude[b]:
                continue
            node, total = 0, 0.0
            for t in tokens:
                kids = [
                    k
                    for k, c in scorer.trie.children[node].items()
                    if scorer._alive(c, set(exclude[b]))
                ]
                if len(kids) > 1:  # one live child: probability 1, no state needed
                    state = h[b, suffix_lens[b] - 1] if node == 0 else h[b, where[node]]
                    logits = state.float() @ head[kids].T
                    total += torch.log_softmax(logits, 0)[kids.index(t)].item()
                node = scorer.trie.children[node][t]
            out[b, i] = total
    return out


def test_bf16_model_scores_names_with_fp32_logits(sharp_dir, tok):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(sharp_dir, dtype=torch.bfloat16)
    scorer = PrefixScorer(model, tok, MORE_NAMES, PREFIX, group_lines=False)
    scorer.decoder = Recorder(scorer.decoder)
    scores = scorer.verbalize(SUFFIXES, EXCLUDE)
    assert scores.dtype == torch.float32
    (h,) = scorer.decoder.states
    assert h.dtype == torch.bfloat16
    lens = [len(tok(s, add_special_tokens=False)["input_ids"]) for s in SUFFIXES]
    expected = fp32_scores(scorer, h, lens, EXCLUDE)
    # fp32 sums in another order differ by ~1e-5; bf16 logits here are off by up to 1/32.
    np.testing.assert_allclose(scores.numpy(), expected, atol=1e-3)
    for row in scores:
        finite = row[torch.isfinite(row)]
        assert len(torch.unique(finite)) == len(finite), "tied names: rounded logits"
        assert np.isclose(np.exp(finite.numpy()).sum(), 1.0, atol=1e-4)
    # Beam search over the same trie uses the same fp32 logits.
    exact, exact_val = scorer.top_k(SUFFIXES, EXCLUDE, 6)
    beam, beam_val = scorer.constrained(SUFFIXES, EXCLUDE, 6)
    assert torch.equal(beam, exact)
    np.testing.assert_allclose(beam_val, exact_val, atol=1e-3)


def tiny_config_kwargs(vocab_size: int) -> dict:
    return dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )


def tiny_model(kind: str, vocab_size: int):
    """A random tiny model of an architecture whose head is more than output embeddings."""
    import transformers as tf

    kw = tiny_config_kwargs(vocab_size)
    torch.manual_seed(0)
    if kind == "phi (lm_head bias)":
        model = tf.PhiForCausalLM(tf.PhiConfig(**kw))
        with torch.no_grad():
            model.lm_head.bias.normal_(0, 1.0)
    elif kind == "granite (logits_scaling)":
        model = tf.GraniteForCausalLM(tf.GraniteConfig(**kw, logits_scaling=0.25))
    elif kind == "cohere (logit_scale)":
        model = tf.CohereForCausalLM(tf.CohereConfig(**kw, logit_scale=4.0))
    elif kind == "gemma2 (final_logit_softcapping)":
        config = tf.Gemma2Config(**kw, head_dim=16, final_logit_softcapping=0.5)
        model = tf.Gemma2ForCausalLM(config)
    else:
        raise ValueError(kind)
    return model.float().eval()


@pytest.mark.parametrize(
    "kind",
    [
        "phi (lm_head bias)",
        "granite (logits_scaling)",
        "cohere (logit_scale)",
        "gemma2 (final_logit_softcapping)",
    ],
)
def test_heads_with_bias_or_logit_transform_score_what_a_full_forward_gives(kind, tok):
    model = tiny_model(kind, len(tok))
    scorer = PrefixScorer(model, tok, NAMES, PREFIX)
    scores = scorer.verbalize(SUFFIXES, EXCLUDE).numpy()
    for b, suffix in enumerate(SUFFIXES):
        expected = brute_force(model, tok, scorer, suffix, EXCLUDE[b])
        np.testing.assert_allclose(scores[b], expected, atol=1e-4, err_msg=kind)
    beam, beam_val = scorer.constrained(SUFFIXES, EXCLUDE, 6)
    exact, exact_val = scorer.top_k(SUFFIXES, EXCLUDE, 6)
    assert torch.equal(beam, exact)
    np.testing.assert_allclose(beam_val, exact_val, atol=1e-4)
    # Greedy generation takes the model's own argmax (the bias moves it).
    texts = scorer.generate(SUFFIXES[:1], 3)
    ids = tok(PREFIX + SUFFIXES[0], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        g = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    ref = tok.decode(g[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert texts[0] == ref.split("\n", 1)[0].strip()


def test_a_head_transform_it_does_not_know_is_refused_at_load(tok):
    """A model that reshapes its logits some other way would be scored wrongly: refused."""
    import transformers as tf

    class Tempered(tf.LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 3.0
            return out

    torch.manual_seed(0)
    model = Tempered(tf.LlamaConfig(**tiny_config_kwargs(len(tok)), initializer_range=0.2))
    with pytest.raises(ModelError, match="not supported by the verbalizer"):
        PrefixScorer(model.eval(), tok, NAMES, PREFIX)


def test_eager_attention_takes_an_additive_mask(tok):
    """Eager attention adds the mask to the scores: the scorer's masks must be additive there
    (a boolean one added 0 or 1 and let every row see every other row's suffix)."""
    import transformers as tf

    torch.manual_seed(0)
    config = tf.LlamaConfig(**tiny_config_kwargs(len(tok)), initializer_range=0.2)
    config._attn_implementation = "eager"
    model = tf.LlamaForCausalLM(config).eval()
    assert model.config._attn_implementation == "eager"
    scorer = PrefixScorer(model, tok, NAMES, PREFIX)
    scores = scorer.verbalize(SUFFIXES, EXCLUDE).numpy()
    for b, suffix in enumerate(SUFFIXES):
        expected = brute_force(model, tok, scorer, suffix, EXCLUDE[b])
        np.testing.assert_allclose(scores[b], expected, atol=1e-4)
    beam, beam_val = scorer.constrained(SUFFIXES, EXCLUDE, 6)
    exact, exact_val = scorer.top_k(SUFFIXES, EXCLUDE, 6)
    assert torch.equal(beam, exact)
    np.testing.assert_allclose(beam_val, exact_val, atol=1e-4)


def test_an_attention_that_cannot_take_per_row_masks_is_refused(tok):
    import transformers as tf

    model = tf.LlamaForCausalLM(tf.LlamaConfig(**tiny_config_kwargs(len(tok)))).eval()
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ModelError, match="flash_attention_2"):
        PrefixScorer(model, tok, NAMES, PREFIX)


@pytest.mark.parametrize("kind", ["granite (logits_scaling)", "gemma2 (final_logit_softcapping)"])
def test_the_training_loss_is_the_models_own_cross_entropy(kind, tok):
    """Fine-tuning learns the log-probabilities the scorer ranks by: its loss on the answer
    tokens is the cross-entropy of the model's own logits, transform included."""
    from peft import LoraConfig, get_peft_model

    from common.training import _answer_loss_module

    model = tiny_model(kind, len(tok))
    ids = tok(PREFIX + SUFFIXES[0], return_tensors="pt", add_special_tokens=False)["input_ids"]
    T = ids.shape[1]
    pos, tgt = torch.tensor([T - 3, T - 2]), ids[0, T - 2 :]  # position p predicts token p + 1
    with torch.no_grad():
        want = torch.nn.functional.cross_entropy(model(input_ids=ids).logits[0, pos], tgt)
        lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
        got = _answer_loss_module(get_peft_model(model, lora))(ids, pos, tgt)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
