"""The tiny inputs of the jobs.infer tests (tests/infer_inputs.py), one fresh root per test."""

from __future__ import annotations

import pytest
from infer_inputs import write_inputs


@pytest.fixture
def infer_root(root):
    write_inputs(root)
    return root
