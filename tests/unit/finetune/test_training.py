"""common/training.py without Ray: the diversified examples, and a short LoRA run on a toy mapping
the base model cannot know (tiny model, CPU, seconds) whose saved adapter reproduces its score."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest
import torch

from common import training
from common.catalog import Catalog

START = dt.date(2026, 3, 1)
NAMES = ["sports", "music", "books", "cooking", "travel", "games", "pets", "garden"]
CATALOG = Catalog(tuple(range(10, 18)), tuple(NAMES), tuple([""] * len(NAMES)))


def toy_next(c1: int, c2: int) -> int:
    """The hidden rule: the cluster three after c2 in catalog order (pairs with c1 equal to it
    are left out, so c3 is always novel)."""
    ids = CATALOG.ids
    return ids[(ids.index(c2) + 3) % len(ids)]


def toy_transitions(days: int, per_pair: int = 2) -> pa.Table:
    rows = [
        (START + dt.timedelta(days=d), c1, c2, toy_next(c1, c2), per_pair)
        for d in range(days)
        for c1 in CATALOG.ids
        for c2 in CATALOG.ids
        if c1 != c2 and c1 != toy_next(c1, c2)
    ]
    cols = list(zip(*rows, strict=True))
    return pa.table(
        {
            "day": pa.array(cols[0], pa.date32()),
            "c1": pa.array(cols[1], pa.int32()),
            "c2": pa.array(cols[2], pa.int32()),
            "c3": pa.array(cols[3], pa.int32()),
            "count": pa.array(cols[4], pa.int64()),
        }
    )


def test_diversify_caps_pairs_and_targets_deterministically():
    t = pa.table(
        {
            "day": pa.array([START] * 4, pa.date32()),
            "c1": pa.array([1, 1, 2, 3], pa.int32()),
            "c2": pa.array([2, 2, 3, 4], pa.int32()),
            "c3": pa.array([5, 6, 5, 5], pa.int32()),
            "count": pa.array([100, 50, 3, 1], pa.int64()),
        }
    )
    out = training.diversify(t, max_per_pair=10, max_per_target=8, max_examples=100, seed=0)
    pairs = list(zip(out["c1"].to_pylist(), out["c2"].to_pylist(), strict=True))
    assert pairs.count((1, 2)) == 10  # the head pair is capped
    assert pairs.count((2, 3)) + pairs.count((3, 4)) >= 1  # the tail keeps what the cap allows
    assert out["c3"].to_pylist().count(5) <= 8  # per-target cap
    again = training.diversify(t, max_per_pair=10, max_per_target=8, max_examples=100, seed=0)
    assert out.equals(again)
    assert training.diversify(t, 10, 8, 5, 0).num_rows == 5
    # Three pairs of 6 events, all to c3 = 5: the per-pair cap of 10 keeps all 18, the per-target
    # cap of 8 keeps exactly 8.
    t2 = pa.table(
        {
            "day": pa.array([START] * 3, pa.date32()),
            "c1": pa.array([1, 2, 3], pa.int32()),
            "c2": pa.array([2, 3, 4], pa.int32()),
            "c3": pa.array([5, 5, 5], pa.int32()),
            "count": pa.array([6, 6, 6], pa.int64()),
        }
    )
    assert training.diversify(t2, 10, 8, 100, 0)["c3"].to_pylist() == [5] * 8
    assert training.diversify(t2, 10, 20, 100, 0).num_rows == 18


def test_diversify_half_life_draws_recent_days_more():
    """1,000 transitions 14 days old (c3 = 5) and 1,000 from yesterday (c3 = 6), 400 drawn: alike
    without a half-life (hypergeometric, 200 +- 9 each); with a 2-day half-life yesterday's weigh
    2 ** 6.5 = 91 times more, so nearly all come from it."""
    as_of = START + dt.timedelta(days=15)
    t = pa.table(
        {
            "day": pa.array(
                [START + dt.timedelta(days=1), as_of - dt.timedelta(days=1)], pa.date32()
            ),
            "c1": pa.array([1, 1], pa.int32()),
            "c2": pa.array([2, 2], pa.int32()),
            "c3": pa.array([5, 6], pa.int32()),
            "count": pa.array([1000, 1000], pa.int64()),
        }
    )

    def recent_share(half_life):
        out = training.diversify(
            t, 10_000, 10_000, 400, seed=0, half_life_days=half_life, as_of=as_of
        )
        assert out.num_rows == 400
        return out["c3"].to_pylist().count(6) / 400

    assert 0.43 < recent_share(None) < 0.57
    assert recent_share(2.0) > 0.95
    assert 0.43 < recent_share(1e6) < 0.57  # a half-life far beyond the window: uniform again
    with pytest.raises(ValueError, match="needs as_of"):
        training.diversify(t, 10, 10, 4, seed=0, half_life_days=2.0)


def test_examples_are_the_inference_prompt_plus_answer(tiny_model_dir):
    from common import prompts
    from common.model import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    spec = training.DataSpec(
        day=START + dt.timedelta(days=6),
        window_days=6,
        holdout_days=2,
        rag=True,
        rag_window_days=2,
        max_per_pair=1,
        norag_fraction=0.0,
    )
    data = training.build_data(spec, toy_transitions(6), CATALOG, tok)
    assert data["stats"]["train_window"] == [str(START), str(START + dt.timedelta(days=4))]
    assert len(data["train"]) == 48  # one example per pair (cap 1)
    prompt_ids, answer = data["train"][0]
    text = tok.decode(prompt_ids + answer)
    assert text.startswith(data["prefix"]) and text.endswith(prompts.CHATML_END)
    # RAG names the window's top successor (here the rule's answer itself) once the RAG window
    # [e - 2, e) of the example's day e has counts: days 1 to 3 of the 4 training days (0-3).
    with_rag = [(tok.decode(p), tok.decode(a)) for p, a in data["train"]]
    with_rag = [(p, a) for p, a in with_rag if "Recent next:" in p]
    assert 0 < len(with_rag) < 48
    for p, a in with_rag:
        name = a.removesuffix(prompts.CHATML_END)  # the answer's cluster name
        assert f"\nRecent next: {name}{prompts.CHATML_END}" in p, (p, a)
    # Held-out prompts use the snapshot as of the held-out start; suffix + prefix is the prompt.
    ev = data["eval"]
    c1, c2 = ev["pairs"][0]
    rag = [toy_next(c1, c2)]
    assert data["prefix"] + ev["suffixes"][0] == prompts.render_prompt(tok, CATALOG, c1, c2, rag)
    assert training.frequency_accuracy(ev)["acc@1"] == 1.0


def loop_config(model_dir, data, ckpt_dir, **kw) -> dict:
    cfg = {
        "model": model_dir,
        "examples": data["train"],
        "eval": data["eval"],
        "prefix": data["prefix"],
        "checkpoint_dir": str(ckpt_dir),
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
        "learning_rate": 2e-2,
        "epochs": 1.0,
        "batch_size": 16,
        "checkpoint_every_steps": 20,
        "seed": 0,
        "threads": 1,
        "bf16": "off",
        "eval_batch_size": 64,
    }
    cfg.update(kw)
    return cfg


@pytest.fixture(scope="module")
def trainable_tiny(tmp_path_factory):
    """The tiny model with init std 0.2: at 0.02 its tied head's logits are too flat for a short
    run to move the argmax (tests/tiny_model.py says why)."""
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_trainable"), initializer_range=0.2)


def ten_toy_days(model_dir):
    """(tokenizer, build_data) of the toy's 10 days: 8 to train on, the last 2 held out."""
    from common.model import load_tokenizer

    tok = load_tokenizer(model_dir)
    spec = training.DataSpec(
        day=START + dt.timedelta(days=10),
        window_days=10,
        holdout_days=2,
        rag=False,
        max_per_pair=20,
        max_per_target=400,
        max_examples=2000,
    )
    return tok, training.build_data(spec, toy_transitions(10), CATALOG, tok)


@pytest.mark.timeout(180)
def test_lora_learns_toy_mapping_and_adapter_reloads(trainable_tiny, tmp_path):
    from common.model import load_model

    tiny_model_dir = trainable_tiny
    tok, data = ten_toy_days(tiny_model_dir)
    out = training.train_loop_per_worker(
        loop_config(tiny_model_dir, data, tmp_path / "ckpt", llm_weight=0.0)
    )
    chance = 1 / 6  # six clusters remain once c1 and c2 are excluded
    assert out["base"]["acc@1"] < 0.4
    assert out["heldout"]["acc@1"] >= 0.6 > 3 * chance
    assert out["heldout"]["acc@1"] > out["base"]["acc@1"] + 0.3
    assert out["tokens_per_s"] > 0 and out["mfu"] > 0 and out["device"] == "cpu"
    # The loop's llm_weight reaches the held-out blend line (0: the frequency table's rows).
    assert out["heldout"]["blend"]["acc@1"] == out["frequency"]["acc@1"]
    # The saved PEFT adapter reproduces the score after a reload.
    model = load_model(tiny_model_dir, dtype="float32", adapter=out["adapter_dir"])
    again = training.score_heldout(model, tok, data["eval"], data["prefix"], 64, None)
    assert again["acc@1"] == pytest.approx(out["heldout"]["acc@1"])
    assert "blend" not in again  # llm_weight 1: the adapter's own rows only


@pytest.mark.timeout(180)
def test_a_run_killed_midway_resumes_to_the_same_adapter(trainable_tiny, tmp_path):
    """Without Ray (LocalSession): killed after the step-6 checkpoint, rerun, the loop restores
    the adapter, optimizer, schedule and data position, so the final adapter is bit-identical
    to an uninterrupted run's, LoRA dropout's random masks included; a half-copied checkpoint
    folder left by the kill is no obstacle."""
    from safetensors.torch import load_file

    _, data = ten_toy_days(trainable_tiny)

    def run(name, **kw):
        cfg = loop_config(
            trainable_tiny, data, tmp_path / name, checkpoint_every_steps=3, lora_dropout=0.1, **kw
        )
        return training.train_loop_per_worker({**cfg, "llm_weight": 1.0, "eval_base": False})

    whole = run("whole")
    kill = {"fail_at_step": 7, "fail_marker": str(tmp_path / "killed")}
    with pytest.raises(RuntimeError, match="injected failure at step 7"):
        run("resumed", **kill)
    assert (tmp_path / "killed").exists()  # the hook fired, not some other error
    (tmp_path / "resumed" / "step-00000009.tmp").mkdir()  # the next checkpoint's copy, cut short
    resumed = run("resumed", **kill)
    assert whole["total_steps"] > 9 and resumed["start_step"] == 6
    a = load_file(f"{whole['adapter_dir']}/adapter_model.safetensors")
    b = load_file(f"{resumed['adapter_dir']}/adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["heldout"]["acc@1"] == whole["heldout"]["acc@1"]


def test_heldout_blend_spans_the_counts_and_the_model(trainable_tiny):
    """The held-out "blend" line mixes the model's rows with the frequency table's as jobs.infer
    does: weight 0 scores exactly the frequency table (right on every event of this
    deterministic toy), a weight near 1 the model's own ranking (an untrained model: near
    chance)."""
    from common.model import load_model

    tok, data = ten_toy_days(trainable_tiny)
    ev = data["eval"]
    rows = ev["frequency_scored"]
    assert all(len(r) == 6 for r in rows)  # 8 clusters, c1 and c2 excluded
    assert all(r[i][1] >= r[i + 1][1] for r in rows for i in range(5))  # scores never rise
    assert training.frequency_accuracy(ev)["acc@1"] == 1.0
    model = load_model(trainable_tiny, dtype="float32")
    score = training.score_heldout
    alone = score(model, tok, ev, data["prefix"], 64, None)
    assert alone["acc@1"] < 0.5
    assert score(model, tok, ev, data["prefix"], 64, None, llm_weight=0.0)["blend"]["acc@1"] == 1.0
    near_one = score(model, tok, ev, data["prefix"], 64, None, llm_weight=0.999)["blend"]
    assert near_one["acc@1"] == pytest.approx(alone["acc@1"], abs=0.05)
    assert near_one["n_events"] == alone["n_events"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible: it would train")
def test_use_gpu_without_cuda_stops_before_anything_is_written(tiny_model_dir, tmp_path):
    """The loop run on its own (a GPU box without Ray) with use_gpu=True and no CUDA device stops
    with one clear line instead of training on the CPU, and leaves no checkpoint folder."""
    from common.model import ModelError

    _, data = ten_toy_days(tiny_model_dir)
    config = loop_config(tiny_model_dir, data, tmp_path / "ckpt", use_gpu=True)
    with pytest.raises(ModelError, match=r"a GPU was asked for, but torch .* sees no CUDA device"):
        training.train_loop_per_worker(config)
    assert not (tmp_path / "ckpt").exists()


def test_finetune_gpu_settings_become_ray_train_resources():
    """finetune.use_gpu / gpus_per_worker / cpus_per_worker / num_workers are what Ray Train
    reserves per rank (and what the autoscaler starts GPU nodes for); no GPU unless asked."""
    from common.config import load_config
    from jobs.finetune import scaling_config

    gpu = scaling_config(
        load_config(
            None,
            [
                "finetune.use_gpu=true",
                "finetune.num_workers=4",
                "finetune.gpus_per_worker=1",
                "finetune.cpus_per_worker=8",
            ],
        ).finetune
    )
    assert (gpu.num_workers, gpu.use_gpu) == (4, True)
    assert gpu.resources_per_worker == {"CPU": 8.0, "GPU": 1.0}
    cpu = scaling_config(load_config(None, ["finetune.gpus_per_worker=1"]).finetune)
    assert (cpu.num_workers, cpu.use_gpu, cpu.resources_per_worker) == (1, False, {"CPU": 1.0})


def test_a_model_the_scorer_refuses_fails_before_training(trainable_tiny, tmp_path, monkeypatch):
    """The held-out scorer's load-time check runs before the first step: a model it cannot
    score stops the run at once, not after the last step (where Ray Train would retry it)."""
    from common import scoring
    from common.model import ModelError

    def refuse(self, model):
        raise ModelError("not supported by the verbalizer (test)")

    monkeypatch.setattr(scoring.PrefixScorer, "_check", refuse)
    _, data = ten_toy_days(trainable_tiny)
    cfg = loop_config(trainable_tiny, data, tmp_path / "ckpt", checkpoint_every_steps=1)
    with pytest.raises(ModelError, match="not supported"):
        training.train_loop_per_worker(cfg)
    assert not (tmp_path / "ckpt").exists() or not list((tmp_path / "ckpt").iterdir())
