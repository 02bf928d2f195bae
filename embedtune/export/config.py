"""The ``export`` stage's settings and the thresholds its checks hold the exported models to."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..config import StrictModel

STAGE = "export"



MIN_COSINE = 0.9999



# int8 vectors are close to fp32, not equal (MiniLM: mean cosine 0.995, min 0.99, eval/results/encoding.md);
# below this the quantised model is broken, not approximate
INT8_MIN_COSINE = 0.95



INT8_DIR = "model-int8"



SAMPLE_TEXTS = (
    "What does this model do?",
    "A longer passage of text that the model turns into one vector, so that similar passages end up close together.",
    "short",
)



class ExportConfig(StrictModel):
    onnx: bool = Field(False, description="Also export the transformer to ONNX (model/onnx/model.onnx), checked against torch.")
    int8: bool = Field(False, description="Also write model-int8/: the model with its transformer as an int8 ONNX graph (CPU serving).")
    check_samples: int = Field(64, gt=0, description="Texts (passages of the index when there is one) used to check the exported model.")
    benchmark: str | None = Field(None, description="BEIR folder[:split] to measure the int8 model's nDCG@10 against the torch model on.")
    benchmark_queries: int = Field(200, gt=0, description="Queries of the benchmark sampled for the int8 check.")
    vector_db: Literal["qdrant"] | None = Field(None, description="Also write the index's passages and vectors into this embedded vector database (OUT/qdrant/).")
