"""Encoding and the on-disk embedding cache: hits, every kind of miss, interrupted writes."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest

from embedtune import encoding, precision
from embedtune.config import ModelConfig
from embedtune.encoding import cache_path, encode_corpus, encode_queries, encode_texts
from embedtune.precision import resolve_precision
from embedtune.io import TMP_PREFIX
from embedtune.models import load_model

IDS = ["d1", "d2", "d3", "d4"]
TEXTS = [
    "vitamin d levels reduce cancer risk",
    "high salt diet and blood pressure",
    "fish oil acid and heart disease",
    "numpy array sum returns the sum of values",
]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("EMBEDTUNE_CACHE", str(folder))
    return folder


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(ModelConfig(name=tiny_model_dir))


@pytest.fixture
def encode_calls(monkeypatch):
    """Counts SentenceTransformer.encode calls (on the class: half-precision copies count too)."""
    from sentence_transformers import SentenceTransformer

    calls = []
    real = SentenceTransformer.encode

    def counting(self, sentences, *args, **kwargs):
        calls.append(len(sentences))
        return real(self, sentences, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformer, "encode", counting)
    return calls


def test_encode_texts_gives_unit_float32_vectors(model):
    vecs = encode_texts(model, TEXTS, show_progress=False)
    assert vecs.dtype == np.float32 and vecs.shape == (4, model.dim)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert encode_texts(model, [], show_progress=False).shape == (0, model.dim)


def test_second_encode_corpus_hits_the_cache(model, tiny_model_dir, cache, encode_calls):
    cfg = ModelConfig(name=tiny_model_dir, precision="fp32")
    first = encode_corpus(model, cfg, IDS, TEXTS, show_progress=False)
    assert len(encode_calls) == 1
    path = cache_path(model, cfg, IDS, TEXTS)
    assert path.is_file() and path.parent.parent == cache
    second = encode_corpus(model, cfg, IDS, TEXTS, show_progress=False)
    assert len(encode_calls) == 1  # nothing encoded
    assert isinstance(second, np.memmap)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(second, encode_texts(model, TEXTS, precision="fp32", show_progress=False), atol=1e-6)


@pytest.mark.parametrize("change", ["prompt", "max_seq_length", "text", "id", "precision"])
def test_anything_that_changes_the_vectors_misses_the_cache(change, model, tiny_model_dir, cache, encode_calls, monkeypatch):
    cfg = ModelConfig(name=tiny_model_dir, precision="fp32")
    encode_corpus(model, cfg, IDS, TEXTS, show_progress=False)
    ids, texts = list(IDS), list(TEXTS)
    if change == "prompt":
        cfg = cfg.model_copy(update={"document_prompt": "passage: "})
    elif change == "max_seq_length":
        monkeypatch.setattr(model.st, "max_seq_length", 16)
    elif change == "text":
        texts[2] = texts[2] + " omega"
    elif change == "id":
        ids[0] = "other"
    elif change == "precision":
        monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
        cfg = cfg.model_copy(update={"precision": "bf16"})
    before = len(encode_calls)
    encode_corpus(model, cfg, ids, texts, show_progress=False)
    assert len(encode_calls) == before + 1
    assert len(list(cache.rglob("*.npy"))) == 2


def test_queries_are_cached_under_their_own_prompt(model, tiny_model_dir, cache, encode_calls):
    cfg = ModelConfig(name=tiny_model_dir, precision="fp32", query_prompt="query: ")
    q = encode_queries(model, cfg, ["q1", "q2"], ["salt", "fish oil"])
    encode_queries(model, cfg, ["q1", "q2"], ["salt", "fish oil"])
    assert len(encode_calls) == 1
    # the same texts as a corpus (document prompt "") are another entry
    encode_corpus(model, cfg, ["q1", "q2"], ["salt", "fish oil"], show_progress=False)
    assert len(encode_calls) == 2
    np.testing.assert_allclose(q, encode_texts(model, ["salt", "fish oil"], prompt="query: ", precision="fp32", show_progress=False), atol=1e-6)


def test_interrupted_write_leaves_no_entry_and_no_temp_file(model, tiny_model_dir, cache, encode_calls, monkeypatch):
    cfg = ModelConfig(name=tiny_model_dir, precision="fp32")
    real_save = np.save

    def killed(fh, array, **kwargs):
        fh.write(b"\x93NUMPY half an entry")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        encode_corpus(model, cfg, IDS, TEXTS, show_progress=False)
    assert not cache_path(model, cfg, IDS, TEXTS).exists()
    assert [p for p in cache.rglob("*") if p.is_file()] == []
    monkeypatch.setattr(np, "save", real_save)
    vecs = encode_corpus(model, cfg, IDS, TEXTS, show_progress=False)  # encodes again, then hits
    encode_corpus(model, cfg, IDS, TEXTS, show_progress=False)
    assert len(encode_calls) == 2 and vecs.shape == (4, model.dim)


def test_unreadable_entry_is_replaced(model, tiny_model_dir, cache, encode_calls, caplog):
    cfg = ModelConfig(name=tiny_model_dir, precision="fp32")
    path = cache_path(model, cfg, IDS, TEXTS)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a numpy file")
    with caplog.at_level(logging.WARNING, logger="embedtune"):
        vecs = encode_corpus(model, cfg, IDS, TEXTS, show_progress=False)
    assert "ignoring unreadable cache entry" in caplog.text
    assert len(encode_calls) == 1 and np.load(path).shape == vecs.shape


def test_stale_temp_files_of_killed_runs_are_removed(model, tiny_model_dir, cache):
    cfg = ModelConfig(name=tiny_model_dir, precision="fp32")
    folder = cache_path(model, cfg, IDS, TEXTS).parent
    folder.mkdir(parents=True)
    stale, fresh = folder / f"{TMP_PREFIX}old.npy.x", folder / f"{TMP_PREFIX}new.npy.y"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")  # may belong to a run writing right now
    old = time.time() - 2 * encoding.STALE_TEMP_SECONDS
    os.utime(stale, (old, old))
    encode_corpus(model, cfg, IDS, TEXTS, show_progress=False)
    assert not stale.exists() and fresh.exists()


def test_bf16_falls_back_to_fp32_without_cpu_support(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    precision._warn_no_bf16.cache_clear()
    with caplog.at_level(logging.WARNING, logger="embedtune"):
        assert resolve_precision("bf16", "cpu") == "fp32"
    assert "no bf16 instructions" in caplog.text
    assert resolve_precision("bf16", "cuda:0") == "bf16"
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu") == precision.AUTO_INFERENCE_CPU
    assert resolve_precision("auto", "cuda") == precision.AUTO_INFERENCE_CUDA


def test_bf16_vectors_are_close_to_fp32_and_unit_length(model, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)  # emulated if the CPU lacks it: slower, same numbers
    fp32 = encode_texts(model, TEXTS, precision="fp32", show_progress=False)
    bf16 = encode_texts(model, TEXTS, precision="bf16", show_progress=False)
    assert bf16.dtype == np.float32
    assert np.allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-6)
    assert np.min(np.sum(fp32 * bf16, axis=1)) > 0.98
    assert next(model.st.parameters()).dtype.is_floating_point and str(next(model.st.parameters()).dtype) == "torch.float32"


def test_fp16_on_cpu_is_a_config_error(model):
    from embedtune.errors import ConfigError

    with pytest.raises(ConfigError, match="fp16"):
        encode_texts(model, TEXTS, precision="fp16", show_progress=False)


def test_int8_precision_runs_the_quantised_graph_close_to_fp32(model, cache):
    """precision int8: the transformer quantised once per model (under the cache folder), vectors
    close to fp32 but not equal (the int8 graph really ran), cached under their own key."""
    fp32 = encode_texts(model, TEXTS, precision="fp32", show_progress=False)
    int8 = encode_texts(model, TEXTS, precision="int8", show_progress=False)
    assert int8.dtype == np.float32 and np.allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    cos = np.sum(fp32 * int8, axis=1)
    assert cos.min() > 0.95 and not np.allclose(fp32, int8, atol=1e-6)
    assert list((cache / "onnx").glob("*-int8/onnx/model_int8.onnx"))
    # the twin ranks the texts by a query like fp32 does
    q32 = encode_texts(model, ["salt and blood pressure"], precision="fp32", show_progress=False)
    q8 = encode_texts(model, ["salt and blood pressure"], precision="int8", show_progress=False)
    assert np.argmax(fp32 @ q32[0]) == np.argmax(int8 @ q8[0])
    cfgs = [ModelConfig(name=str(model.path), precision=p) for p in ("fp32", "int8")]
    assert cache_path(model, cfgs[0], ["a"], ["x"]) != cache_path(model, cfgs[1], ["a"], ["x"])


def test_int8_twin_follows_weights_changed_in_memory(tiny_model_dir, cache):
    """A model trained or merged in memory keeps the folder's fingerprint attribute: its int8 graph
    must be made from the weights it has now, not from the folder's."""
    import torch

    model = load_model(ModelConfig(name=tiny_model_dir))
    before = encode_texts(model, TEXTS, precision="int8", show_progress=False)
    with torch.no_grad():
        for p in model.st[0].auto_model.encoder.parameters():
            p.mul_(0.5)
    after32 = encode_texts(model, TEXTS, precision="fp32", show_progress=False)
    after8 = encode_texts(model, TEXTS, precision="int8", show_progress=False)
    assert np.sum(after32 * after8, axis=1).min() > np.sum(after32 * before, axis=1).min()
    assert len(list((cache / "onnx").glob("*-int8"))) == 2
