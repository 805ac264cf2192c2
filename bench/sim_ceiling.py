"""How high could any table score on the simulator? Hit rates of the simulator's own next-cluster
distributions, which no learner sees, next to the frequency table, on the same served days.

    python -m bench.sim_ceiling --start DAY --end DAY [--config FILE] [--set key=value ...]

Replays `jobs.simulate` with the config's `simulate` section (same seed, same log: the hook
draws nothing) and, for every event that becomes a transition (c1, c2) -> c3 (docs/contracts.md
"Transitions"), adds up the probability the simulator gave each next cluster for that user at
that step: softmax of semantics + popularity + trends, mixed with the user's favourites. Summed
over the day's events at (c1, c2), that is the expected count of each c3, so ranking by it is the
best table any method could serve for that pair on that day. Three such oracles, from the most
to the least clairvoyant:

- `truth_today`: the distributions of the served day itself (knows this month's fresh trends);
- `truth_yesterday`: those of the day before (infinite data up to yesterday: the limit of any
  learner that reads the log, however large its model);
- `truth_at_build`: those of the day before the table was built (`pipeline.rag_every_days`
  apart, as the cadence rebuilds it);

and three tables a learner can build from the counts of [b - W, b) (W = `retrieval.window_days`,
b the build day): `frequency` (the pair's most frequent successors, then c2's, then overall),
`frequency_smoothed` (pair counts plus 5 pseudo-events spread as c2's successors), and
`frequency_recent` (counts weighted by 0.5 ** (age / 7 days)), and `loglinear` (a softmax with
one weight per (c2, c3) and per (c1, c3), fit to the window's counts: it pools evidence across
pairs, as the simulator's logits are built, which a model that generalises could learn). The
oracles and the tables all use the user population of the served day, so the oracles are upper
bounds.

When `root` holds the aggregated counts of that log, also scores the project's own frequency
table over the same days (`frequency_served`: bench.experiments' replay, as docs/results.md
section 2 does, with Serve's backoff) and checks that the replayed transitions equal the counts
(`aggregate_check`). With `--top-pairs N`, also the same rates on the N most frequent pairs of
the served days alone (`top_pairs`: the fine-tune's held-out slice with N =
finetune.eval_max_pairs). Writes `<root>/reports/sim-ceiling/metrics.json`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging

import numpy as np

from common.cli import config_from_args, setup_logging
from common.config import Config
from common.storage import join, report_dir, write_json
from jobs.simulate import World

log = logging.getLogger(__name__)
KS = (1, 5, 10)
ORACLES = ("truth_today", "truth_yesterday", "truth_at_build")
TABLES = ("frequency", "frequency_smoothed", "frequency_recent", "loglinear")


class Transitions:
    """Observer of `World.simulate_day`: realized transitions per day and, for chosen days, the
    expected count of every c3 per (c1, c2) under chosen days' true distributions."""

    def __init__(self, world: World):
        self.world = world
        self.c = len(world.clusters)
        n = world.sc.n_users
        self.e1 = np.full(n, -1)  # the user's last two distinct clusters in the log
        self.e2 = np.full(n, -1)
        self.realized: dict[int, np.ndarray] = {}  # day -> (C*C, C) counts
        self.expected: dict[tuple[int, str], np.ndarray] = {}
        self.truth_days: dict[int, dict[str, int]] = {}  # day -> {oracle: day of the truth}
        self._probs: dict[int, np.ndarray] = {}

    def probs(self, day: int) -> np.ndarray:
        """The simulator's softmax of day `day`, shape (C+1, C, C): [prev, cur, next]."""
        if day not in self._probs:
            if len(self._probs) >= 4:  # one step asks for at most three days
                self._probs.pop(next(iter(self._probs)))
            self._probs[day] = np.diff(self.world.day_cdf(day), axis=2, prepend=0.0)
        return self._probs[day]

    def __call__(self, day, u, prev, cur, nxt) -> None:
        c, w = self.c, self.world
        real = self.realized.setdefault(day, np.zeros((c * c, c), np.int64))
        has_pair = self.e1[u] >= 0
        if has_pair.any():
            # Once a user has two distinct clusters in the log, the simulator's (prev, cur) is
            # the log's (c1, c2): a move always starts from the cluster last logged.
            assert (prev[has_pair] == self.e1[u][has_pair]).all()
            assert (cur[has_pair] == self.e2[u][has_pair]).all()
            counted = has_pair & (nxt != cur) & (nxt != prev)
            key = prev * c + cur
            np.add.at(real, (key[counted], nxt[counted]), 1)
            uu, pp, cc, kk = u[has_pair], prev[has_pair], cur[has_pair], key[has_pair]
            habit = w.habit[uu]
            fav_mass = np.minimum(habit, 1 - w.sc.repeat_prob)
            soft_mass = np.maximum(0.0, 1 - w.sc.repeat_prob - habit)
            rows = np.arange(len(uu))
            favourites = w.favourites[uu]  # each slot drawn with equal chance (duplicates add up)
            fav = np.zeros((len(uu), c))
            np.add.at(fav, (rows[:, None], favourites), (fav_mass / favourites.shape[1])[:, None])
            for name, truth_day in self.truth_days.get(day, {}).items():
                p = soft_mass[:, None] * self.probs(truth_day)[pp, cc] + fav
                p[rows, pp] = 0.0  # back to c1: not a novel transition
                p[rows, cc] = 0.0  # a repeat: not a transition
                exp = self.expected.setdefault((day, name), np.zeros((c * c, c)))
                np.add.at(exp, kk, p)
        moved = nxt != self.e2[u]
        first = self.e2[u] < 0
        self.e1[u] = np.where(moved & ~first, self.e2[u], self.e1[u])
        self.e2[u] = np.where(moved, nxt, self.e2[u])


def excluded(c: int) -> np.ndarray:
    """(C*C, C) mask of c3 == c1 or c3 == c2 for every pair key c1 * C + c2."""
    key = np.arange(c * c)
    mask = np.zeros((c * c, c), bool)
    mask[key, key // c] = True
    mask[key, key % c] = True
    return mask


def hits(score: np.ndarray, realized: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Hits@k per pair (rows) and k (columns, KS) of ranking each pair's c3 by `score`
    (ties: lower id first), weighted by the realized events."""
    s = np.where(mask, -np.inf, score)
    order = np.argsort(-s, axis=1, kind="stable")
    got = np.take_along_axis(realized, order, axis=1).cumsum(axis=1)
    return got[:, [k - 1 for k in KS]]


def table_scores(counts: dict[int, np.ndarray], c: int, build: int, window: int) -> dict:
    """The learner tables' scores for a table built on day `build` from [build - W, build)."""
    days = [d for d in range(build - window, build) if d in counts]
    pair = sum((counts[d] for d in days), np.zeros((c * c, c)))
    recent = sum((counts[d] * 0.5 ** ((build - d) / 7) for d in days), np.zeros((c * c, c)))
    by_c2 = pair.reshape(c, c, c).sum(axis=0)  # [c2, c3]
    overall = by_c2.sum(axis=0)
    c2_share = by_c2 / np.maximum(by_c2.sum(axis=1, keepdims=True), 1)
    c2_rows = np.tile(c2_share, (c, 1))  # row c1 * C + c2 -> c2's successors
    # Backoff as Serve answers: the pair's counts, then c2's successors, then the overall top.
    tie = c2_rows + overall[None, :] / max(overall.sum(), 1) * 1e-3
    return {
        "frequency": pair + tie * 1e-3,
        "frequency_smoothed": pair + 5 * c2_rows + tie * 1e-6,
        "frequency_recent": recent + tie * 1e-3,
        "loglinear": fit_loglinear(pair, c),
    }


def fit_loglinear(pair: np.ndarray, c: int, steps: int = 500) -> np.ndarray:
    """Logits A[c2, c3] + B[c1, c3] + b[c3] for every pair key, fit to the counts `pair`
    (C*C, C) by maximum a posteriori with a standard normal prior on A and B; c1 and c2 are
    masked out of each softmax."""
    import torch

    counts = torch.tensor(pair, dtype=torch.float32).reshape(c, c, c)
    mask = torch.tensor(excluded(c)).reshape(c, c, c)
    a = torch.zeros(c, c, requires_grad=True)
    b = torch.zeros(c, c, requires_grad=True)
    bias = torch.zeros(c, requires_grad=True)
    opt = torch.optim.LBFGS([a, b, bias], max_iter=steps, line_search_fn="strong_wolfe")
    total = counts.sum().clamp(min=1)

    def closure():
        opt.zero_grad()
        logits = a[None, :, :] + b[:, None, :] + bias
        logp = torch.log_softmax(logits.masked_fill(mask, -1e9), dim=2)
        nll = -(counts * logp.masked_fill(mask, 0)).sum()
        loss = (nll + 0.5 * (a.square().sum() + b.square().sum())) / total
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (a[None, :, :] + b[:, None, :] + bias).reshape(c * c, c).double().numpy()


def aggregate_differences(cfg: Config, tr: Transitions, start_date: dt.date) -> dict | None:
    """How many replayed transitions differ from the aggregated counts under `root` (None when
    there are none). A few may: the simulator orders one user's events of a day by the second,
    the log by the millisecond it then draws, so two events in the same second can swap."""
    from common.transitions import list_days, read_transitions

    stored = set(list_days(cfg.root))
    days = [d for d in tr.realized if start_date + dt.timedelta(days=d) in stored]
    if not days:
        return None
    c = tr.c
    t = read_transitions(
        cfg.root, start_date + dt.timedelta(min(days)), start_date + dt.timedelta(max(days) + 1)
    )
    got = {d: np.zeros((c * c, c), np.int64) for d in days}
    cols = (t[k].to_pylist() for k in ("day", "c1", "c2", "c3", "count"))
    for day, a, b, c3, n in zip(*cols, strict=True):
        got[(day - start_date).days][a * c + b, c3] += n
    differ = sum(int(np.abs(got[d] - tr.realized[d]).sum()) for d in days)
    return {
        "days": len(days),
        "transitions": int(sum(tr.realized[d].sum() for d in days)),
        "differing": differ,
    }


def run(cfg: Config, start: dt.date, end: dt.date, every: int, top_pairs: int = 0) -> dict:
    sc = cfg.simulate
    first, last = (start - sc.start_date).days, (end - sc.start_date).days
    if not 1 <= first < last <= sc.days:
        raise SystemExit(f"error: served days must lie in the log's days 1..{sc.days - 1}")
    world = World(sc)
    tr = Transitions(world)

    def build_day(d: int) -> int:  # the last rebuild on or before day d
        return first + (d - first) // every * every

    for d in range(first, last):
        tr.truth_days[d] = {
            "truth_today": d,
            "truth_yesterday": d - 1,
            "truth_at_build": build_day(d) - 1,
        }
    rng = np.random.default_rng([sc.seed, 1])  # as jobs.simulate.run draws
    c, window = tr.c, cfg.retrieval.window_days
    mask = excluded(c)
    per_pair = {name: np.zeros((c * c, len(KS)), np.int64) for name in ORACLES + TABLES}
    events = np.zeros(c * c, np.int64)
    tables, built = {}, None
    for d in range(last):
        world.simulate_day(d, rng, observe=tr)
        if d < first:
            continue
        build = build_day(d)
        if build != built:
            tables, built = table_scores(tr.realized, c, build, window), build
        real = tr.realized[d]
        events += real.sum(axis=1)
        for name in ORACLES:
            per_pair[name] += hits(tr.expected.pop((d, name)), real, mask)
        for name in TABLES:
            per_pair[name] += hits(tables[name], real, mask)
        log.info("day %s: %d events", sc.start_date + dt.timedelta(d), int(real.sum()))

    def rates_over(rows: np.ndarray) -> dict:
        n = max(int(events[rows].sum()), 1)
        return {
            name: {f"hit@{k}": round(int(h[rows, i].sum()) / n, 4) for i, k in enumerate(KS)}
            for name, h in per_pair.items()
        }

    n_events = int(events.sum())
    rates = rates_over(np.arange(c * c))
    out = {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "every_days": every,
        "window_days": window,
        "n_events": n_events,
        "clusters": c,
        "drift": sc.drift,
        "hit_rates": rates,
        "aggregate_check": aggregate_differences(cfg, tr, sc.start_date),
    }
    if top_pairs:  # the fine-tune's held-out slice: the most frequent pairs of the served days
        rows = np.argsort(-events, kind="stable")[:top_pairs]
        out["top_pairs"] = {
            "pairs": top_pairs,
            "n_events": int(events[rows].sum()),
            "hit_rates": rates_over(rows),
        }
    if out["aggregate_check"] is not None:  # root holds this log's counts
        from bench.experiments import retrieval_table_rates

        served = retrieval_table_rates(cfg, start, end, "frequency", every)
        rates["frequency_served"] = {f"hit@{k}": round(served[f"hit_rate@{k}"], 4) for k in KS}
    write_json(join(report_dir(cfg.root, "sim-ceiling"), "metrics.json"), out)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sim_ceiling",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    day = dt.date.fromisoformat
    parser.add_argument("--start", type=day, required=True, help="First served day.")
    parser.add_argument("--end", type=day, required=True, help="Day after the last served day.")
    parser.add_argument(
        "--every", type=int, help="Days between table builds (default: pipeline.rag_every_days)."
    )
    parser.add_argument(
        "--top-pairs",
        type=int,
        default=0,
        help="Also score only the N most frequent pairs of the served days (the fine-tune's "
        "held-out slice is its finetune.eval_max_pairs most frequent pairs).",
    )
    parser.add_argument("--config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    setup_logging()
    cfg = config_from_args(args)
    out = run(cfg, args.start, args.end, args.every or cfg.pipeline.rag_every_days, args.top_pairs)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
