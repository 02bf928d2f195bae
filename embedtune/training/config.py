"""The ``train`` stage's settings (``TrainConfig``, its dev split ``DevConfig``) and the precision
resolver training uses."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..config import HybridScoreConfig, ModelConfig, Precision, StrictModel
from ..precision import resolve_precision
from ..losses import TEACHER_LOSSES, LossConfig


class DevConfig(StrictModel):
    """Evaluation during training: never on the test split."""

    enabled: bool = True
    source: str | None = Field(
        None,
        description="A BEIR dev split such as 'nfcorpus:dev'. Unset: hold out a seeded slice of the training queries.",
    )
    holdout_fraction: float = Field(0.1, gt=0, lt=1, description="Share of training query ids held out when no source.")
    max_queries: int | None = Field(None, gt=0, description="Evaluate at most this many dev queries (seeded sample).")
    corpus_max_docs: int | None = Field(
        None, gt=0,
        description="Evaluate against a seeded sample of the corpus (always keeping the dev queries' relevant and "
        "mined negative documents) to make each evaluation cheaper. Unset: the full corpus. Not with side 'query', "
        "whose models search the base model's cached corpus vectors: always the full corpus.",
    )
    eval_steps: int | None = Field(None, gt=0, description="Evaluate every N steps. Unset: 'evaluations' times per run.")
    evaluations: int = Field(4, gt=0, description="How many evaluations over the run when eval_steps is unset.")
    early_stopping_patience: int | None = Field(
        3, gt=0, description="Stop after this many evaluations without a better dev nDCG@10. Unset: never."
    )



class CorpusTeacherConfig(HybridScoreConfig):
    """Query-side distillation: mining's hybrid teacher (BM25 fused with the base model's cosine) scores
    each training query against the whole corpus, and the KL divergence between its softmax and the
    model's is added to the contrastive loss. Labels say which documents are relevant; the teacher
    grades all the others, including relevant pages nobody judged."""

    weight: float = Field(1.0, gt=0, description="Weight of the KL term beside the contrastive loss (1: equal).")



class TrainConfig(StrictModel):
    """The train stage: model, loss, data shaping, optimisation, dev evaluation."""

    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    negatives_per_query: int = Field(1, ge=0, le=64, description="Hard negatives per row fed to the loss.")
    short_rows: Literal["pad", "drop"] = Field(
        "pad",
        description="Rows with fewer mined negatives than negatives_per_query: 'pad' with random documents from "
        "other rows (never a known positive of the query), or 'drop' them. margin_mse and listwise_kl always drop (the teacher never scored a padding document).",
    )
    max_pairs_per_query: int | None = Field(
        None, gt=0, description="Keep at most N positives per query, highest relevance grade first (e.g. NFCorpus)."
    )
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(32, gt=0, description="Rows per step per device (in-batch negatives come from these).")
    learning_rate: float = Field(2e-5, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup", "polynomial"] = "linear"
    max_grad_norm: float = Field(1.0, gt=0)
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward: with attention_dropout 0, 0.79x the memory for 1.5x the "
                                         "time of a step (eval/bench_memory.py).")
    attention_dropout: float | None = Field(
        0.0, ge=0, lt=1, description="Dropout on attention probabilities while training; null keeps the model's own "
        "(MiniLM: 0.1). 0 (the default) lets torch's fused attention run: about half the activation memory and 1.5-1.9x "
        "faster training with the same nDCG@10 (SciFact, demo: eval/results/attention_dropout.md).")
    precision: Precision = Field(
        "auto", description="Training autocast: 'auto' = bf16/fp16 on CUDA, see embedtune.precision.AUTO_TRAINING_CPU for CPU."
    )
    sampler: Literal["no_duplicates", "random"] = Field(
        "no_duplicates", description="no_duplicates: a text never appears twice in a batch (no false in-batch negatives)."
    )
    seed: int = 42
    dev: DevConfig = DevConfig()
    save_steps: int | None = Field(None, gt=0, description="Checkpoint interval without dev evaluation (default: 100).")
    save_total_limit: int = Field(2, gt=0, description="Checkpoints kept (plus the best one).")
    keep_checkpoints: bool = Field(False, description="Keep DIR/checkpoints after the final model is saved.")
    logging_steps: int = Field(10, gt=0)
    rounds: int = Field(1, ge=1, le=5, description="ANCE-style: re-mine negatives with the tuned model and train again.")
    side: Literal["both", "query"] = Field(
        "both", description="both: fine-tune the encoder (documents must be re-encoded). query: train a linear adapter on "
        "the query embedding only; documents keep the base model's vectors, so existing indexes stay valid "
        "(embedtune.query_side; loss mnrl over the whole corpus, best epoch on dev).",
    )
    query_side: Literal["adapter", "encoder"] = Field(
        "adapter", description="side query: adapter = a linear map on the query embedding (seconds; try learning_rate "
        "1e-3); encoder = a trainable copy of the encoder for queries only (minutes; learning_rate ~3e-5).",
    )
    hybrid_teacher: CorpusTeacherConfig | None = Field(
        None, description="side query: also distil the hybrid teacher's scores of each training query over the whole corpus "
        "(KL, both softmaxes at loss.scale); eval/results/query_side.md.",
    )

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.loss.name in TEACHER_LOSSES and self.negatives_per_query < 1:
            raise ValueError(f"loss {self.loss.name} needs negatives_per_query >= 1")
        if self.loss.name == "gist" and self.negatives_per_query > 1:
            raise ValueError("loss gist takes (query, positive) pairs or one hard negative: set negatives_per_query to 0 or 1")
        if self.side == "query" and (self.loss.name != "mnrl" or self.rounds > 1 or self.loss.matryoshka_dims):
            raise ValueError("side 'query' trains a query adapter with loss mnrl, one round, no matryoshka_dims")
        if self.hybrid_teacher is not None and self.side != "query":
            raise ValueError("hybrid_teacher distils over the whole corpus and needs side 'query'")
        if self.precision == "fp16":
            import torch

            if not torch.cuda.is_available():
                raise ValueError("precision fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
        return self



def resolve_training_precision(precision: str) -> str:
    """The training autocast ``precision`` resolves to on this machine's training device
    (:func:`embedtune.precision.resolve_precision`, the one resolver)."""
    import torch

    return resolve_precision(precision, "cuda" if torch.cuda.is_available() else "cpu", training=True)
