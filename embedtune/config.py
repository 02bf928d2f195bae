"""Typed settings: one pydantic model per stage, filled from YAML, overridden by CLI flags.

Unknown keys are errors (``extra="forbid"``): a typo in a config must not silently fall back to
a default. Stage configs live next to their stage (``evaluation.EvalConfig``...); this module
holds the shared pieces (model and data settings) and the YAML loader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError

Precision = Literal["auto", "fp32", "bf16", "fp16"]
# Inference adds int8: the transformer as a dynamically quantised ONNX graph (embedtune.onnx_model)
InferencePrecision = Literal["auto", "fp32", "bf16", "fp16", "int8"]


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ModelConfig(StrictModel):
    """Which embedding model, and how texts are turned into vectors with it."""

    name: str = Field("minilm", description="Local sentence-transformers folder, Hugging Face id, or 'minilm'.")
    query_prompt: str = Field("", description="Prefix for queries, e.g. 'query: ' for e5 models.")
    document_prompt: str = Field("", description="Prefix for passages, e.g. 'passage: ' for e5 models.")
    max_seq_length: int | None = Field(None, gt=0, description="Token limit; default: the model's own.")
    batch_size: int = Field(64, gt=0)
    precision: InferencePrecision = Field(
        "auto", description="Inference precision: fp32 | bf16 | fp16 (CUDA) | int8 (CPU, onnxruntime); 'auto' picks the measured default.")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1'...")
    trust_remote_code: bool = Field(False, description="Run code shipped with a model. Off unless asked for.")


class HybridScoreConfig(StrictModel):
    """How the hybrid teacher scores (``embedtune.mining.teachers``): BM25 standardised over the query's
    top documents, fused with the base model's cosine. Mining's teacher and query-side distillation share it."""

    bm25_weight: float = Field(0.5, gt=0, lt=1, description="Weight of BM25 in the fusion (dense gets 1 - weight).")
    stats_depth: int = Field(100, ge=2, description="Each score is standardised by the mean/spread of the query's top this many.")


class ChunkingConfig(StrictModel):
    """How long documents are split into passages (in tokens of the model)."""

    max_tokens: int | None = Field(None, gt=8, description="Passage length; default: the model's max length.")
    overlap: int = Field(32, ge=0, description="Tokens shared by consecutive passages.")
    max_passages_per_doc: int = Field(
        2000, gt=0, description="Longer documents are truncated to this many passages, with a warning."
    )


class CorpusConfig(StrictModel):
    """Where the user's documents are and which fields hold what."""

    path: str
    id_field: str = "_id"
    title_field: str = "title"
    text_field: str = "text"
    chunking: ChunkingConfig = ChunkingConfig()


C = TypeVar("C", bound=BaseModel)


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(root)"
    kind = first["type"]
    if kind == "extra_forbidden":
        return f"{source}: field '{loc}': unknown key (typo?)"
    return f"{source}: field '{loc}': {first['msg']} (got {first.get('input')!r})"


def build_config(cls: type[C], data: dict[str, Any], source: str = "config") -> C:
    """Validate a dict into ``cls``; errors become one-line :class:`ConfigError`."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config file not found", file=path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"invalid YAML: {getattr(err, 'problem', err)}", file=path, line=line) from None
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", file=path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("top level must be a mapping of keys to values", file=path)
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any], *, keep_none: bool = False) -> dict[str, Any]:
    """Return ``base`` with ``override`` merged in. None values in override are ignored (a CLI flag
    the user did not pass) unless ``keep_none``: in a YAML section, ``null`` is a setting
    (``relative_margin: null`` turns the filter off) and must reach the config."""
    out = dict(base)
    for key, value in override.items():
        if value is None and not keep_none:
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value, keep_none=keep_none)
        else:
            out[key] = value
    return out


def load_config(cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """YAML file (optional) < CLI overrides; validated into ``cls``."""
    data = read_yaml(path) if path else {}
    data = deep_merge(data, overrides or {})
    return build_config(cls, data, source=str(path) if path else "command-line options")
