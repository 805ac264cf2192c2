"""jobs.infer.check_adapter_prompts: an adapter is served only on the prompts it learned."""

from __future__ import annotations

import logging

import pytest

from common.cli import InputError
from common.config import load_config
from common.storage import write_json
from jobs.infer import check_adapter_prompts

TRAINED = {"rag": True, "rag_top": 1, "rag_variant": "frequency"}


def adapter(tmp_path, prompt: dict | None, base: str = "packaged:smollm2") -> str:
    path = str(tmp_path / "adapters" / "v1")
    meta = {"base_model": base, **({"prompt": prompt} if prompt is not None else {})}
    write_json(f"{path}/meta.json", meta)
    return path


def cfg(*sets: str):
    return load_config(None, ["model.name_or_path=packaged:smollm2", *sets])


def test_rag_prompts_must_be_the_trained_ones(tmp_path):
    a = adapter(tmp_path, TRAINED)
    check_adapter_prompts(cfg("infer.strategy=hybrid"), a)  # the same settings: served
    # prompt.rag only shapes training: a hybrid table renders the RAG line anyway.
    check_adapter_prompts(cfg("infer.strategy=hybrid", "prompt.rag=false"), a)
    with pytest.raises(InputError) as e:
        check_adapter_prompts(cfg("infer.strategy=hybrid", "prompt.rag_top=3"), a)
    assert str(e.value) == (
        f"adapter {a} was trained with prompt.rag_top=1, but infer.strategy=hybrid would serve "
        "it prompts with prompt.rag_top=3: set the same prompt settings, or fine-tune again "
        "with these"
    )
    with pytest.raises(
        InputError, match="prompt.rag_variant=frequency, .* prompt.rag_variant=trend"
    ):
        check_adapter_prompts(cfg("infer.strategy=hybrid", "prompt.rag_variant=trend"), a)
    # Trained without RAG, served with it.
    no_rag = adapter(tmp_path / "n", {**TRAINED, "rag": False})
    with pytest.raises(InputError, match="trained with prompt.rag=False, .* with prompt.rag=True"):
        check_adapter_prompts(cfg("infer.strategy=hybrid"), no_rag)


def test_ft_tables_and_unrecorded_adapters_are_not_refused(tmp_path, caplog):
    # `ft` renders no RAG line: the RAG settings do not matter to it.
    no_rag = adapter(tmp_path, {**TRAINED, "rag": False, "rag_top": 3})
    check_adapter_prompts(cfg("infer.strategy=ft"), no_rag)
    check_adapter_prompts(cfg("infer.strategy=hybrid"), None)  # no adapter: nothing to check
    with caplog.at_level(logging.WARNING, logger="jobs.infer"):
        check_adapter_prompts(cfg("infer.strategy=hybrid"), str(tmp_path / "missing"))
        other = adapter(tmp_path / "o", TRAINED, base="HuggingFaceTB/SmolLM2-360M-Instruct")
        check_adapter_prompts(cfg("infer.strategy=hybrid"), other)
    messages = [r.getMessage() for r in caplog.records]
    assert any("has no meta.json" in m for m in messages)
    assert any("trained on base model HuggingFaceTB/SmolLM2-360M-Instruct" in m for m in messages)
