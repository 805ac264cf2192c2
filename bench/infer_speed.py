"""Benchmark: bulk pair scoring (jobs.infer) against a plain per-prompt `generate` loop.

    flock /tmp/bench.lock python -m bench.infer_speed [--clusters 32] [--baseline-prompts 8]
        [--beam-pairs 64] [--job] [--device auto|cpu|cuda] [--set model.name_or_path=...]

On the same RAG prompts of every ordered pair of `--clusters` taxonomy clusters (rendered by
common/prompts.py with the model's chat template), measured in one run:
1. baseline: the default model in fp32, one `model.generate(greedy, longest name + 1 tokens)`
   per prompt (the paper's free generation, no batching, no cache), on `--baseline-prompts`;
2. ours: `PrefixScorer.top_k` (shared-prefix KV cache, batched suffixes, verbalizer: one
   forward scores every cluster) in the dtype the job picks, on every pair; model FLOPs per
   second against the matmul ceiling measured here in that dtype (and bf16's, reported too);
3. constrained beam decoding (`PrefixScorer.constrained`, k beams) on `--beam-pairs`: speed, and
   agreement of its top-k with the verbalizer's exact ranking (same model, same prompts);
4. with `--job`: `python -m jobs.infer --set infer.strategy=rag` end to end as a fresh process
   (Ray start, actor pool, model load, table + guard rows, guards, publish) on synthetic daily
   counts of the same clusters, timed from the outside.
Prints one JSON line. docs/benchmarks.md records results.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

from common import schemas, storage
from common.catalog import Catalog
from common.config import load_config
from common.tables_io import write_parquet
from common.taxonomy import all_clusters
from common.transitions import day_dir

AS_OF = dt.date(2026, 3, 17)


def bench_catalog(n: int, descriptions: bool = True) -> Catalog:
    """The first `n` taxonomy clusters; without `descriptions` the prompts carry names only
    (the shortest prompt common/prompts.py renders: a bound on what shorter prompts can gain)."""
    clusters = all_clusters()[:n]
    return Catalog(
        tuple(range(n)),
        tuple(c.name for c in clusters),
        tuple(c.description if descriptions else "" for c in clusters),
    )


def rag_of(catalog: Catalog, seed: int = 0) -> dict[tuple[int, int], list[int]]:
    """A retrieved successor per pair (random but fixed): the prompts' RAG line."""
    rng = np.random.default_rng(seed)
    ids = list(catalog.ids)
    out = {}
    for a in ids:
        for b in ids:
            if a != b:
                out[(a, b)] = [int(rng.choice([c for c in ids if c not in (a, b)]))]
    return out


def bench_prompts(tok, n_clusters: int, n_pairs: int = 0, descriptions: bool = True):
    """The RAG prompts of the ordered pairs of the first `n_clusters` taxonomy clusters (the first
    `n_pairs`; 0: all), rendered as the job renders them and split at their shared prefix:
    (catalog, pairs, texts, prefix, suffixes, exclude), exclude = each pair's catalog positions."""
    from common import prompts
    from common.prompts import common_prefix

    catalog = bench_catalog(n_clusters, descriptions)
    rag = rag_of(catalog)
    pairs = sorted(rag)[: n_pairs or None]
    texts = [prompts.render_prompt(tok, catalog, a, b, rag[(a, b)]) for a, b in pairs]
    prefix = common_prefix(texts)
    suffixes = [t[len(prefix) :] for t in texts]
    exclude = [[catalog.position(a), catalog.position(b)] for a, b in pairs]
    return catalog, pairs, texts, prefix, suffixes, exclude


def write_synthetic_inputs(root: str, catalog: Catalog, days: int = 16, seed: int = 0) -> None:
    """Daily counts in the storage contract: each pair prefers a few successors (plus noise)."""
    write_parquet(
        pa.table(
            {
                "cluster_id": pa.array(catalog.ids, pa.int32()),
                "name": pa.array(catalog.names),
                "description": pa.array(catalog.descriptions),
            },
            schema=schemas.CLUSTERS,
        ),
        storage.join(root, "inputs", "clusters.parquet"),
    )
    rng = np.random.default_rng(seed)
    n = len(catalog)
    prefs = {
        (a, b): rng.choice([c for c in range(n) if c not in (a, b)], size=4, replace=False)
        for a in range(n)
        for b in range(n)
        if a != b
    }
    for i in range(days):
        day = AS_OF - dt.timedelta(days=days - i)
        rows = [
            (a, b, int(c), int(rng.poisson(6 / (r + 1))))
            for (a, b), cs in prefs.items()
            for r, c in enumerate(cs)
        ]
        rows = [r for r in rows if r[3] > 0]
        cols = list(zip(*rows, strict=True))
        write_parquet(
            pa.table(
                {
                    "day": pa.array([day] * len(rows), pa.date32()),
                    "c1": pa.array(cols[0], pa.int32()),
                    "c2": pa.array(cols[1], pa.int32()),
                    "c3": pa.array(cols[2], pa.int32()),
                    "count": pa.array(cols[3], pa.int64()),
                },
                schema=schemas.TRANSITIONS,
            ),
            storage.join(day_dir(root, day), "part-0.parquet"),
        )


def generate_one(model, tok, prompt: str, new_tokens: int) -> str:
    """The plain loop's step: one prompt, fp32, greedy `generate`, no batching, no cache reuse."""
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    out = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False)
    return tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def run_job(catalog: Catalog, sets: list[str]) -> dict:
    root = tempfile.mkdtemp(prefix="infer-bench-")
    write_synthetic_inputs(root, catalog)
    cmd = [
        sys.executable,
        "-m",
        "jobs.infer",
        "--set",
        f"root={root}",
        "--set",
        f"as_of={AS_OF}",
        "--set",
        "infer.strategy=rag",
    ]
    for s in sets:
        cmd += ["--set", s]
    try:
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t
    finally:
        shutil.rmtree(root, ignore_errors=True)  # a synthetic root: nothing in it is kept
    # Exit 1 after the summary line is "ran, not published" (a failed guard: the base model's
    # free answers to synthetic names); the timing stands and the summary says why.
    lines = done.stdout.strip().splitlines()
    if done.returncode not in (0, 1) or not lines or not lines[-1].startswith("{"):
        raise SystemExit(f"jobs.infer failed ({done.returncode}): {done.stderr[-3000:]}")
    summary = json.loads(lines[-1])
    return {
        "command": " ".join(cmd),
        "process_seconds": seconds,
        "n_pairs": summary["n_pairs"],
        "published": summary["published"],
        "guards_failed": summary["guards"]["failed"],
        "valid_rate": summary["guards"]["valid_rate"]["value"],
        "hit_rate@10_holdout": summary["guards"]["hit_rate"]["value"],
        "perf": summary.get("perf"),
        "seconds": summary["seconds"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.infer_speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--clusters", type=int, default=32)
    parser.add_argument("--baseline-prompts", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=0, help="Pairs scored by ours (0: all).")
    parser.add_argument("--beam-pairs", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--job", action="store_true", help="Also time the job end to end.")
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="Where both sides run (auto: the GPU where torch sees one). Needs no Ray.",
    )
    parser.add_argument(
        "--no-descriptions",
        action="store_true",
        help="Prompts with cluster names only (no descriptions): the shortest prompts, both sides.",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from common.model import (
        load_model,
        load_tokenizer,
        matmul_ceiling,
        pick_device,
        pick_dtype,
        resolve_model,
    )
    from common.scoring import PrefixScorer

    cfg = load_config(None, args.overrides)
    device = pick_device(None if args.device == "auto" else args.device == "cuda")
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    model_dir = resolve_model(cfg.model)
    tok = load_tokenizer(model_dir)
    catalog, pairs, texts, prefix, suffixes, exclude = bench_prompts(
        tok, args.clusters, args.pairs, descriptions=not args.no_descriptions
    )
    n_tokens = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    out: dict = {
        "model": cfg.model.name_or_path,
        "clusters": args.clusters,
        "descriptions": not args.no_descriptions,
        "pairs": len(pairs),
        "threads": threads,
        "device": device,
        "cpu_bf16": pick_dtype("auto") == torch.bfloat16,
        "prompt_tokens_mean": float(np.mean(n_tokens)),
        "prefix_tokens": len(tok(prefix, add_special_tokens=False)["input_ids"]),
    }

    # 1 + 2, interleaved round by round (a prompt of the plain loop, a batch of ours, a short
    # ceiling probe), so CPU contention from other work hits both alike and the ratio holds.
    longest = max(len(tok(n, add_special_tokens=False)["input_ids"]) for n in catalog.names)
    base_model = load_model(model_dir, torch.float32, device=device)
    dtype = pick_dtype(cfg.model.dtype, device)
    model = base_model if dtype == torch.float32 else load_model(model_dir, dtype, device=device)
    scorer = PrefixScorer(model, tok, list(catalog.names), prefix)
    B = args.batch_size
    scorer.top_k(suffixes[:B], exclude[:B], 10)  # warm-up
    generate_one(base_model, tok, texts[0], 2)
    dname = str(dtype).split(".")[-1]
    base_s = ours_s = flops = 0.0
    base_n = ours_n = 0
    probes: list[float] = []
    ranked = []
    step = max(1, len(texts) // args.baseline_prompts)
    examples = []
    batches = list(range(0, len(suffixes), B))
    for r, i in enumerate(batches):
        probes.append(matmul_ceiling(dtype, scorer.device, n=2048, seconds=0.3))
        if r < args.baseline_prompts:
            t0 = time.perf_counter()
            examples.append(
                generate_one(base_model, tok, texts[(r * step) % len(texts)], longest + 1)
            )
            base_s += time.perf_counter() - t0
            base_n += 1
        f0, t0 = scorer.flops, time.perf_counter()
        idx, _ = scorer.top_k(suffixes[i : i + B], exclude[i : i + B], 10)
        ours_s += time.perf_counter() - t0
        flops += scorer.flops - f0
        ours_n += idx.shape[0]
        ranked.append(idx)
    for r in range(len(batches), args.baseline_prompts):  # more baseline prompts than batches
        t0 = time.perf_counter()
        examples.append(generate_one(base_model, tok, texts[(r * step) % len(texts)], longest + 1))
        base_s += time.perf_counter() - t0
        base_n += 1
    # Emulated bf16 (no AMX / AVX512-BF16) runs ~0.5 GFLOP/s: a smaller matrix keeps it short.
    ceiling = {
        str(d).split(".")[-1]: matmul_ceiling(d, scorer.device, n=2048 if d == dtype else 1024)
        / 1e9
        for d in (dtype, torch.bfloat16, torch.float32)
    }
    ceiling[dname] = max([ceiling[dname]] + [p / 1e9 for p in probes])
    achieved = flops / ours_s / 1e9
    out["baseline"] = {
        "dtype": "float32",
        "prompts": base_n,
        "seconds": base_s,
        "prompts_per_s": base_n / base_s,
        "new_tokens": longest + 1,
        "examples": examples[:3],
    }
    out["ours"] = {
        "dtype": dname,
        "batch_size": B,
        "seconds": ours_s,
        "pairs_per_s": ours_n / ours_s,
        "gflops_per_pair": flops / ours_n / 1e9,
        "achieved_gflops_per_s": achieved,
        "ceiling_gflops_per_s": ceiling,
        "ceiling_probe_median_gflops_per_s": float(np.median(probes)) / 1e9,
        "mfu_vs_best_ceiling_own_dtype": achieved / ceiling[dname],
        "mfu_vs_median_probe": achieved / (float(np.median(probes)) / 1e9),
        "mfu_vs_bf16": achieved / ceiling["bfloat16"],
    }
    out["speedup_vs_baseline"] = out["ours"]["pairs_per_s"] / out["baseline"]["prompts_per_s"]

    # 3. constrained beam search vs the verbalizer on the first beam-pairs pairs
    nb = min(args.beam_pairs, len(pairs))
    if nb:
        exact = torch.cat(ranked)[:nb]
        t0 = time.perf_counter()
        beams = []
        for i in range(0, nb, args.batch_size):
            j = min(i + args.batch_size, nb)
            beams.append(scorer.constrained(suffixes[i:j], exclude[i:j], 10)[0])
        beam_s = time.perf_counter() - t0
        beam = torch.cat(beams)
        t0 = time.perf_counter()
        for i in range(0, nb, args.batch_size):
            j = min(i + args.batch_size, nb)
            scorer.top_k(suffixes[i:j], exclude[i:j], 10)
        verb_s = time.perf_counter() - t0
        out["beam_vs_verbalizer"] = {
            "pairs": nb,
            "beam_pairs_per_s": nb / beam_s,
            "verbalizer_pairs_per_s": nb / verb_s,
            "top1_agreement": float((beam[:, 0] == exact[:, 0]).float().mean()),
            "top10_overlap": float(
                np.mean(
                    [
                        len(set(b.tolist()) & set(e.tolist())) / len(e)
                        for b, e in zip(beam, exact, strict=True)
                    ]
                )
            ),
        }
    del model, scorer

    # 4. the job end to end
    if args.job:
        out["job"] = run_job(catalog, args.overrides)
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
