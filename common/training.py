"""LoRA fine-tuning data and loop, pure torch + PEFT (issue 3 items 4-5; docs/contracts.md
"Data flow").

Data (`build_data`): the transitions of [d - W, d) give examples (c1, c2) -> c3. Events are
sampled without replacement under a cap per pair and per target (the head must not drown the
tail), the last `holdout_days` days are held out by time. Every example is exactly the prompt
inference renders (common/prompts.py, tokenized as prefix + suffix like common/scoring.py's
PrefixScorer does) followed by the answer tokens; the loss is on the answer tokens only. The
RAG successors of an example of day e come from the retrieval snapshot as of e (counts of
[e - W_rag, e)): what a table built that day would have named, nothing of day e or later.

Loop (`train_loop_per_worker(config)`): runs inside Ray Train (jobs/finetune.py passes
`use_ray=True`; rank/world, DDP, `ray.train.report` with checkpoints, resume from
`ray.train.get_checkpoint()`) and standalone without Ray (checkpoints in a local folder, same
resume), so a GPU box without Ray can run it. Nothing here imports Ray unless asked to.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common.prompts import common_prefix

log = logging.getLogger(__name__)
DAY = dt.timedelta(days=1)


# =============================================================================== examples
def diversify(
    events: pa.Table,
    max_per_pair: int,
    max_per_target: int,
    max_examples: int,
    seed: int,
    half_life_days: float | None = None,
    as_of: dt.date | None = None,
) -> pa.Table:
    """Single events (day, c1, c2, c3) drawn from daily counts under the caps.

    Each counted transition is one event; a random key orders them, then per (c1, c2) only the
    first `max_per_pair` are kept, then per c3 the first `max_per_target`, then the first
    `max_examples` overall. So a head pair keeps at most its cap (drawn in proportion to its
    successors) while a tail pair keeps all it has. Deterministic for a seed.

    With `half_life_days`, an event of age a days before `as_of` is drawn with weight
    0.5 ** (a / half_life) (exponential keys scaled by 1 / weight: weighted sampling without
    replacement), so a window that spans a change of trends teaches mostly the recent ones."""
    if half_life_days is not None and as_of is None:
        raise ValueError("diversify: half_life_days needs as_of, the day ages are counted from")
    if events.num_rows == 0:
        return pa.table(
            {
                "day": pa.array([], pa.date32()),
                **{c: pa.array([], pa.int32()) for c in ("c1", "c2", "c3")},
            }
        )
    counts = events["count"].to_numpy()
    rows = np.repeat(np.arange(events.num_rows), counts)
    rng = np.random.default_rng(seed)
    if half_life_days is None:
        key = rng.random(len(rows))
    else:
        days = events["day"].cast(pa.int32()).to_numpy()[rows]
        age = (as_of - dt.date(1970, 1, 1)).days - days
        key = rng.exponential(size=len(rows)) * np.exp2(age / half_life_days)
    c1 = events["c1"].to_numpy().astype(np.int64)[rows]
    c2 = events["c2"].to_numpy().astype(np.int64)[rows]
    c3 = events["c3"].to_numpy().astype(np.int64)[rows]
    keep = _first_per_group((c1 << 32) | c2, key, max_per_pair)
    keep = keep[_first_per_group(c3[keep], key[keep], max_per_target)]
    keep = keep[np.argsort(key[keep], kind="stable")[:max_examples]]
    keep.sort()
    return events.take(pa.array(rows[keep])).select(["day", "c1", "c2", "c3"])


def _first_per_group(group: np.ndarray, key: np.ndarray, cap: int) -> np.ndarray:
    """Indices of the `cap` smallest keys in each group."""
    order = np.lexsort((key, group))
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    rank = np.arange(len(g)) - np.repeat(starts, np.diff(np.r_[starts, len(g)]))
    return np.sort(order[rank < cap])


def snapshot_as_of(transitions: pa.Table, day: dt.date, window_days: int, top_n: int) -> dict:
    """The retrieval snapshot for `day`, built in memory from the counts of [day - W, day)."""
    from common import retrieval

    lo = pa.scalar(day - window_days * DAY, pa.date32())
    hi = pa.scalar(day, pa.date32())
    d = transitions["day"]
    window = transitions.filter(pc.and_(pc.greater_equal(d, lo), pc.less(d, hi)))
    return retrieval.build_snapshot(window, day, window_days, top_n)


@dataclass
class DataSpec:
    """What `build_data` needs besides the counts: the cfg sections, flattened."""

    day: dt.date
    window_days: int = 30
    holdout_days: int = 3
    max_per_pair: int = 8
    max_per_target: int = 200
    max_examples: int = 4000
    half_life_days: float | None = None
    eval_max_pairs: int = 128
    rag: bool = True
    rag_top: int = 1
    rag_variant: str = "frequency"
    rag_window_days: int = 14
    rag_top_n: int = 10
    norag_fraction: float = 0.25
    seed: int = 0

    @classmethod
    def from_config(cls, cfg, day: dt.date) -> DataSpec:
        ft = cfg.finetune
        return cls(
            day=day,
            window_days=ft.window_days,
            holdout_days=min(ft.holdout_days, ft.window_days - 1),
            max_per_pair=ft.max_per_pair,
            max_per_target=ft.max_per_target,
            max_examples=ft.max_examples,
            half_life_days=ft.half_life_days,
            eval_max_pairs=ft.eval_max_pairs,
            rag=cfg.prompt.rag and cfg.prompt.rag_top > 0,
            rag_top=cfg.prompt.rag_top,
            rag_variant=cfg.prompt.rag_variant,
            rag_window_days=cfg.retrieval.window_days,
            rag_top_n=max(cfg.retrieval.top_n, cfg.prompt.rag_top),
            norag_fraction=ft.norag_fraction,
            seed=ft.seed,
        )

    def windows(self) -> tuple[dt.date, dt.date, dt.date]:
        """(train start, held-out start, end): train [start, hold), held out [hold, day)."""
        start = self.day - self.window_days * DAY
        return start, self.day - max(self.holdout_days, 1) * DAY, self.day


def build_data(spec: DataSpec, transitions: pa.Table, catalog, tokenizer) -> dict:
    """Tokenized training examples and the held-out evaluation set, as plain lists (they travel
    in the Ray Train config). `transitions` must cover [start - rag_window, day).

    Returns {"train": [[prompt ids, answer ids], ...], "prefix", "eval": {...}, "stats": {...}}.
    """
    from common import prompts
    from common.retrieval import rag_for, retrieved_lists

    start, hold, end = spec.windows()
    d = transitions["day"]

    def between(lo, hi):
        return transitions.filter(
            pc.and_(
                pc.greater_equal(d, pa.scalar(lo, pa.date32())),
                pc.less(d, pa.scalar(hi, pa.date32())),
            )
        )

    known = pa.array(list(catalog.ids), pa.int32())
    train_counts = between(start, hold)
    train_counts = train_counts.filter(
        pc.and_(
            pc.is_in(train_counts["c1"], known),
            pc.and_(pc.is_in(train_counts["c2"], known), pc.is_in(train_counts["c3"], known)),
        )
    )
    picked = diversify(
        train_counts,
        spec.max_per_pair,
        spec.max_per_target,
        spec.max_examples,
        spec.seed,
        spec.half_life_days,
        hold,
    )
    rng = np.random.default_rng(spec.seed + 1)
    plain = rng.random(picked.num_rows) < (spec.norag_fraction if spec.rag else 1.0)

    lists_by_day: dict[dt.date, dict] = {}
    texts, answers = [], []
    for i, (day, c1, c2, c3) in enumerate(
        zip(*(picked[c].to_pylist() for c in ("day", "c1", "c2", "c3")), strict=True)
    ):
        rag = None
        if not plain[i]:
            if day not in lists_by_day:
                snap = snapshot_as_of(transitions, day, spec.rag_window_days, spec.rag_top_n)
                lists_by_day[day] = retrieved_lists(snap, spec.rag_variant, spec.rag_top, catalog)
            rag = rag_for(lists_by_day[day], c1, c2, spec.rag_top)
        texts.append(prompts.render_prompt(tokenizer, catalog, c1, c2, rag))
        answers.append(prompts.answer_ids(tokenizer, catalog, c3))

    evalset = build_eval(spec, between(hold, end), transitions, hold, catalog, tokenizer)
    prefix = common_prefix(texts + evalset["prompts"]) if texts or evalset["prompts"] else ""
    prefix_ids = prompts.prompt_ids(tokenizer, prefix) if prefix else []
    train = [
        [prefix_ids + prompts.prompt_ids(tokenizer, t[len(prefix) :]), a]
        for t, a in zip(texts, answers, strict=True)
    ]
    evalset["suffixes"] = [p[len(prefix) :] for p in evalset.pop("prompts")]
    n_tok = sum(len(p) + len(a) for p, a in train)
    return {
        "train": train,
        "prefix": prefix,
        "eval": evalset,
        "stats": {
            "train_window": [str(start), str(hold)],
            "holdout_window": [str(hold), str(end)],
            "train_events": int(pc.sum(train_counts["count"]).as_py() or 0),
            "train_pairs": len(
                set(zip(picked["c1"].to_pylist(), picked["c2"].to_pylist(), strict=True))
            ),
            "train_targets": len(set(picked["c3"].to_pylist())),
            "examples": len(train),
            "examples_without_rag": int(plain.sum()) if spec.rag else len(train),
            "train_tokens": n_tok,
            "mean_example_tokens": n_tok / len(train) if train else 0.0,
            "prefix_tokens": len(prefix_ids),
        },
    }


def build_eval(spec, held: pa.Table, transitions, hold: dt.date, catalog, tokenizer) -> dict:
    """The held-out slice: the `eval_max_pairs` most frequent pairs of [hold, day), their events
    per successor, prompts with the snapshot as of `hold` (what a table built then would name),
    and the frequency table's top 10 (with the serving backoff: c2's global top, then overall)."""
    from common import prompts
    from common.lookup import GLOBAL, padded_rows, rows_by_key
    from common.publish import build_backoff
    from common.retrieval import rag_for, retrieved_lists
    from common.transitions import top_pairs

    held = held.filter(
        pc.and_(
            pc.is_in(held["c1"], pa.array(list(catalog.ids), pa.int32())),
            pc.and_(
                pc.is_in(held["c2"], pa.array(list(catalog.ids), pa.int32())),
                pc.is_in(held["c3"], pa.array(list(catalog.ids), pa.int32())),
            ),
        )
    )
    pairs = top_pairs(held, spec.eval_max_pairs)
    per = held.group_by(["c1", "c2", "c3"]).aggregate([("count", "sum")])
    wanted = set(pairs)
    targets: dict[tuple[int, int], dict[int, int]] = {}
    for a, b, c, n in zip(
        *(per[k].to_pylist() for k in ("c1", "c2", "c3", "count_sum")), strict=True
    ):
        if (a, b) in wanted:
            targets.setdefault((a, b), {})[c] = n
    snap = snapshot_as_of(transitions, hold, spec.rag_window_days, spec.rag_top_n)
    lists = retrieved_lists(snap, spec.rag_variant, spec.rag_top, catalog) if spec.rag else {}
    freq = rows_by_key(snap["frequency"], ["c1", "c2"])
    window = transitions.filter(
        pc.and_(
            pc.greater_equal(
                transitions["day"], pa.scalar(hold - spec.rag_window_days * DAY, pa.date32())
            ),
            pc.less(transitions["day"], pa.scalar(hold, pa.date32())),
        )
    )
    # the backoff lists jobs.infer publishes with the table: c2's global top, then overall
    backoff = rows_by_key(build_backoff(snap["global"], window, catalog, 10), ["c2"])
    freq_scored = []
    for a, b in pairs:
        served = (
            (freq.get((a, b), []), "frequency"),
            (backoff.get((b,), []), "backoff"),
            (backoff.get((GLOBAL,), []), "backoff"),
        )
        row = padded_rows(served, (a, b), 10, catalog)
        freq_scored.append([[catalog.position(c), score] for c, score, _ in row])
    return {
        "pairs": [list(p) for p in pairs],
        "exclude": [[catalog.position(a), catalog.position(b)] for a, b in pairs],
        # successor positions in catalog order and their held-out event counts, per pair
        "targets": [
            [[catalog.position(c), n] for c, n in sorted(targets[p].items())] for p in pairs
        ],
        # the frequency table's row as served (padded by its backoff): [position, score], best first
        "frequency_scored": freq_scored,
        "prompts": [
            prompts.render_prompt(
                tokenizer, catalog, a, b, rag_for(lists, a, b, spec.rag_top) if spec.rag else None
            )
            for a, b in pairs
        ],
        "names": list(catalog.names),
    }


def accuracy(evalset: dict, predictions: list[list[int]]) -> dict:
    """Event-weighted acc@1 and hit@5 of ranked catalog positions per held-out pair."""
    total = hit1 = hit5 = 0
    for targets, ranked in zip(evalset["targets"], predictions, strict=True):
        for pos, n in targets:
            total += n
            hit1 += n * (len(ranked) > 0 and ranked[0] == pos)
            hit5 += n * (pos in ranked[:5])
    return {
        "acc@1": hit1 / total if total else 0.0,
        "hit@5": hit5 / total if total else 0.0,
        "n_events": total,
    }


def frequency_accuracy(evalset: dict) -> dict:
    """acc@1 and hit@5 of the frequency table (as served, with its backoff) on the slice."""
    return accuracy(evalset, [[pos for pos, _ in row] for row in evalset["frequency_scored"]])


# =============================================================================== batches
def plan_batches(lengths: list[int], batch_size: int, world: int, epochs: float, seed: int):
    """Global batches (lists of example indices, `batch_size * world` each, the last may be
    short) for `epochs` passes. Examples are shuffled per epoch, then grouped by length inside
    chunks of 16 batches, so right padding wastes little; batch order is shuffled again."""
    n = len(lengths)
    if n == 0:
        return []
    g = batch_size * world
    steps = max(1, math.ceil(epochs * n / g))
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(n) for _ in range(math.ceil(steps * g / n))])
    order = order[: steps * g] if steps * g <= len(order) else order
    lens = np.asarray(lengths)
    batches = []
    chunk = 16 * g
    for s in range(0, len(order), chunk):
        part = order[s : s + chunk]
        part = part[np.argsort(lens[part], kind="stable")]
        group = [part[i : i + g].tolist() for i in range(0, len(part), g)]
        rng.shuffle(group)
        batches.extend(group)
    return batches[:steps]


def collate(examples: list, idx: list[int], pad_id: int):
    """Right-padded input ids (B, T) and the flat positions/targets of the answer tokens.

    Right padding needs no attention mask: under causal attention a real token only sees
    earlier positions, all real. Position p predicts token p + 1, so an answer token at p is
    scored by the hidden state at p - 1; the head runs on those positions only."""
    import torch

    seqs = [examples[i][0] + examples[i][1] for i in idx]
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    pos, tgt = [], []
    for b, i in enumerate(idx):
        p, a = examples[i]
        ids[b, : len(p) + len(a)] = torch.tensor(p + a)
        pos.extend(b * T + len(p) - 1 + j for j in range(len(a)))
        tgt.extend(a)
    return ids, torch.tensor(pos), torch.tensor(tgt), [len(s) for s in seqs]


class FlopCounter:
    """Model FLOPs of a LoRA step, counted from the shapes (padding excluded): per real token
    2 x frozen layer weights forward + 2 x backward (input gradients only: frozen weights get no
    weight gradient), LoRA weights 2 forward + 4 backward, causal attention 2·H·L(L+1) per
    sequence per layer forward and twice that backward; the output head 2·V·H forward and 2·V·H
    backward on answer positions only (the loss needs no logits elsewhere)."""

    def __init__(self, model):
        cfg = model.config
        self.hidden, self.layers = cfg.hidden_size, cfg.num_hidden_layers
        self.vocab = cfg.vocab_size
        self.frozen = self.lora = 0
        for name, p in model.named_parameters():
            if "lora_" in name:
                self.lora += p.numel()
            elif ".layers." in name and p.dim() == 2:
                self.frozen += p.numel()

    def step(self, lengths: list[int], n_answer: int) -> float:
        tokens = sum(lengths)
        attn = sum(2.0 * self.hidden * L * (L + 1) for L in lengths) * self.layers
        return (
            tokens * (4.0 * self.frozen + 6.0 * self.lora)
            + 3.0 * attn
            + n_answer * 4.0 * self.vocab * self.hidden
        )


# =============================================================================== sessions
class LocalSession:
    """Ray-free stand-in: rank 0 of 1, checkpoints as `step-NNNNNNNN` folders in a local dir."""

    rank, world = 0, 1

    def __init__(self, checkpoint_dir: str, use_gpu: bool = False):
        from common.model import pick_device

        self.device = pick_device(use_gpu)  # use_gpu without a CUDA device: a ModelError
        self.dir = checkpoint_dir
        os.makedirs(self.dir, exist_ok=True)
        self.last_metrics: dict = {}

    def latest(self) -> str | None:
        done = sorted(n for n in os.listdir(self.dir) if n.startswith("step-") and "." not in n)
        return os.path.join(self.dir, done[-1]) if done else None

    @contextlib.contextmanager
    def restored(self):
        """The newest finished checkpoint, read in place (None before the first)."""
        yield self.latest()

    def prepare(self, module):
        return module.to(self.device)

    def report(self, metrics: dict, checkpoint: str | None) -> None:
        self.last_metrics = metrics
        if checkpoint:
            target = os.path.join(self.dir, f"step-{metrics['step']:08d}")
            # A .tmp left by a process killed mid-copy would make every retry fail here.
            for stale in (target, target + ".tmp"):
                shutil.rmtree(stale, ignore_errors=True)
            shutil.copytree(checkpoint, target + ".tmp")
            os.rename(target + ".tmp", target)
            for old in sorted(n for n in os.listdir(self.dir) if n.startswith("step-"))[:-2]:
                shutil.rmtree(os.path.join(self.dir, old), ignore_errors=True)


class RaySession:
    """Ray Train glue: rank/world from the context, DDP through prepare_model, report/restore."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = str(ray.train.torch.get_device())

    @contextlib.contextmanager
    def restored(self):
        """The checkpoint Ray Train restores (None on a fresh run). `as_directory` reads a local
        one in place and deletes its download of a remote one (S3) afterwards: every resume of
        every worker would otherwise leave a copy in the node's temp folder."""
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as path:
            yield path

    def prepare(self, module):
        import ray.train.torch

        return ray.train.torch.prepare_model(module)

    def report(self, metrics: dict, checkpoint: str | None) -> None:
        import ray.train

        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(checkpoint) if checkpoint else None,
        )


# =============================================================================== the loop
def autocast_dtype(setting: str, device: str):
    """bf16 when asked ("on"), or on "auto" where matrix products have hardware bf16."""
    import torch

    from common.model import pick_dtype

    if setting == "off":
        return None
    if setting == "on":
        return torch.bfloat16
    # Where the model itself would load in bf16 (hardware bf16 only: not a V100's emulation).
    return torch.bfloat16 if pick_dtype("auto", device) == torch.bfloat16 else None


def _answer_loss_module(peft_model):
    import torch

    from common.scoring import logit_transform, transform_logits

    class AnswerLoss(torch.nn.Module):
        """Loss on the answer tokens only; DDP wraps this, so its forward is the one synced."""

        def __init__(self, lm):
            super().__init__()
            self.lm = lm
            self.transform = logit_transform(lm.get_base_model().config)

        def forward(self, ids, pos, tgt):
            base = self.lm.get_base_model()
            h = base.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
            h = h.reshape(-1, h.shape[-1])[pos]
            # The model's own output transform (Granite, Cohere, Gemma-2), as the scorer applies it.
            logits = transform_logits(base.get_output_embeddings()(h).float(), *self.transform)
            return torch.nn.functional.cross_entropy(logits, tgt)

    return AnswerLoss(peft_model)


def score_heldout(
    lm, tokenizer, evalset: dict, prefix: str, batch_size: int, amp, llm_weight: float = 1.0
) -> dict:
    """Held-out acc@1 / hit@5, ranked the way jobs/infer.py ranks: PrefixScorer.top_k (every
    cluster name's constrained-decoding probability, c1 and c2 excluded). With `llm_weight` < 1
    also under "blend": the same for the rows mixed with the frequency table's as jobs.infer mixes
    them (common/blend.py), i.e. the table a RAG strategy publishes."""
    import torch

    from common.blend import blend_rows
    from common.scoring import PrefixScorer

    if not evalset["suffixes"]:
        return {"acc@1": 0.0, "hit@5": 0.0, "n_events": 0}
    device = lm.get_output_embeddings().weight.device
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        scorer = PrefixScorer(lm, tokenizer, evalset["names"], prefix)
        rows = []
        for i in range(0, len(evalset["suffixes"]), batch_size):
            idx, logp = scorer.top_k(
                evalset["suffixes"][i : i + batch_size], evalset["exclude"][i : i + batch_size], 10
            )
            rows.extend(
                list(zip(r, p, strict=True))
                for r, p in zip(idx.tolist(), logp.float().exp().tolist(), strict=True)
            )
    out = accuracy(evalset, [[pos for pos, _ in row] for row in rows])
    if llm_weight < 1:
        mixed = [
            [pos for pos, _ in blend_rows(row, freq, llm_weight, 10)]
            for row, freq in zip(rows, evalset["frequency_scored"], strict=True)
        ]
        out["blend"] = {"llm_weight": llm_weight, **accuracy(evalset, mixed)}
    return out


def train_loop_per_worker(config: dict) -> dict:
    """One worker's LoRA run. `config` (plain data, see jobs/finetune.py `loop_config`): model,
    lora, optimisation and checkpoint settings, `examples` [[prompt ids, answer ids], ...],
    `prefix` and `eval` from `build_data`, `use_ray`. Returns the final metrics (standalone:
    with `adapter_dir`, the last checkpoint's adapter folder)."""
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    from common.model import as_model_dir, load_model, load_tokenizer, matmul_ceiling
    from common.threads import cpu_cores, node_resources, threads_for

    session = (
        RaySession()
        if config.get("use_ray")
        else LocalSession(config["checkpoint_dir"], config.get("use_gpu", False))
    )
    rank, world, device = session.rank, session.world, session.device
    threads = config.get("threads") or threads_for(
        world, config.get("cpus_per_worker", 1.0), 0.0, node_resources(), cpu_cores()
    )
    if str(device) == "cpu":
        torch.set_num_threads(threads)
    torch.manual_seed(config["seed"])
    amp = autocast_dtype(config.get("bf16", "auto"), device)
    model_dir = as_model_dir(config["model"])
    model = load_model(model_dir, dtype=amp or torch.float32, device=device)
    tokenizer = load_tokenizer(model_dir)
    lora = LoraConfig(
        r=config["lora_r"],
        lora_alpha=config["lora_alpha"],
        lora_dropout=config["lora_dropout"],
        target_modules=list(config["target_modules"]),
        task_type="CAUSAL_LM",
    )
    peft = get_peft_model(model, lora)  # adapters in fp32 even over bf16 weights
    flops = FlopCounter(peft.get_base_model())

    examples = config["examples"]
    batches = plan_batches(
        [len(p) + len(a) for p, a in examples],
        config["batch_size"],
        world,
        config["epochs"],
        config["seed"],
    )
    total = len(batches)
    warmup = max(1, int(config.get("warmup_fraction", 0.05) * total))

    def lr_at(step: int) -> float:  # linear warm-up, then linear decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        return 1.0 - 0.9 * (step - warmup) / max(1, total - warmup)

    params = [p for p in peft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config["learning_rate"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    start = 0
    with session.restored() as restored:
        if restored:
            set_peft_model_state_dict(
                peft, load_file(os.path.join(restored, "adapter", "adapter_model.safetensors"))
            )
            # Tensors and numbers only (no pickled code from a store); optimizer.load_state_dict
            # moves the moments to the parameters' device.
            state = torch.load(
                os.path.join(restored, "state.pt"), map_location="cpu", weights_only=True
            )
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start = int(state["step"])
            log.info("rank %d resumes from the checkpoint of step %d", rank, start)
    if rank == 0 and config["eval"]["suffixes"] and start < total:
        # The scorer checks at load that it scores this model as the model itself does (a
        # ModelError otherwise): fail before training, not after the last step.
        from common.scoring import PrefixScorer

        with torch.autocast(torch.device(device).type, dtype=amp or torch.float32,
                            enabled=amp is not None):
            PrefixScorer(peft.get_base_model(), tokenizer, config["eval"]["names"],
                         config["prefix"])
    peft.train()
    module = session.prepare(_answer_loss_module(peft))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def save(step: int) -> str | None:
        if rank != 0:
            return None
        out = tempfile.mkdtemp(prefix="ft-ckpt-")
        peft.save_pretrained(os.path.join(out, "adapter"))
        torch.save(
            {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step},
            os.path.join(out, "state.pt"),
        )
        return out

    t_train = time.perf_counter()
    tok_sum = tok_all = flop_sum = busy = 0.0
    last: dict = {}
    for step in range(start, total):
        if config.get("fail_at_step") == step and rank == world - 1:
            marker = config.get("fail_marker")
            if marker and not os.path.exists(marker):
                open(marker, "w").close()
                raise RuntimeError(f"injected failure at step {step} (test hook)")
        idx = batches[step][rank::world] or batches[step][:1]
        ids, pos, tgt, lengths = collate(examples, idx, pad)
        # LoRA dropout's masks drawn from (seed, step, rank) alone: a resumed run draws the same
        # ones as an uninterrupted run, with no RNG state in the checkpoint.
        torch.manual_seed(config["seed"] * 1_000_003 + step * world + rank)
        t0 = time.perf_counter()
        with torch.autocast(
            torch.device(device).type, dtype=amp or torch.float32, enabled=amp is not None
        ):
            loss = module(ids.to(device), pos.to(device), tgt.to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        dt_s = time.perf_counter() - t0
        real = sum(lengths)
        f = flops.step(lengths, len(tgt))
        loss_sum, answers, tokens = float(loss.item()) * len(tgt), float(len(tgt)), float(real)
        if world > 1:
            # The loss and tokens of every worker's share, not rank 0's alone: one tiny
            # all-reduce beside DDP's gradient one.
            stats = torch.tensor([loss_sum, answers, tokens], dtype=torch.float64, device=device)
            torch.distributed.all_reduce(stats)
            loss_sum, answers, tokens = stats.tolist()
        if step - start >= config.get("skip_first_steps", 0):  # warm-up steps are not timed
            tok_sum, flop_sum, busy = tok_sum + real, flop_sum + f, busy + dt_s
            tok_all += tokens
        last = {
            "step": step + 1,
            "total_steps": total,
            "start_step": start,
            "loss": loss_sum / answers,
            "lr": sched.get_last_lr()[0],
            "tokens_per_s": real / dt_s,
            "tokens_per_s_all_workers": tokens / dt_s,
            "padding_share": 1.0 - real / ids.numel(),
            "gflops_per_s": f / dt_s / 1e9,
        }
        if rank == 0:
            log.info(
                "step %d/%d loss %.4f %.0f tokens/s (worker %d)",
                step + 1,
                total,
                last["loss"],
                last["tokens_per_s"],
                rank,
            )
        ckpt = save(step + 1) if (step + 1) % config["checkpoint_every_steps"] == 0 else None
        session.report(last, ckpt)
        if ckpt:
            shutil.rmtree(ckpt, ignore_errors=True)

    # The final adapter (always checkpointed), with the held-out scores of rank 0.
    final = {
        "step": total,
        "total_steps": total,
        "start_step": start,
        "final": True,
        "train_seconds": time.perf_counter() - t_train,
        "train_tokens": tok_sum,  # this worker's (rank 0's in the published metrics)
        "train_tokens_all_workers": tok_all,
        "tokens_per_s": tok_sum / busy if busy else 0.0,
        "tokens_per_s_all_workers": tok_all / busy if busy else 0.0,
        "model_gflops_per_s": flop_sum / busy / 1e9 if busy else 0.0,
        "loss": last.get("loss"),
        "threads": threads,
        "bf16_autocast": amp is not None,
        "device": str(device),
        "world": world,
    }
    if rank == 0:
        dtype = amp or torch.float32
        ceiling = matmul_ceiling(dtype, device)
        final["matmul_ceiling_gflops"] = ceiling / 1e9
        final["matmul_dtype"] = str(dtype).replace("torch.", "")
        final["mfu"] = flop_sum / busy / ceiling if busy and ceiling else 0.0
        ev, prefix, bs = config["eval"], config["prefix"], config.get("eval_batch_size", 32)
        t0 = time.perf_counter()
        lm = peft.get_base_model()
        weight = config.get("llm_weight", 1.0)
        final["heldout"] = score_heldout(lm, tokenizer, ev, prefix, bs, amp, weight)
        if config.get("eval_base", True):
            with peft.disable_adapter():
                final["base"] = score_heldout(lm, tokenizer, ev, prefix, bs, amp, weight)
        final["frequency"] = frequency_accuracy(ev)
        final["eval_seconds"] = time.perf_counter() - t0
        log.info(
            "held-out: %s", json.dumps({k: final.get(k) for k in ("heldout", "base", "frequency")})
        )
    ckpt = save(total)
    session.report(final, ckpt)
    if ckpt:
        shutil.rmtree(ckpt, ignore_errors=True)
    if isinstance(session, LocalSession):
        final["adapter_dir"] = os.path.join(session.latest(), "adapter")
    return final
