"""Prompt golden tests (issue 3): the exact text for a fixed pair, with and without RAG, in the
tiny test tokenizer's ChatML template; and the token facts fine-tuning and inference rely on."""

from __future__ import annotations

import os

import pytest

from common import prompts
from common.catalog import Catalog

CATALOG = Catalog(
    ids=(3, 7, 11, 20),
    names=("sourdough baking", "trail running", "jazz guitar", "Action, Comedy & War"),
    descriptions=(
        "Starters, long ferments and open-crumb loaves.",
        "Off-road running,\n ultras, shoes and mountain routes.",  # a newline: flattened
        "",  # no description: the name alone
        "Movies tagged Action, Comedy & War, such as a very long list of titles that goes on "
        "and on past the cut",
    ),
)

HEAD = (
    "<|im_start|>system\n"
    "Predict the next interest cluster a user explores. Answer with its name only.<|im_end|>\n"
    "<|im_start|>user\n"
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_golden_rag(tokenizer):
    text = prompts.render_prompt(tokenizer, CATALOG, 3, 7, [11, 20])
    assert text == HEAD + (
        "Previous: sourdough baking - Starters, long ferments and open-crumb loaves.\n"
        "Current: trail running - Off-road running, ultras, shoes and mountain routes.\n"
        "Recent next: jazz guitar; Action, Comedy & War<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_golden_rag_top1(tokenizer):
    text = prompts.render_prompt(tokenizer, CATALOG, 11, 20, [3])
    assert text == HEAD + (
        "Previous: jazz guitar\n"
        "Current: Action, Comedy & War - Movies tagged Action, Comedy & War, such as a very long "
        "list of titles that...\n"
        "Recent next: sourdough baking<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_golden_no_rag(tokenizer):
    text = prompts.render_prompt(tokenizer, CATALOG, 3, 7, None)
    assert text == HEAD + (
        "Previous: sourdough baking - Starters, long ferments and open-crumb loaves.\n"
        "Current: trail running - Off-road running, ultras, shoes and mountain routes.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # An empty retrieval is the no-RAG prompt.
    assert prompts.render_prompt(tokenizer, CATALOG, 3, 7, []) == text


def test_answer_text_and_ids(tokenizer):
    assert prompts.answer_text(CATALOG, 11, tokenizer) == "jazz guitar<|im_end|>"
    assert prompts.answer_text(CATALOG, 11) == "jazz guitar<|im_end|>"
    ids = prompts.answer_ids(tokenizer, CATALOG, 20)
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids) == "Action, Comedy & War<|im_end|>"
    # The prompt ends exactly where the answer begins: prompt + answer as one string tokenizes
    # to prompt ids + answer ids (no merge across the boundary).
    for rag in (None, [11]):
        text = prompts.render_prompt(tokenizer, CATALOG, 3, 7, rag)
        whole = tokenizer(
            text + prompts.answer_text(CATALOG, 20, tokenizer), add_special_tokens=False
        )
        assert whole["input_ids"] == prompts.prompt_ids(tokenizer, text) + ids


def test_answer_ids_match_the_scorer(tiny_model_dir, tokenizer):
    """The fine-tune target is exactly what inference scores (common/scoring.py PrefixScorer)."""
    from transformers import AutoModelForCausalLM

    from common.scoring import PrefixScorer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    scorer = PrefixScorer(model, tokenizer, list(CATALOG.names), HEAD)
    assert scorer.name_tokens == [prompts.answer_ids(tokenizer, CATALOG, c) for c in CATALOG.ids]


def test_shared_prefix_is_a_token_boundary(tokenizer):
    """Every pair's prompt starts with the system turn; cutting there (as jobs/infer.py
    common_prefix does) and tokenizing both parts gives the same ids as the whole prompt."""
    texts = [
        prompts.render_prompt(tokenizer, CATALOG, a, b, rag)
        for a in CATALOG.ids
        for b in CATALOG.ids
        if a != b
        for rag in (None, [x for x in CATALOG.ids if x not in (a, b)][:1])
    ]
    shared = os.path.commonprefix(texts)
    prefix = shared[: shared.rfind("\n") + 1]
    assert prefix == HEAD
    for text in texts:
        parts = prompts.prompt_ids(tokenizer, prefix) + prompts.prompt_ids(
            tokenizer, text[len(prefix) :]
        )
        assert parts == prompts.prompt_ids(tokenizer, text)


def test_packaged_model_prompt_is_short():
    """With the packaged SmolLM2 tokenizer (`make model` converts it): the explicit system
    turn replaces the template's default one, and a RAG prompt stays under 100 tokens."""
    from common.config import ModelConfig
    from common.model import converted_dir, is_converted

    model_cfg = ModelConfig()
    path = converted_dir(model_cfg.name_or_path, model_cfg.cache_dir)
    # `make test` prepares it first; a missing model is a failure, not a silent pass.
    assert is_converted(path), f"packaged model not converted at {path}: run `make model`"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    text = prompts.render_prompt(tok, CATALOG, 3, 7, [11])
    assert text.startswith(HEAD) and "SmolLM" not in text
    assert len(prompts.prompt_ids(tok, text)) < 100


@pytest.fixture(scope="module")
def plain_tokenizer(tiny_model_dir):
    """The tiny tokenizer without its chat template: a base model's."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = None
    return tok


def test_golden_without_a_chat_template(plain_tokenizer):
    text = prompts.render_prompt(plain_tokenizer, CATALOG, 3, 7, [11])
    assert text == (
        "Predict the next interest cluster a user explores. Answer with its name only.\n\n"
        "Previous: sourdough baking - Starters, long ferments and open-crumb loaves.\n"
        "Current: trail running - Off-road running, ultras, shoes and mountain routes.\n"
        "Recent next: jazz guitar\n"
        "Answer:\n"
    )
    # The answer starts on its own line: prompt + answer tokenizes as the two apart.
    ids = prompts.answer_ids(plain_tokenizer, CATALOG, 20)
    whole = plain_tokenizer(
        text + prompts.answer_text(CATALOG, 20, plain_tokenizer), add_special_tokens=False
    )
    assert whole["input_ids"] == prompts.prompt_ids(plain_tokenizer, text) + ids


def test_a_template_without_a_system_role_gets_the_task_in_the_user_turn(tiny_model_dir):
    from transformers import AutoTokenizer

    gemma_like = AutoTokenizer.from_pretrained(tiny_model_dir)
    gemma_like.chat_template = (
        "{% for m in messages %}"
        "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    text = prompts.render_prompt(gemma_like, CATALOG, 11, 20, None)
    assert text == (
        "<|im_start|>user\n"
        "Predict the next interest cluster a user explores. Answer with its name only.\n\n"
        "Previous: jazz guitar\n"
        "Current: Action, Comedy & War - Movies tagged Action, Comedy & War, such as a very long "
        "list of titles that...<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_a_template_that_stamps_the_date_renders_the_same_every_day(tiny_model_dir):
    """Llama 3.2's template writes "Today Date: <strftime_now>" into the system turn unless it is
    given `date_string`: prompts must not follow the calendar, or inference scores text the
    adapter was never trained on."""
    import datetime as dt

    from transformers import AutoTokenizer

    llama_like = AutoTokenizer.from_pretrained(tiny_model_dir)
    llama_like.chat_template = (
        "{% if not date_string is defined %}{% if strftime_now is defined %}"
        "{% set date_string = strftime_now('%d %b %Y') %}"
        "{% else %}{% set date_string = '26 Jul 2024' %}{% endif %}{% endif %}"
        "{{ '<|im_start|>system\nToday Date: ' + date_string + '<|im_end|>\n' }}"
        "{% for m in messages %}"
        "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    text = prompts.render_prompt(llama_like, CATALOG, 3, 7, [11])
    assert text.startswith("<|im_start|>system\nToday Date: 26 Jul 2024<|im_end|>\n")
    assert dt.date.today().strftime("%d %b %Y") not in text
    assert prompts.end_of_turn_id(llama_like) == llama_like.convert_tokens_to_ids("<|im_end|>")


def test_training_examples_without_a_chat_template(plain_tokenizer):
    """The fine-tune builds its examples with the same plain layout inference scores."""
    import datetime as dt

    import pyarrow as pa

    from common import training

    day = dt.date(2026, 3, 20)
    ids = CATALOG.ids
    rows = [
        (day - dt.timedelta(days=d), a, b, c, 3)
        for d in range(1, 12)
        for a in ids
        for b in ids
        for c in ids[:2]
        if len({a, b, c}) == 3
    ]
    cols = list(zip(*rows, strict=True))
    counts = pa.table(
        {
            "day": pa.array(cols[0], pa.date32()),
            "c1": pa.array(cols[1], pa.int32()),
            "c2": pa.array(cols[2], pa.int32()),
            "c3": pa.array(cols[3], pa.int32()),
            "count": pa.array(cols[4], pa.int64()),
        }
    )
    spec = training.DataSpec(day=day, window_days=6, holdout_days=2, rag_window_days=4)
    data = training.build_data(spec, counts, CATALOG, plain_tokenizer)
    assert data["train"] and data["eval"]["suffixes"]
    assert data["prefix"] == prompts.SYSTEM + "\n\n"
    for prompt, answer in data["train"]:
        assert plain_tokenizer.decode(prompt).endswith("\nAnswer:\n")
        assert answer[-1] == plain_tokenizer.eos_token_id


def test_answers_end_with_the_templates_end_of_turn(tiny_model_dir, tokenizer):
    """A model whose template closes a turn with another token than eos (Gemma's
    `<end_of_turn>`, Phi-3's `<|end|>`) is trained and scored on that token; ChatML's is its
    eos; a template with no special token after the answer falls back to eos."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from common.scoring import PrefixScorer

    assert prompts.end_of_turn_id(tokenizer) == tokenizer.eos_token_id  # <|im_end|>
    turn = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + END }}{% endfor %}"
    other = AutoTokenizer.from_pretrained(tiny_model_dir)
    other.chat_template = "{% set END = '<|endoftext|>\n' %}" + turn
    end = other.convert_tokens_to_ids("<|endoftext|>")
    assert end != other.eos_token_id and prompts.end_of_turn_id(other) == end
    assert prompts.answer_text(CATALOG, 11, other) == "jazz guitar<|endoftext|>"
    assert prompts.answer_ids(other, CATALOG, 11)[-1] == end
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    scorer = PrefixScorer(model, other, list(CATALOG.names), "user: ")
    assert scorer.end_id == end
    assert scorer.name_tokens == [prompts.answer_ids(other, CATALOG, c) for c in CATALOG.ids]
    plain = AutoTokenizer.from_pretrained(tiny_model_dir)
    plain.chat_template = "{% set END = '\n' %}" + turn
    assert prompts.end_of_turn_id(plain) == plain.eos_token_id
