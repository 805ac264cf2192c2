"""Instance-level prompts, one per cluster pair (c1, c2), and the answer the model must produce.

docs/contracts.md "Retrieval (RAG) snapshot" and issue 3 item 2. Fine-tuning (jobs/finetune.py)
and bulk inference (jobs/infer.py) both build their text here, so what the model is trained on is
exactly what it is scored on. Layout, in the model's own chat template:

    system:    the task, the same for every pair               } the shared prefix: computed once
    user:      Previous: <c1 name> - <c1 description>            per bulk run (PrefixScorer's KV
               Current: <c2 name> - <c2 description>             cache), so only the user turn is
               Recent next: <retrieved name>[; <name> ...]       paid for per pair
    assistant: <answer: a cluster name>

Short on purpose: every token is paid for per pair per refresh (992 pairs for 32 clusters,
14,280 for 120). No list of all clusters: answers are tied to real clusters by scoring only
cluster names (common/scoring.py), and a list would add ~1k tokens to every training example.
The RAG line is left out when no successor was retrieved, so the no-RAG prompt of a pair is the
RAG prompt with no evidence. Every line ends with a newline, so the cut that
`common_prefix` makes (after the last shared newline) is a clean token boundary.

Any Hugging Face model dir must work: a tokenizer without a chat template (a base model) gets a
plain layout (`plain_prompt`: the task, a blank line, the user text, an answer cue line), and a
template that refuses a system turn (Gemma's) gets the task at the top of the user turn.
"""

from __future__ import annotations

import functools
import os
import re

from common.catalog import Catalog

SYSTEM = "Predict the next interest cluster a user explores. Answer with its name only."
CHATML_END = "<|im_end|>"  # ends a turn in ChatML (SmolLM2, tests/tiny_model.py); the eos token
MAX_DESCRIPTION_CHARS = 80
RAG_SEPARATOR = "; "  # names may hold commas (MovieLens genre combinations: "Action, Comedy & War")
ANSWER_CUE = "Answer:"  # the last line of a plain prompt; the name follows on the next line
# The date a template that stamps today's date reads (Llama 3.x's "Today Date: ...", from its
# `date_string` variable, else transformers' `strftime_now`): a prompt must not change with the
# day it is rendered, or an adapter is scored and served on text it was not trained on.
TEMPLATE_DATE = "26 Jul 2024"  # Llama 3.1's own fixed default, so its prompts do not change


def _apply_template(tokenizer, chat: list[dict], **kwargs) -> str:
    """The chat template's text, with the date fixed (`TEMPLATE_DATE`)."""
    return tokenizer.apply_chat_template(chat, tokenize=False, date_string=TEMPLATE_DATE, **kwargs)


def clean(text: str) -> str:
    """One line: whitespace runs (newlines included) become one space."""
    return re.sub(r"\s+", " ", text or "").strip()


def short_description(text: str, limit: int = MAX_DESCRIPTION_CHARS) -> str:
    """The description on one line, cut at a word boundary to at most `limit` characters."""
    text = clean(text)
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:")
    return cut + "..."


def name_text(catalog: Catalog, cluster_id: int) -> str:
    """The cluster's name as prompts and answers spell it: on one line, trimmed (a catalog
    name with a newline or stray spaces could never be generated back; PrefixScorer scores
    and matches this form)."""
    return clean(catalog.name(cluster_id))


def describe(catalog: Catalog, cluster_id: int) -> str:
    """`name - description` (or the name alone when the description is empty)."""
    name = name_text(catalog, cluster_id)
    desc = short_description(catalog.description(cluster_id))
    return f"{name} - {desc}" if desc else name


def user_text(catalog: Catalog, c1: int, c2: int, rag: list[int] | None) -> str:
    """The pair-specific user turn; `rag` names the retrieved successors in rank order (catalog
    clusters only: common.retrieval.retrieved_lists drops the ones the catalog no longer holds)."""
    lines = [f"Previous: {describe(catalog, c1)}", f"Current: {describe(catalog, c2)}"]
    if rag:
        names = RAG_SEPARATOR.join(name_text(catalog, c) for c in rag)
        lines.append(f"Recent next: {names}")
    return "\n".join(lines)


def messages(catalog: Catalog, c1: int, c2: int, rag: list[int] | None) -> list[dict]:
    """Chat messages of the prompt (an explicit system turn: templates such as SmolLM2's
    otherwise insert a long default one)."""
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": user_text(catalog, c1, c2, rag)},
    ]


def plain_prompt(chat: list[dict]) -> str:
    """The prompt of a model without a chat template: the system text, a blank line, the user
    text, then the answer cue on its own line (so the answer starts a line, as in a template)."""
    system = "\n".join(m["content"] for m in chat if m["role"] == "system")
    user = "\n".join(m["content"] for m in chat if m["role"] != "system")
    return f"{system}\n\n{user}\n{ANSWER_CUE}\n" if system else f"{user}\n{ANSWER_CUE}\n"


def render_prompt(tokenizer, catalog: Catalog, c1: int, c2: int, rag: list[int] | None) -> str:
    """The chat-templated prompt text for (c1, c2), ending exactly where the answer begins (after
    the template's assistant header). `rag`: retrieved successor ids (None or [] for no RAG).
    Without a chat template, `plain_prompt`; a template that rejects the system role gets the
    task as the head of the user turn. Fine-tuning and inference both call this, so they agree."""
    chat = messages(catalog, c1, c2, rag)
    if getattr(tokenizer, "chat_template", None) is None:
        return plain_prompt(chat)
    from jinja2.exceptions import TemplateError

    try:
        return _apply_template(tokenizer, chat, add_generation_prompt=True)
    except TemplateError:  # "System role not supported" (raise_exception in the template)
        merged = [{"role": "user", "content": f"{SYSTEM}\n\n{chat[1]['content']}"}]
        return _apply_template(tokenizer, merged, add_generation_prompt=True)


@functools.cache
def end_of_turn_id(tokenizer) -> int:
    """The token that closes an assistant turn in the model's chat template: what a model says
    after its answer (ChatML's `<|im_end|>`, Gemma's `<end_of_turn>`, Phi-3's `<|end|>`, Llama
    3's `<|eot_id|>`); the eos token where the template names no special token there (or there
    is no template). Read once per tokenizer from an assistant turn the template renders."""
    marker = "\u2063answer\u2063"
    try:
        text = _apply_template(
            tokenizer, [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}]
        )
    except Exception:  # no template, or one that refuses this chat: the eos token
        text = ""
    if marker in text:
        after = tokenizer(text.split(marker, 1)[1], add_special_tokens=False)["input_ids"]
        if after and after[0] in tokenizer.all_special_ids:
            return after[0]
    return tokenizer.eos_token_id


def answer_text(catalog: Catalog, c3: int, tokenizer=None) -> str:
    """The target text: the cluster name (`name_text`, as PrefixScorer scores it), then the
    end-of-turn token that closes it (`end_of_turn_id`; without a tokenizer, ChatML's)."""
    end = tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer)) if tokenizer else CHATML_END
    return name_text(catalog, c3) + end


def answer_ids(tokenizer, catalog: Catalog, c3: int) -> list[int]:
    """The target token ids, exactly as PrefixScorer tokenizes a name: the name alone (no special
    tokens added), then the end-of-turn id. Append them to `prompt_ids(...)` for a training
    example so the loss is on the very tokens inference scores (tokenizing prompt + answer as
    one string could merge tokens across the boundary)."""
    return list(tokenizer(name_text(catalog, c3), add_special_tokens=False)["input_ids"]) + [
        end_of_turn_id(tokenizer)
    ]


def prompt_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered prompt (the template already holds its special tokens)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def common_prefix(prompts: list[str]) -> str:
    """The prompts' shared text up to and including its last newline (a clean token boundary),
    leaving every prompt at least its last character: the scorer reads each row's state at its
    last suffix token, so identical prompts (a run of one pair) must not be all prefix."""
    prefix = os.path.commonprefix([p[:-1] for p in prompts])
    cut = prefix.rfind("\n")
    return prefix[: cut + 1] if cut >= 0 else ""
