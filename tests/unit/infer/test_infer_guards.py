"""common/guards.py: each guard's pass/fail line and margin, worked out by hand."""

from __future__ import annotations

import pytest

from common import guards
from common.config import GuardsConfig

CFG = GuardsConfig(min_valid_rate=0.9, min_hit_rate=0.015, max_regression=0.1)


def test_hit_rate_guard_halts_under_the_floor_and_skips_without_events():
    low = guards.check_hit_rate(CFG, {"hit_rate@10": 0.012, "n_events": 500})
    assert low["passed"] is False and low["margin"] == pytest.approx(-0.003)
    assert guards.check_hit_rate(CFG, {"hit_rate@10": 0.015, "n_events": 500})["passed"]
    empty = guards.check_hit_rate(CFG, {"hit_rate@10": 0.0, "n_events": 0})
    assert empty["passed"] and empty["skipped"] == "no held-out events"


def test_regression_guard_compares_against_the_published_table():
    # Published 0.25: the floor is 0.25 x (1 - 0.1) = 0.225. 0.20 is 20% under it and fails.
    worse = guards.check_regression(
        CFG, {"hit_rate@10": 0.20, "n_events": 400}, {"hit_rate@10": 0.25, "n_events": 400}, {}
    )
    assert worse["passed"] is False
    assert worse["floor"] == pytest.approx(0.225) and worse["margin"] == pytest.approx(-0.025)
    assert worse["relative_change"] == pytest.approx(-0.2) and worse["n_events"] == 400
    # 0.23 is 8% under the published table: within the allowed 10%.
    assert guards.check_regression(
        CFG, {"hit_rate@10": 0.23, "n_events": 400}, {"hit_rate@10": 0.25, "n_events": 400}, {}
    )["passed"]
    nothing = guards.check_regression(CFG, {"hit_rate@10": 0.0, "n_events": 400}, None, {})
    assert nothing["passed"] and nothing["skipped"] == "nothing published to compare"

    decision = guards.decide(
        CFG.model_copy(update={"enforce": False}),
        {
            "valid_rate": guards.check_valid_rate(CFG, 45, 50),
            "hit_rate": guards.check_hit_rate(CFG, {"hit_rate@10": 0.3, "n_events": 400}),
            "regression": worse,
        },
    )
    assert decision["failed"] == ["regression"] and decision["override"] is True
    assert guards.describe_failures(decision) == (
        "hit_rate@10 0.2000 < published 0.2500 x (1 - 0.1) = 0.2250 (-20.0%)"
    )


def test_valid_rate_guard_counts_free_answers():
    assert guards.check_valid_rate(CFG, 44, 50)["passed"] is False  # 0.88 < 0.9
    assert guards.check_valid_rate(CFG, 45, 50)["passed"] is True  # 0.90
    assert guards.check_valid_rate(CFG, 0, 0)["skipped"] == "no generated answers to check"
