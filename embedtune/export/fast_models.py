"""The fast variants of an exported model: the fused fp32 ONNX graph (``--onnx``) and the int8 model
folder (``--int8``), each checked against the torch model before it is kept."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..errors import ModelError, first_line
from ..io import atomic_write_text, atomic_write_with
from .config import INT8_DIR, INT8_MIN_COSINE, MIN_COSINE, ExportConfig
from .model_folder import embedding_cosines


def export_onnx(model, model_dir: Path, texts: list[str], prompts: dict[str, str]) -> dict[str, Any]:
    """``model_dir/onnx/model.onnx``: the transformer as a fused fp32 ONNX graph
    (:mod:`embedtune.onnx_model`; token tensors in, ``last_hidden_state`` out: the layout optimum
    writes, so ``SentenceTransformer(path, backend="onnx")`` runs it where optimum is installed).
    Checked by running it in onnxruntime against the torch model: min cosine >= ``MIN_COSINE``."""
    from ..onnx_model import FP32_FILE, export_graph, onnx_twin, require_onnx

    require_onnx("--onnx")
    t0 = time.perf_counter()
    onnx_path = model_dir / FP32_FILE
    names: list[str] = []
    try:
        atomic_write_with(onnx_path, lambda tmp: names.extend(export_graph(model, tmp)))
    except ModelError:
        raise
    except Exception as err:
        raise ModelError(f"ONNX export failed: {first_line(err)}", file=model_dir) from None
    export_s = time.perf_counter() - t0
    min_cos, _ = embedding_cosines(model, onnx_twin(model, model_dir, FP32_FILE), texts, prompts)
    if min_cos < MIN_COSINE:
        onnx_path.unlink()
        raise ModelError(f"ONNX embeddings differ from torch (min cosine {min_cos:.6f} < {MIN_COSINE}); ONNX file removed", file=onnx_path)
    return {"path": f"model/{FP32_FILE}", "inputs": names, "min_cosine": min_cos, "texts": len(texts),
            "bytes": onnx_path.stat().st_size, "export_s": round(export_s, 2)}



def export_int8(model, out: Path, texts: list[str], prompts: dict[str, str], cfg: ExportConfig) -> dict[str, Any]:
    """``out/model-int8``: the model with its transformer as an int8 ONNX graph, loaded back the way
    USAGE.md says (``SentenceTransformer(path, trust_remote_code=True)``) and compared with the
    torch model: cosines on the check texts, and nDCG@10 on a sample of ``cfg.benchmark``."""
    from sentence_transformers import SentenceTransformer

    from ..onnx_model import write_onnx_model

    info = write_onnx_model(model, out / INT8_DIR)
    try:
        int8 = SentenceTransformer(str(out / INT8_DIR), device="cpu", local_files_only=True, trust_remote_code=True)
    except Exception as err:
        raise ModelError(f"the int8 model does not load back: {first_line(err)}", file=out / INT8_DIR) from None
    min_cos, mean_cos = embedding_cosines(model, int8, texts, prompts)
    if min_cos < INT8_MIN_COSINE:
        raise ModelError(f"the int8 model's embeddings are too far from torch's (min cosine {min_cos:.4f} < {INT8_MIN_COSINE}): "
                         "this model does not quantise well; export without --int8")
    summary = {"path": INT8_DIR, "onnx_file": info["onnx_file"], "bytes": info["bytes"], "export_s": info["seconds"],
               "min_cosine": min_cos, "mean_cosine": mean_cos, "texts": len(texts)}
    if cfg.benchmark:
        from ..evaluation import sampled_precision_check

        summary["benchmark"] = sampled_precision_check(model, int8, cfg.benchmark, prompts, queries=cfg.benchmark_queries)
    bench = summary.get("benchmark")
    atomic_write_text(out / INT8_DIR / "README.md", "\n".join([  # in place of sentence-transformers' generated card
        "# int8 version of ../model (CPU serving)", "",
        "The model in `../model/` with its transformer as a dynamically quantised int8 ONNX graph "
        f"(`{info['onnx_file']}`) run by onnxruntime; tokenizer, prompts, pooling and normalisation as in `../model/`. "
        "Its model card (training, evaluation) is `../model/README.md`.", "",
        "```python", "from sentence_transformers import SentenceTransformer", "",
        "# the transformer module is embedtune.onnx_model.OnnxTransformer (pip install 'embedtune[onnx]')",
        "model = SentenceTransformer(\"path/to/model-int8\", trust_remote_code=True)", "```", "",
        f"Checked at export against the torch model: cosine mean {mean_cos:.4f}, min {min_cos:.4f} on {len(texts)} texts"
        + (f"; nDCG@10 {bench['ndcg@10_int8']:.4f} vs {bench['ndcg@10_torch']:.4f} on {bench['queries']} queries of {bench['dataset']}." if bench else "."),
        ""]))
    return summary
