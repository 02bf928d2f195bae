"""The ``mine`` stage's settings: candidate retrieval, the false-negative filters, sampling and the teachers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ..config import HybridScoreConfig, ModelConfig, StrictModel
from ..pairs import SelfPairsConfig
from ..search import BackendName

# Order in which removals are counted: a candidate is counted under the first filter that drops it.
FILTERS = ("known_positive", "duplicate_of_positive", "relative_margin", "absolute_margin", "max_score", "teacher")



class CrossEncoderConfig(StrictModel):
    """A local CrossEncoder folder that re-scores candidates (false-negative filter + teacher scores)."""

    path: str = Field(..., description="Local sentence-transformers CrossEncoder folder.")
    margin: float = Field(
        0.0, description="Drop a candidate the cross-encoder scores above (its score of the reference positive - margin; "
        "see margin_against)."
    )
    batch_size: int = Field(32, gt=0)
    max_length: int | None = Field(None, gt=0)
    device: str = "auto"



class HybridTeacherConfig(HybridScoreConfig):
    """BM25 + the mining model's cosine as the teacher: GPL-style pseudo-labels (teacher scores for
    MarginMSE, false-negative filter) where no cross-encoder is at hand."""

    margin: float = Field(
        0.0, description="Drop a candidate the teacher scores above (its score of the reference positive - margin)."
    )



class MineConfig(StrictModel):
    """Settings of ``embedtune mine`` (YAML keys; CLI flags override them)."""

    model: ModelConfig = ModelConfig()
    pairs: str = Field(..., description="'dataset:split' (BEIR qrels, splits may be 'train,dev'), a pairs .jsonl, or 'self'.")
    corpus: str | None = Field(None, description="Candidate documents; default: the BEIR folder of a BEIR pairs source.")
    id_field: str = "_id"
    title_field: str = "title"
    text_field: str = "text"
    retriever: Literal["dense", "bm25", "hybrid"] = Field("dense", description="hybrid = dense + BM25 fused with RRF.")
    rrf_k: int = Field(60, gt=0, description="Reciprocal-rank-fusion constant (Cormack et al. 2009).")
    search_backend: Literal["exact"] | BackendName = Field(
        "exact", description="Dense search: exact (numba blocked top-k over the cached array, no copy) or a "
        "searcher backend of embedtune.search (approximate ones trade recall of candidates for speed)."
    )
    num_negatives: int = Field(8, gt=0)
    range_min: int = Field(0, ge=0, description="Skip this many best-ranked non-positive candidates.")
    range_max: int = Field(50, gt=0, description="Consider non-positive candidates up to this rank.")
    sampling: Literal["top", "random"] = "top"
    relative_margin: float | None = Field(0.05, ge=0, lt=1, description="Drop candidates scoring above pos - |pos| * margin.")
    absolute_margin: float | None = Field(None, description="Drop candidates scoring above pos - margin.")
    max_score: float | None = Field(None, description="Drop candidates scoring above this.")
    margin_against: Literal["weakest", "strongest"] = Field(
        "weakest", description="The positive the margins compare with: the query's weakest (a negative must score below "
        "every positive) or strongest (hard negatives on densely judged data, where the weakest of many positives "
        "scores below almost every candidate and 'weakest' leaves none; on NFCorpus those were mostly unjudged "
        "relevant pages and trained worse than random ones: eval/results/history.md)."
    )
    seed: int = 42
    query_chunk_size: int = Field(2048, gt=0, description="Queries searched and filtered together (bounds memory).")
    unmatched_positives: Literal["add", "error"] = Field(
        "add", description="Pairs JSONL positive found in no corpus document: add it to the candidate pool, or fail."
    )
    skip_unknown_ids: bool = Field(False, description="BEIR: drop qrels rows whose query/document id is unknown.")
    cross_encoder: CrossEncoderConfig | None = None
    hybrid_teacher: HybridTeacherConfig | None = Field(
        None, description="BM25 + dense fusion as the teacher (instead of a cross-encoder): teacher scores for MarginMSE."
    )
    self_pairs: SelfPairsConfig = SelfPairsConfig()
    cache_dir: str | None = Field(None, description="Embedding cache folder; default: the encoding module's.")
    report_examples: int = Field(5, ge=0, description="Example queries shown in report.md.")

    @model_validator(mode="after")
    def _window_fits(self) -> "MineConfig":
        if self.cross_encoder is not None and self.hybrid_teacher is not None:
            raise ValueError("choose one teacher: cross_encoder or hybrid_teacher")
        if self.range_max <= self.range_min:
            raise ValueError(f"range_max ({self.range_max}) must be greater than range_min ({self.range_min})")
        if self.num_negatives > self.range_max - self.range_min:
            raise ValueError(
                f"num_negatives ({self.num_negatives}) does not fit in the rank window: only "
                f"{self.range_max - self.range_min} candidates between range_min={self.range_min} and "
                f"range_max={self.range_max}; lower num_negatives or widen the window"
            )
        return self



# where the cache lives and how queries are chunked do not change a single row
NOT_IDENTITY = ("cache_dir", "query_chunk_size")


def identity_config(cfg: MineConfig) -> dict[str, Any]:
    """The settings that decide the results (the run folder's key)."""
    return cfg.model_dump(mode="json", exclude=set(NOT_IDENTITY))
