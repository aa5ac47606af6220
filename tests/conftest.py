"""Pytest fixtures; the helpers themselves live in harness.py, which bench/ shares."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # harness.py and fake_kaggle.py, for the tests and bench/
from fake_kaggle import FakeKaggle  # noqa: E402


@pytest.fixture
def fake_kaggle():
    with FakeKaggle() as fake:
        yield fake
