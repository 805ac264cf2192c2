"""A tiny random Llama model and a locally trained tokenizer, for tests (no download).

`build_tiny_model(path)` writes a model directory that `common.model.load_model` and
`load_tokenizer` read like any Hugging Face directory: the same architecture as the packaged
SmolLM2 (Llama, tied embeddings, a ChatML chat template), but ~100k parameters, so a LoRA run
or a batch of prompts takes well under a second on CPU. Same arguments, same files.
"""

from __future__ import annotations

from pathlib import Path

# ChatML, as SmolLM2-Instruct uses; the assistant turn start is the generation prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]

# Words the prompts and the test catalogs use, so that the BPE merges make short token sequences.
_CORPUS = """
system user assistant You recommend the next interest cluster a user will explore.
Answer with one cluster name only. The user explored then. Clusters often chosen next.
Previous interest: Current interest: Next interest: Answer: Recently frequent next:
cluster clusters interest interests name names description descriptions next previous
sports football basketball tennis running cycling hiking camping fishing travel hotels flights
music rock jazz classical pop guitar piano drums books fiction poetry history science
cooking baking recipes coffee tea wine beer gardening plants flowers pets dogs cats birds
fashion shoes jackets watches jewelry beauty skincare fitness yoga gym movies series anime
games puzzles chess cards toys lego kids baby home furniture lighting kitchen tools cars bikes
phones laptops cameras audio headphones computers software programming art painting drawing
photography design crafts knitting sewing outdoor garden health news finance investing
alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma
tau upsilon phi chi psi omega red green blue yellow purple orange black white gray brown
one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9 - , . : ; ( ) / & '
"""


def _train_tokenizer(seed_corpus: str, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeat lines so pair counts are stable; training is deterministic for a fixed corpus.
    lines = [line for line in seed_corpus.splitlines() if line.strip()] * 4
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


def build_tiny_model(
    path: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    vocab_size: int = 640,
    seed: int = 0,
    initializer_range: float = 0.02,
) -> str:
    """Write a tiny random LlamaForCausalLM + tokenizer to `path`; returns the path as str.

    `initializer_range` is the weights' init std. At the default (0.02, as real checkpoints are
    initialised) the tied output head gives logits within about +-1.3 (|normed h| ~ 8 times
    |embedding row| ~ 0.16), too flat for a short LoRA run to show learning; tests that train use
    ~0.2."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(_CORPUS, vocab_size),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<pad>",
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    return str(path)
