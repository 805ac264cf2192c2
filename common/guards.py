"""The checks a candidate table must pass before it is published (docs/contracts.md "Guards").

Pure decisions over measured numbers; `jobs.infer` measures them:
- `valid_rate`: share of FREELY generated answers (greedy, no constraint) that name a real cluster,
  measured on a sample of the candidate's own prompts with the candidate's model and adapter.
  Ranked answers are real clusters by construction, so only free generation can show a model that
  has stopped speaking the catalog's language. Halts under `min_valid_rate` (paper: 90%).
- `hit_rate`: hit rate@10 of the candidate on the held-out days [d - h, d), built as the same
  strategy would have built it on day d - h (so it never saw those days). Halts under
  `min_hit_rate` (paper: 1.5%).
- `regression`: the candidate against the table now published, on the same events, restricted to
  the days neither has seen: [max(d - h, published as_of), d). Halts when the candidate is below
  the published hit rate@10 by more than `max_regression` (relative).
A guard with nothing to measure (no events, nothing published) passes with `skipped` set.
"""

from __future__ import annotations

from common.config import GuardsConfig

HIT_KEY = "hit_rate@10"


def check_valid_rate(cfg: GuardsConfig, valid: int, total: int, note: str = "") -> dict:
    rate = valid / total if total else 1.0
    out = {
        "value": rate,
        "min": cfg.min_valid_rate,
        "n": total,
        "passed": rate >= cfg.min_valid_rate,
    }
    if not total:
        out["skipped"] = note or "no generated answers to check"
    elif note:
        out["note"] = note
    out["margin"] = rate - cfg.min_valid_rate
    return out


def check_hit_rate(cfg: GuardsConfig, metrics: dict) -> dict:
    rate = float(metrics.get(HIT_KEY, 0.0))
    out = {
        "value": rate,
        "min": cfg.min_hit_rate,
        "n_events": int(metrics.get("n_events", 0)),
        "metrics": metrics,
        "margin": rate - cfg.min_hit_rate,
    }
    if not out["n_events"]:
        out.update(passed=True, skipped="no held-out events")
    else:
        out["passed"] = rate >= cfg.min_hit_rate
    return out


def check_regression(
    cfg: GuardsConfig, candidate: dict | None, published: dict | None, info: dict
) -> dict:
    out = {"max_regression": cfg.max_regression, **info}
    if not published or not candidate or not published.get("n_events"):
        out.update(passed=True, skipped=info.get("skipped") or "nothing published to compare")
        return out
    cand, pub = float(candidate.get(HIT_KEY, 0.0)), float(published.get(HIT_KEY, 0.0))
    floor = pub * (1.0 - cfg.max_regression)
    out.update(
        candidate=cand,
        published=pub,
        floor=floor,
        margin=cand - floor,
        relative_change=(cand - pub) / pub if pub else 0.0,
        n_events=int(candidate.get("n_events", 0)),
        passed=cand >= floor,
    )
    return out


def decide(cfg: GuardsConfig, results: dict[str, dict]) -> dict:
    """{"passed", "failed": [names], "enforce", "override"} plus each guard's result."""
    failed = [name for name, r in results.items() if not r.get("passed", False)]
    return {
        **results,
        "failed": failed,
        "passed": not failed,
        "enforce": cfg.enforce,
        # Published although a guard failed: recorded in the manifest for whoever looks later.
        "override": bool(failed) and not cfg.enforce,
    }


def describe_failures(decision: dict) -> str:
    """One line naming each failed guard and by how much it missed."""
    parts = []
    for name in decision["failed"]:
        r = decision[name]
        if name == "valid_rate":
            parts.append(f"valid_rate {r['value']:.3f} < {r['min']:.3f} (n={r['n']})")
        elif name == "hit_rate":
            parts.append(f"hit_rate@10 {r['value']:.4f} < {r['min']:.4f} (n={r['n_events']})")
        elif name == "regression":
            parts.append(
                f"hit_rate@10 {r['candidate']:.4f} < published {r['published']:.4f} x "
                f"(1 - {r['max_regression']}) = {r['floor']:.4f} ({r['relative_change']:+.1%})"
            )
        else:
            parts.append(name)
    return "; ".join(parts)
