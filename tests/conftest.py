"""Shared fixtures. Every test runs offline: HF_HUB_OFFLINE is set before anything imports
huggingface_hub, and a socket guard fails any connection to a host other than 127.0.0.1."""

from __future__ import annotations

import os
import socket

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from tiny_models import build_tiny_bert  # noqa: E402

_real_connect = socket.socket.connect


def _guarded_connect(self, address):  # noqa: ANN001
    host = address[0] if isinstance(address, tuple) else address
    if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
        raise RuntimeError(f"test tried to open a network connection to {address!r}; tests must stay offline")
    return _real_connect(self, address)


socket.socket.connect = _guarded_connect


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny random BERT sentence-transformers folder (safetensors, WordPiece), built offline."""
    return str(build_tiny_bert(tmp_path_factory.mktemp("tiny_bert")))
