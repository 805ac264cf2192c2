"""Instance-level prompts, one per cluster pair (c1, c2), and the answer the model must produce.

SYSTEM.md "Retrieval (RAG) snapshot" and issue 3 item 2. Fine-tuning (jobs/finetune.py) and bulk
inference (jobs/infer.py) both build their text here, so what the model is trained on is exactly
what it is scored on. Layout, in the model's own chat template:

    system:    the task, the same for every pair               } the shared prefix: computed once
    user:      Previous: <c1 name> - <c1 description>            per bulk run (PrefixScorer's KV
               Current: <c2 name> - <c2 description>             cache), so only the user turn is
               Recent next: <retrieved name>[; <name> ...]       paid for per pair
    assistant: <answer: a cluster name>

Short on purpose: every token is paid for per pair per refresh (992 pairs for 32 clusters,
14,280 for 120). No list of all clusters: answers are tied to real clusters by scoring only
cluster names (common/scoring.py), and a list would add ~1k tokens to every training example.
The RAG line is left out when no successor was retrieved, so the no-RAG prompt of a pair is the
RAG prompt with no evidence. Every line ends with a newline, so the cut that jobs/infer.py
`common_prefix` makes (after the last shared newline) is a clean token boundary.
"""

from __future__ import annotations

import re

from common.catalog import Catalog

SYSTEM = "Predict the next interest cluster a user explores. Answer with its name only."
CHATML_END = "<|im_end|>"  # ends a turn in ChatML (SmolLM2, tests/tiny_model.py); the eos token
MAX_DESCRIPTION_CHARS = 80
RAG_SEPARATOR = "; "  # names may hold commas (MovieLens genre combinations: "Action, Comedy & War")


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


def describe(catalog: Catalog, cluster_id: int) -> str:
    """`name - description` (or the name alone when the description is empty)."""
    name = catalog.name(cluster_id)
    desc = short_description(catalog.description(cluster_id))
    return f"{name} - {desc}" if desc else name


def user_text(catalog: Catalog, c1: int, c2: int, rag: list[int] | None) -> str:
    """The pair-specific user turn; `rag` names the retrieved successors in rank order."""
    lines = [f"Previous: {describe(catalog, c1)}", f"Current: {describe(catalog, c2)}"]
    if rag:
        names = RAG_SEPARATOR.join(catalog.name(c) for c in rag)
        lines.append(f"Recent next: {names}")
    return "\n".join(lines)


def messages(catalog: Catalog, c1: int, c2: int, rag: list[int] | None) -> list[dict]:
    """Chat messages of the prompt (an explicit system turn: templates such as SmolLM2's
    otherwise insert a long default one)."""
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": user_text(catalog, c1, c2, rag)},
    ]


def render_prompt(tokenizer, catalog: Catalog, c1: int, c2: int, rag: list[int] | None) -> str:
    """The chat-templated prompt text for (c1, c2), ending exactly where the answer begins (after
    the template's assistant header). `rag`: retrieved successor ids (None or [] for no RAG)."""
    return tokenizer.apply_chat_template(
        messages(catalog, c1, c2, rag), add_generation_prompt=True, tokenize=False
    )


def answer_text(catalog: Catalog, c3: int, tokenizer=None) -> str:
    """The target text: the cluster name (as the catalog spells it: PrefixScorer scores the raw
    names), then the end-of-turn token that closes it.

    common/scoring.py PrefixScorer scores each name as its tokens followed by the tokenizer's
    eos id (`<|im_end|>` for ChatML models); this is that, as text. `tokenizer` picks its eos
    token; without one, ChatML's."""
    end = tokenizer.eos_token if tokenizer is not None else CHATML_END
    return catalog.name(c3) + end


def answer_ids(tokenizer, catalog: Catalog, c3: int) -> list[int]:
    """The target token ids, exactly as PrefixScorer tokenizes a name: the name alone (no special
    tokens added), then the eos id. Append them to `prompt_ids(...)` for a training example so the
    loss is on the very tokens inference scores (tokenizing prompt + answer as one string could
    merge tokens across the boundary)."""
    return list(tokenizer(catalog.name(c3), add_special_tokens=False)["input_ids"]) + [
        tokenizer.eos_token_id
    ]


def prompt_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered prompt (the template already holds its special tokens)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
