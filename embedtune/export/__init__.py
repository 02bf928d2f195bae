"""The export stage: a pipeline run folder -> a self-contained folder to ship (``export_run``).

``RUN_DIR`` is a pipeline run folder (``train/model`` + ``train/manifest.json``, and when they
exist ``index/``, ``eval/metrics.json``, ``mine/manifest.json``), a ``train --out`` folder
(``model/`` + ``manifest.json``) or a bare sentence-transformers folder. The export holds::

    OUT/model/             the tuned model: a plain sentence-transformers folder, safetensors only,
                           with a model card README.md (settings and evaluation read from the
                           run's manifests and metrics) and, with --onnx, onnx/model.onnx
    OUT/index/             the run's index (searcher, id map, passage store, manifest), its
                           manifest pointing at ../model
    OUT/eval/metrics.json  the evaluation the model card quotes
    OUT/USAGE.md           snippets for sentence-transformers, LangChain and LlamaIndex
    OUT/manifest.json      stage "export": sources, what was missing, checks

Nothing outside OUT is written and nothing outside RUN_DIR is read: paths from manifests that
are absolute or climb out with ``..`` are refused, symlinks whose target lies outside RUN_DIR are
neither followed nor copied. Only weight files in safetensors format are copied; the exported
model is loaded back and must give the source model's embeddings.

One module per part of the export: :mod:`.run_parts` (reading the run), :mod:`.model_folder`
(copy + checks), :mod:`.fast_models` (ONNX, int8), :mod:`.index_bundle`, :mod:`.model_card`,
:mod:`.usage` (USAGE.md), :mod:`.stage` (the stage function).
"""

from .config import ExportConfig
from .fast_models import export_int8, export_onnx
from .model_folder import copy_model_folder, model_files, verify_no_pickles
from .run_parts import read_run_folder, safe_relative
from .stage import export_run

__all__ = ["ExportConfig", "export_run", "read_run_folder", "copy_model_folder", "model_files", "verify_no_pickles", "safe_relative",
           "export_onnx", "export_int8"]
