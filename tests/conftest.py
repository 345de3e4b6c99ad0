"""Shared fixtures: tiny models saved to disk, so loading goes through from_pretrained."""
from __future__ import annotations

import os

import pytest

from interp.model.tiny import tiny_model

try:
    from hypothesis import settings

    # The default run draws the same examples every time, so a result never depends on the
    # day's luck; HYPOTHESIS_EXPLORE=1 draws fresh ones to hunt for new failing inputs.
    settings.register_profile("repeatable", derandomize=True, print_blob=True)
    settings.register_profile("explore", derandomize=False, print_blob=True)
    settings.load_profile("explore" if os.environ.get("HYPOTHESIS_EXPLORE") else "repeatable")
except ImportError:  # hypothesis comes with the test extra; without it those tests skip
    pass


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """A random tiny GPT-2 with its word-level tokenizer, saved with save_pretrained()."""
    directory = tmp_path_factory.mktemp("tiny-gpt2")
    model = tiny_model("gpt2")
    model.model.save_pretrained(directory)
    model.tokenizer.save_pretrained(directory)
    return directory
