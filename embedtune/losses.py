"""Contrastive losses for retrieval fine-tuning, built from sentence-transformers' own losses.

The factory maps a small config onto sentence-transformers' loss classes; nothing here
re-implements a loss:

- ``mnrl``: MultipleNegativesRankingLoss (InfoNCE): each query against its positive, its own
  hard negatives and every other document in the batch. ``scale`` = 1 / temperature.
- ``cached_mnrl``: the same loss with GradCache, so a large effective batch (more in-batch
  negatives) fits in the memory of ``mini_batch_size`` rows; same result, slower per row.
- ``gist``: GISTEmbedLoss, MNRL where a frozen guide model (the base model) masks in-batch
  "negatives" the guide scores above the positive -- likely unlabeled positives.
- ``margin_mse``: MarginMSELoss, distillation of a teacher's score margins -- a cross-encoder or
  mining's hybrid BM25 + dense teacher (needs ``teacher_positive_score``/``teacher_negative_scores``
  in the mined data).
- ``listwise_kl``: DistillKLDivLoss, listwise distillation: the KL divergence between the teacher's
  and the student's softmax over each query's candidate list (positive + hard negatives), both at
  temperature 1/``scale``. Where MarginMSE matches each (positive, negative) margin on its own,
  this matches the whole list's shape, so several negatives per query teach the ordering among
  them too (Lin et al. 2021, "tightly-coupled teachers"). Same teacher columns as ``margin_mse``.

``mnrl`` and ``cached_mnrl`` with ``mask_known_positives`` (the default) are sentence-transformers' losses that also
knows the qrels: an in-batch document relevant to a query is not its negative
(:mod:`embedtune.masked_mnrl`).

``matryoshka_dims`` wraps any of them in MatryoshkaLoss, so truncated embeddings stay useful.
Under data-parallel training ``gather_across_devices`` makes the in-batch negatives span the
global batch instead of each device's share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from .config import StrictModel
from .errors import ConfigError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from torch import nn

    from .masked_mnrl import KnownPositives

LossName = Literal["mnrl", "cached_mnrl", "gist", "margin_mse", "listwise_kl"]
TEACHER_LOSSES = ("margin_mse", "listwise_kl")  # losses whose labels are the teacher's scores
KNOWN_POSITIVE_LOSSES = ("mnrl", "cached_mnrl")  # losses that mask known positives (labels: row indices)


class LossConfig(StrictModel):
    """Which contrastive objective, and its knobs."""

    name: LossName = Field("mnrl", description="mnrl | cached_mnrl | gist | margin_mse | listwise_kl.")
    scale: float = Field(
        20.0, gt=0, description="Similarity scale = 1/temperature (mnrl, cached_mnrl, gist; listwise_kl: "
        "of both the student's and the teacher's softmax, whose scores are in cosine units). 20 = temperature 0.05."
    )
    mini_batch_size: int = Field(16, gt=0, description="Rows embedded at once (memory), not the batch size: cached_mnrl "
                                 "(GradCache), margin_mse and listwise_kl (gradient accumulation: their rows are independent).")
    gist_margin: float = Field(
        0.0, ge=0, description="gist: in-batch negatives the guide scores above (positive - margin) are masked."
    )
    matryoshka_dims: list[int] | None = Field(
        None, description="Also train truncated embeddings of these sizes, e.g. [384, 256, 128, 64]."
    )
    gather_across_devices: bool = Field(
        True, description="Multi-device: in-batch negatives from the whole global batch (no effect on one device)."
    )
    mask_known_positives: bool = Field(
        True,
        description="mnrl, cached_mnrl: in-batch documents that the training data marks relevant to a query are not its "
        "negatives (see embedtune.masked_mnrl). Other losses: no effect (gist masks by its guide model instead).",
    )

    @model_validator(mode="after")
    def _check_dims(self) -> "LossConfig":
        if self.matryoshka_dims is not None:
            if not self.matryoshka_dims or any(d <= 0 for d in self.matryoshka_dims):
                raise ValueError("matryoshka_dims must be a non-empty list of positive sizes")
        return self


def build_loss(
    model: "SentenceTransformer",
    cfg: LossConfig,
    *,
    guide: "SentenceTransformer | None" = None,
    distributed: bool = False,
    known_positives: "KnownPositives | None" = None,
) -> "nn.Module":
    """The configured loss on ``model``. ``gist`` needs ``guide`` (a frozen copy of the base model);
    ``distributed``: training runs in several processes (gathering across devices applies);
    ``known_positives``: the rows' ids, for ``mnrl``/``cached_mnrl`` with ``mask_known_positives`` (the trainer
    then passes row indices as labels)."""
    from sentence_transformers.sentence_transformer import losses

    gather = cfg.gather_across_devices and distributed

    if cfg.name == "mnrl" and known_positives is not None:
        from .masked_mnrl import KnownPositivesMNRL

        loss = KnownPositivesMNRL(model, known_positives, scale=cfg.scale, gather_across_devices=gather)
    elif cfg.name == "mnrl":
        loss = losses.MultipleNegativesRankingLoss(model, scale=cfg.scale, gather_across_devices=gather)
    elif cfg.name == "cached_mnrl" and known_positives is not None:
        from .masked_mnrl import KnownPositivesCachedMNRL

        loss = KnownPositivesCachedMNRL(model, known_positives, scale=cfg.scale, mini_batch_size=cfg.mini_batch_size,
                                        gather_across_devices=gather)
    elif cfg.name == "cached_mnrl":
        loss = losses.CachedMultipleNegativesRankingLoss(
            model, scale=cfg.scale, mini_batch_size=cfg.mini_batch_size, gather_across_devices=gather
        )
    elif cfg.name == "gist":
        if guide is None:
            raise ConfigError("loss 'gist' needs a guide model", field="loss.name")
        guide.requires_grad_(False)  # the guide only scores; it must never be updated by the optimizer
        guide.eval()
        loss = losses.GISTEmbedLoss(
            model, guide, temperature=1.0 / cfg.scale, margin_strategy="absolute", margin=cfg.gist_margin,
            gather_across_devices=gather,
        )
    elif cfg.name == "margin_mse":
        # The student's dot product (cosine for normalised models) is compared to the teacher's margins:
        # the hybrid teacher's are in cosine units; cross-encoder logits are on their own, wider scale.
        loss = losses.MarginMSELoss(model)
    elif cfg.name == "listwise_kl":
        # One temperature for both sides: the hybrid teacher's scores are in cosine units, like the student's.
        # The loss is scaled by temperature**2 (Hinton et al.), so scale keeps gradients comparable.
        loss = losses.DistillKLDivLoss(model, temperature=1.0 / cfg.scale)
    else:  # pragma: no cover - Literal validation makes this unreachable
        raise ConfigError(f"unknown loss '{cfg.name}'", field="loss.name")

    if cfg.matryoshka_dims:
        dim = model.get_embedding_dimension()
        too_big = [d for d in cfg.matryoshka_dims if d > dim]
        if too_big:
            raise ConfigError(f"matryoshka_dims {too_big} exceed the model's embedding size {dim}", field="loss.matryoshka_dims")
        loss = losses.MatryoshkaLoss(model, loss, matryoshka_dims=sorted(set(cfg.matryoshka_dims), reverse=True))
    return loss
