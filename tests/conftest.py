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


def tiny_wavlm_config(layers: int = 2, **extra: object):
    """A WavLM small enough to build and run in a test (random weights, 32-d hidden states)."""
    from transformers import WavLMConfig

    return WavLMConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                       intermediate_size=48, conv_dim=(32, 32, 32), conv_stride=(5, 4, 2),
                       conv_kernel=(10, 4, 2), num_conv_pos_embeddings=16,
                       num_conv_pos_embedding_groups=2, num_buckets=16, max_bucket_distance=50,
                       **extra)
