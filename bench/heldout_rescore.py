"""Re-score a stored adapter's held-out line (what `jobs.finetune` reports) with today's scorer,
in the model's own dtype and with the whole model in fp32, beside the frequency top-1.

    python -m bench.heldout_rescore ADAPTER_DIR [--scorer FILE] [--set key=value ...]

The `--set` keys are the fine-tune's (root, as_of and whatever else decided its data: the
held-out slice is rebuilt exactly as `jobs.finetune` builds it). `--scorer FILE` scores with
another copy of common/scoring.py too, e.g. an older one from git:
`git show bbcd013^:common/scoring.py > /tmp/old_scoring.py`. The fp32 model has no rounding
at all, so it is the reference the others should agree with (docs/benchmarks.md, "Name
logits in fp32"). One JSON line per way of scoring.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import sys
import time

import torch

import common.scoring
from common import training
from common.catalog import load_catalog
from common.config import load_config
from common.model import load_model, load_tokenizer, pick_dtype, resolve_model
from common.transitions import read_transitions


def load_scorer(path: str):
    """PrefixScorer of another copy of common/scoring.py."""
    spec = importlib.util.spec_from_file_location("other_scoring", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["other_scoring"] = module
    spec.loader.exec_module(module)
    return module.PrefixScorer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.heldout_rescore",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("adapter", help="an adapters/<version>/ folder")
    parser.add_argument("--scorer", help="another copy of common/scoring.py to score with too")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    args = parser.parse_args(argv)
    cfg = load_config(None, args.overrides)
    day = cfg.as_of
    spec = training.DataSpec.from_config(cfg, day)
    start, _, _ = spec.windows()
    counts = read_transitions(
        cfg.root, start - cfg.retrieval.window_days * dt.timedelta(days=1), day
    )
    model_dir = resolve_model(cfg.model)
    tok = load_tokenizer(model_dir)
    data = training.build_data(spec, counts, load_catalog(cfg.inputs.clusters), tok)
    own = pick_dtype(cfg.model.dtype)
    ways = [
        ("current scorer", own, common.scoring.PrefixScorer),
        ("current scorer, fp32 model", torch.float32, common.scoring.PrefixScorer),
    ]
    if args.scorer:
        ways.insert(1, (f"scorer {args.scorer}", own, load_scorer(args.scorer)))
    freq = training.accuracy(
        data["eval"], [[p for p, _ in r] for r in data["eval"]["frequency_scored"]]
    )
    current = common.scoring.PrefixScorer
    for label, dtype, scorer in ways:
        lm = load_model(model_dir, dtype=dtype, adapter=args.adapter)
        amp = dtype if dtype != torch.float32 else None
        common.scoring.PrefixScorer = scorer  # score_heldout imports it from the module
        t0 = time.perf_counter()
        try:
            out = training.score_heldout(
                lm, tok, data["eval"], data["prefix"], 32, amp, cfg.infer.llm_weight
            )
        finally:
            common.scoring.PrefixScorer = current
        print(
            json.dumps(
                {
                    "scoring": label,
                    "dtype": str(dtype),
                    "adapter": out,
                    "frequency": freq,
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
        )


if __name__ == "__main__":
    main()
