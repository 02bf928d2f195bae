"""Model resolution: local folders, the packaged alias, fingerprints."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from embedtune.config import ModelConfig
from embedtune.models import load_model, model_fingerprint, model_info, resolve_model_path


def test_fingerprint_changes_with_weights(tiny_model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert model_fingerprint(copy) == model_fingerprint(tiny_model_dir)
    weights = next(copy.rglob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert model_fingerprint(copy) != model_fingerprint(tiny_model_dir)


def test_trust_remote_code_off_by_default(tiny_model_dir, tmp_path):
    """A model that ships its own code is refused (one line, no traceback) unless the user asks
    for it; its code never runs by default."""
    import json
    import shutil

    from embedtune.errors import ModelError

    assert ModelConfig().trust_remote_code is False
    model = load_model(tiny_model_dir)
    info = model_info(ModelConfig(name=tiny_model_dir, query_prompt="query: "), model)
    assert info["dim"] == 32 and info["query_prompt"] == "query: " and len(info["sha256"]) == 64

    remote = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, remote)
    config = json.loads((remote / "config.json").read_text())
    config.update(model_type="embedtune-test-remote", auto_map={"AutoConfig": "remote_code.RemoteConfig", "AutoModel": "remote_code.RemoteModel"})
    (remote / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "code-ran"
    (remote / "remote_code.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(ModelError, match="ships its own code; pass --trust-remote-code"):
        load_model(str(remote))
    assert not marker.exists()


def test_missing_local_folder_is_clear(tmp_path):
    from embedtune.errors import ModelError

    with pytest.raises(ModelError, match="model folder not found"):
        resolve_model_path(str(tmp_path / "nope"))


@pytest.mark.slow
def test_packaged_minilm_alias():
    model = load_model("minilm")
    assert model.dim == 384 and model.max_seq_length == 256
    emb = model.st.encode(["vitamin d and cancer", "vitamin d lowers cancer risk", "python list sort"], normalize_embeddings=True)
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] + 0.2  # real weights, not random
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_tiny_fixture_tells_texts_apart(tiny_model_dir):
    """The fixture every index/eval/export test runs on must tokenize real words and give
    unrelated texts clearly different embeddings (a 5-token vocabulary once made them all equal)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(tiny_model_dir, device="cpu")
    tokens = model.tokenizer.tokenize("protein cells cancer study")
    assert tokens == ["protein", "cells", "cancer", "study"]
    assert "[UNK]" not in model.tokenizer.tokenize("python numpy file path error")
    emb = model.encode(["protein cells cancer study", "python numpy file path error", "protein cells cancer study"])
    assert float(emb[0] @ emb[2]) > 0.9999
    assert float(emb[0] @ emb[1]) < 0.95
