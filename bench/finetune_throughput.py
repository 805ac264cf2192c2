"""LoRA training throughput (tokens/s) and model FLOPs utilisation against a matmul ceiling
measured in the same process (issue 3 bar). Runs common/training.py's loop standalone (no Ray,
one worker) on examples of realistic length: the real ones built from a root's counts when
`--root` is given, else prompts rendered for random pairs of the simulator's taxonomy.

    flock /tmp/bench.lock python bench/finetune_throughput.py --steps 12 --batch-size 16
    python bench/finetune_throughput.py --device cuda --batch-size 16 64 --bf16 on   # a GPU box

Prints one JSON line per setting: tokens/s, model GFLOP/s, the fp32 and bf16 matmul ceilings,
MFU against the ceiling of the dtype the matmuls ran in, and against the bf16 ceiling.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import random
import tempfile
import time


def synthetic_examples(tokenizer, n: int, seed: int = 0) -> tuple[list, str]:
    """Prompts for random pairs of a 32-cluster taxonomy catalog, with one RAG successor."""
    from common import prompts, taxonomy
    from common.catalog import Catalog
    from common.prompts import common_prefix

    clusters = taxonomy.all_clusters()[::4][:32]
    catalog = Catalog(
        tuple(range(len(clusters))),
        tuple(c.name for c in clusters),
        tuple(c.description for c in clusters),
    )
    rng = random.Random(seed)
    texts, answers = [], []
    for _ in range(n):
        c1, c2, c3, r = rng.sample(list(catalog.ids), 4)
        texts.append(prompts.render_prompt(tokenizer, catalog, c1, c2, [r]))
        answers.append(prompts.answer_ids(tokenizer, catalog, c3))
    prefix = common_prefix(texts)
    pids = prompts.prompt_ids(tokenizer, prefix)
    return [
        [pids + prompts.prompt_ids(tokenizer, t[len(prefix) :]), a]
        for t, a in zip(texts, answers, strict=True)
    ], prefix


def root_examples(root: str, tokenizer, n: int) -> tuple[list, str]:
    from common.catalog import load_catalog
    from common.config import load_config
    from common.training import DataSpec, build_data
    from common.transitions import list_days, read_transitions

    cfg = load_config(None, [f"root={root}", f"finetune.max_examples={n}"])
    day = list_days(root)[-1] + dt.timedelta(days=1)
    spec = DataSpec.from_config(cfg, day)
    spec.eval_max_pairs = 1
    data = build_data(spec, read_transitions(root), load_catalog(cfg.inputs.clusters), tokenizer)
    return data["train"], data["prefix"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="packaged:smollm2", help="model.name_or_path")
    p.add_argument("--root", default=None, help="Root with transition counts (else synthetic).")
    p.add_argument("--steps", type=int, default=12, help="Timed steps per setting (+1 warm-up).")
    p.add_argument("--batch-size", type=int, nargs="+", default=[16], help="Examples per step.")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bf16", nargs="+", default=["auto"], help="auto/on/off settings to run.")
    p.add_argument("--lora-dropout", type=float, nargs="+", default=[0.0])
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="Where the loop trains (auto: the GPU where torch sees one). Needs no Ray.",
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    from common.config import ModelConfig
    from common.model import (
        cpu_has_bf16,
        load_tokenizer,
        matmul_ceiling,
        pick_device,
        resolve_model,
    )
    from common.training import train_loop_per_worker

    torch.set_num_threads(args.threads)
    device = pick_device(None if args.device == "auto" else args.device == "cuda")
    mcfg = ModelConfig(name_or_path=args.model, dtype="float32")
    model_dir = resolve_model(mcfg)
    tok = load_tokenizer(model_dir)
    ceil = {
        "float32": matmul_ceiling(torch.float32, device, n=1024, seconds=2.0),
        "bfloat16": matmul_ceiling(torch.bfloat16, device, n=512, seconds=2.0),
    }
    for bs in args.batch_size:
        n = bs * (args.steps + 1)
        examples, prefix = (
            root_examples(args.root, tok, n) if args.root else synthetic_examples(tok, n)
        )
        examples = examples[:n]
        for bf16 in args.bf16:
            for drop in args.lora_dropout:
                with tempfile.TemporaryDirectory() as ckpt:
                    config = {
                        "model": mcfg.model_dump(),
                        "examples": examples,
                        "eval": {
                            "suffixes": [],
                            "targets": [],
                            "exclude": [],
                            "names": [],
                            "frequency_scored": [],
                        },
                        "prefix": prefix,
                        "checkpoint_dir": ckpt,
                        "lora_r": args.lora_r,
                        "lora_alpha": 2 * args.lora_r,
                        "lora_dropout": drop,
                        "target_modules": [
                            "q_proj",
                            "k_proj",
                            "v_proj",
                            "o_proj",
                            "up_proj",
                            "down_proj",
                            "gate_proj",
                        ],
                        "learning_rate": 2e-3,
                        "epochs": 1.0,
                        "batch_size": bs,
                        "checkpoint_every_steps": 10_000,
                        "seed": 0,
                        "threads": args.threads,
                        "bf16": bf16,
                        "use_gpu": device == "cuda",
                        "eval_base": False,
                        "skip_first_steps": 1,
                    }
                    t0 = time.perf_counter()
                    out = train_loop_per_worker(config)
                    wall = time.perf_counter() - t0
                gf = out["model_gflops_per_s"]
                print(
                    json.dumps(
                        {
                            "batch_size": bs,
                            "device": out["device"],
                            "bf16": bf16,
                            "bf16_autocast": out["bf16_autocast"],
                            "cpu_has_bf16": cpu_has_bf16(),
                            "lora_dropout": drop,
                            "threads": args.threads,
                            "steps": out["total_steps"],
                            "mean_tokens_per_example": sum(len(p) + len(a) for p, a in examples)
                            / len(examples),
                            "tokens_per_s": round(out["tokens_per_s"], 1),
                            "model_gflops_per_s": round(gf, 2),
                            "ceiling_in_run_gflops": round(out["matmul_ceiling_gflops"], 2),
                            "ceiling_fp32_gflops": round(ceil["float32"] / 1e9, 2),
                            "ceiling_bf16_gflops": round(ceil["bfloat16"] / 1e9, 2),
                            "mfu": round(out["mfu"], 4),
                            "mfu_vs_best_ceiling": round(gf * 1e9 / max(ceil.values()), 4),
                            "wall_s": round(wall, 1),
                            "loadavg": os.getloadavg()[0],
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
