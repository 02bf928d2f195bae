"""Weight merging (WiSE-FT, Wortsman et al. 2022; LM-Cocktail, Xiao et al. 2023): a tuned model
interpolated with its base, ``theta = (1 - alpha) * theta_base + alpha * mean(theta_tuned...)``.

Fine-tuning on one domain moves the weights away from what made the base model general; part of
the way back usually keeps most of the in-domain gain and loses less elsewhere. ``alpha = 1`` is the
tuned model, ``alpha = 0`` the base. Several tuned models (same base) are averaged first.

Written here because sentence-transformers has no merge, and mergekit (the library for merging
LLMs) is a large dependency built around causal-LM configs; linear interpolation of two state
dicts of the same architecture is a few lines of torch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ModelConfig
from .errors import ConfigError, ModelError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def _vocab_hash(model: "SentenceTransformer") -> str:
    vocab = model.tokenizer.get_vocab()
    return hashlib.sha256("\n".join(sorted(f"{t}\t{i}" for t, i in vocab.items())).encode()).hexdigest()


def check_mergeable(base: "SentenceTransformer", others: list["SentenceTransformer"], names: list[str]) -> None:
    """Same modules, parameter names and shapes, and the same tokenizer -- or a one-line error."""
    ref = base.state_dict()
    ref_vocab = _vocab_hash(base)
    for model, name in zip(others, names):
        state = model.state_dict()
        if [type(m).__name__ for m in model] != [type(m).__name__ for m in base]:
            raise ModelError("cannot merge: the models have different sentence-transformers modules", file=name)
        if state.keys() != ref.keys():
            missing = sorted(ref.keys() ^ state.keys())
            raise ModelError(f"cannot merge: different architectures (parameter '{missing[0]}' is in one model only)", file=name)
        for key, tensor in state.items():
            if tensor.shape != ref[key].shape:
                raise ModelError(f"cannot merge: parameter '{key}' has shape {tuple(tensor.shape)} vs {tuple(ref[key].shape)}", file=name)
        if _vocab_hash(model) != ref_vocab:
            raise ModelError("cannot merge: the models have different tokenizers (vocabularies differ)", file=name)


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}", field="alpha")


def merge_models(base: "SentenceTransformer", tuned: list["SentenceTransformer"], alpha: float,
                 names: list[str] | None = None) -> "SentenceTransformer":
    """A new model: ``base`` moved ``alpha`` of the way to the mean of ``tuned`` (same
    architecture and tokenizer). Floating-point parameters are interpolated; integer buffers
    (position ids) are the base's."""
    import copy

    import torch

    _check_alpha(alpha)
    if not tuned:
        raise ConfigError("give at least one tuned model to merge with the base", field="models")
    check_mergeable(base, tuned, names or [f"model[{i}]" for i in range(len(tuned))])
    merged = copy.deepcopy(base)
    states = [m.state_dict() for m in tuned]
    out = {}
    with torch.no_grad():
        for key, value in base.state_dict().items():
            if not torch.is_floating_point(value):
                out[key] = value
                continue
            mean = torch.stack([s[key].to(torch.float32) for s in states]).mean(dim=0)
            out[key] = ((1.0 - alpha) * value.to(torch.float32) + alpha * mean).to(value.dtype)
    merged.load_state_dict(out)
    return merged


def merge_folders(base: ModelConfig, tuned: list[ModelConfig], alpha: float, out_dir: str | Path) -> Path:
    """Load, merge and save (safetensors, swapped in atomically) -- ``embedtune merge``.

    A query-side model (``train.side: query``) merges by moving its query side ``alpha`` of the way
    from the base (:func:`embedtune.query_side.interpolate_query_side`, what the select stage does);
    its documents stay the base's vectors, so the merge serves the base's indexes too."""
    from .models import load_model
    from .io import save_model_atomically
    from .query_side import interpolate_query_side

    _check_alpha(alpha)  # before loading anything
    base_model = load_model(base)
    models = [load_model(m) for m in tuned]
    query_side = next(((m, cfg) for m, cfg in zip(models, tuned) if m.query_side), None)
    if query_side is None:
        merged = merge_models(base_model.st, [m.st for m in models], alpha, [m.name for m in tuned])
    else:
        model, cfg = query_side
        if len(models) > 1:
            raise ModelError("a query-side model merges with its base alone (one --model): its query side is "
                             "interpolated with the base's, not averaged with other models", file=cfg.name)
        if model.document_fingerprint != base_model.fingerprint:
            raise ModelError("cannot merge: this query-side model's document encoder is not the --base model "
                             f"(sha256 {model.document_fingerprint[:12]} vs {base_model.fingerprint[:12]})", file=cfg.name)
        merged = interpolate_query_side(model, alpha)
    save_model_atomically(merged, Path(out_dir))
    return Path(out_dir)
