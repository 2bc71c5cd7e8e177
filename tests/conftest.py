"""Shared fixtures: the real data in ../shared/data (skipped with a reason where it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Model hubs are unreachable here; fail fast instead of probing the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Tiny heads and batches: one thread avoids oversubscription overhead on small CPU machines.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real third-party data beside the project; absent only in a user's own clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (../shared/data beside the repo)")
    return SHARED_DATA
