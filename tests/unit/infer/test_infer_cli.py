"""`python -m jobs.infer --help` explains the job: what it reads, writes, and how to set keys."""

import pytest

from jobs import infer


def test_help_names_inputs_outputs_and_overrides(capsys):
    with pytest.raises(SystemExit) as done:
        infer.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "Bulk inference" in text and "--set" in text and "--config" in text
    assert "tables/CURRENT" in text and "stats/transitions/" in text
    for strategy in ("frequency", "base", "rag", "ft", "hybrid"):
        assert strategy in text
