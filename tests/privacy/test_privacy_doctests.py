"""The examples in the privacy package's docstrings run and hold."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", ["accounting", "ledger"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(f"cordiale.privacy.{module}"))
    assert result.attempted > 0
    assert result.failed == 0
