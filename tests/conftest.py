"""Pytest fixtures; the helpers live in harness.py and in bench/benchlib.py, which it re-exports."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # harness.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # benchlib.py and fake_kaggle.py
from fake_kaggle import FakeKaggle  # noqa: E402


@pytest.fixture
def fake_kaggle():
    with FakeKaggle() as fake:
        yield fake
