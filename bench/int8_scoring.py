"""Benchmark: int8 dynamic quantisation of the bulk scorer against fp32, speed and agreement.

    python -m bench.int8_scoring [--clusters 32] [--pairs 384] [--batch-size 64]

On this AVX2-only CPU bf16 is emulated, so fp32 is the job's fast path (docs/benchmarks.md).
This checks the other cheap precision: `torch.ao.quantization.quantize_dynamic` on the decoder's
linear layers (the output head stays fp32), scoring the same RAG prompts as bench.infer_speed
with `PrefixScorer.top_k`, batch by batch interleaved with the fp32 model so that contention hits
both alike. Prints one JSON line: pairs/s of each, the speed-up, and how far the ranking moves
(top-1 agreement and top-10 overlap with fp32).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
import warnings

import numpy as np

from bench.infer_speed import bench_prompts
from common.config import load_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.int8_scoring",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--clusters", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=384, help="Pairs scored (0: all).")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from common.model import load_model, load_tokenizer, resolve_model
    from common.scoring import PrefixScorer

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = load_config(None, args.overrides)
    model_dir = resolve_model(cfg.model)
    tok = load_tokenizer(model_dir)
    catalog, pairs, _, prefix, suffixes, exclude = bench_prompts(tok, args.clusters, args.pairs)

    fp32 = load_model(model_dir, torch.float32)
    int8 = copy.deepcopy(fp32)
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        int8.model = torch.ao.quantization.quantize_dynamic(
            int8.model, {torch.nn.Linear}, dtype=torch.qint8
        )
    scorers = {
        "fp32": PrefixScorer(fp32, tok, list(catalog.names), prefix),
        "int8": PrefixScorer(int8, tok, list(catalog.names), prefix),
    }
    B = args.batch_size
    seconds = {name: 0.0 for name in scorers}
    ranked: dict[str, list] = {name: [] for name in scorers}
    for scorer in scorers.values():
        scorer.top_k(suffixes[:B], exclude[:B], 10)  # warm-up
    for i in range(0, len(suffixes), B):
        for name, scorer in scorers.items():
            t0 = time.perf_counter()
            idx, _ = scorer.top_k(suffixes[i : i + B], exclude[i : i + B], 10)
            seconds[name] += time.perf_counter() - t0
            ranked[name].append(idx)
    a = torch.cat(ranked["fp32"]).numpy()
    b = torch.cat(ranked["int8"]).numpy()
    overlap = [len(set(x) & set(y)) / 10 for x, y in zip(a, b, strict=True)]
    out = {
        "pairs": len(pairs),
        "fp32_pairs_per_s": round(len(pairs) / seconds["fp32"], 2),
        "int8_pairs_per_s": round(len(pairs) / seconds["int8"], 2),
        "speedup": round(seconds["fp32"] / seconds["int8"], 2),
        "top1_agree": round(float((a[:, 0] == b[:, 0]).mean()), 3),
        "top10_overlap": round(float(np.mean(overlap)), 3),
        "load1": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
