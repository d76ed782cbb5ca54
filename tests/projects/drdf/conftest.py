"""What several DRDF test files share: one small toy memes folder (Hateful Memes layout) for the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest

from projects.drdf.data import write_toy_memes

TOY_SIZES = {"train": 16, "dev_seen": 9, "test_seen": 8, "test_unseen": 4}


@pytest.fixture(scope="session")
def toy_memes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 / 9 / 8 labelled memes and 4 unlabelled ones, with their tokenizer (read only: copy before changing)."""
    return write_toy_memes(tmp_path_factory.mktemp("drdf_toy"), TOY_SIZES)
