"""Which aggregation engine a jobs.aggregate run used, seen from outside the job."""

from __future__ import annotations

import pytest


@pytest.fixture
def engines_run(monkeypatch) -> list[str]:
    """The engines the runs of one test called, in order: call-through spies on the two engine
    entry points (the real code still runs). The summary's "engine" only repeats the config, so
    this is what shows the requested engine really counted."""
    from common import transition_tasks
    from jobs import aggregate

    ran: list[str] = []

    def spy(name, fn):
        def call(*args, **kwargs):
            ran.append(name)
            return fn(*args, **kwargs)

        return call

    monkeypatch.setattr(
        aggregate, "_count_with_dataset", spy("dataset", aggregate._count_with_dataset)
    )
    monkeypatch.setattr(
        transition_tasks, "count_with_tasks", spy("tasks", transition_tasks.count_with_tasks)
    )
    return ran
