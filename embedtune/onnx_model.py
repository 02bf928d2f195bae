"""A sentence-transformers model whose transformer runs as an ONNX graph in onnxruntime: fp32 or int8.

Why by hand: sentence-transformers' ONNX and OpenVINO backends (export, optimise, quantise, load)
go through optimum, and the optimum releases on the registry pin transformers below the one
embedtune runs on (optimum-onnx: transformers < 4.58; optimum-intel: 5.5) -- installing them
downgrades transformers and sentence-transformers. onnxruntime alone has what is needed, so:

1. **export** the transformer with torch's TorchScript exporter and eager attention: onnxruntime's
   transformer optimiser fuses that graph (Attention, EmbedLayerNormalization, SkipLayerNorm,
   BiasGelu); the dynamo exporter's graph (and SDPA attention) is left unfused: 1.4x torch fp32
   where the fused graph runs 1.96x (MiniLM, SciFact/NFCorpus passages, this 2-core Zen 5;
   eval/results/serving.md);
2. **optimise** it with ``onnxruntime.transformers.optimizer`` (fp32 graph, ``onnx/model.onnx``);
3. **quantise** it dynamically to int8 (``onnx/model_int8.onnx``): weights per output channel
   (per-tensor scales cost MiniLM a mean cosine of 0.936 to fp32; per channel 0.995), only
   MatMuls with a constant weight (activations times activations stay fp32).

:class:`OnnxTransformer` is a sentence-transformers ``Transformer`` module that runs such a graph:
a folder whose ``modules.json`` names it loads with ``SentenceTransformer(folder,
trust_remote_code=True)`` wherever embedtune is installed (sentence-transformers 6 asks for that
flag before importing any module class outside its own package); tokenizer, prompts, pooling and
normalisation are the usual sentence-transformers parts. :func:`write_onnx_model` writes such a folder from a loaded model;
:func:`onnx_encoder` is the int8 encoder of ``precision: int8`` (cached per model).
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ModelError, first_line
from .io import TMP_PREFIX, atomic_write_dir

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger("embedtune")

FP32_FILE = "onnx/model.onnx"
INT8_FILE = "onnx/model_int8.onnx"
OPSET = 17
INSTALL = "pip install 'embedtune[onnx]'"
# Architectures onnxruntime's optimiser knows by name; any other encoder is optimised as "bert"
# (the fusions that match apply, the rest of the graph runs as exported).
OPTIMIZER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "deberta-v2", "electra", "albert"}


def onnx_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def require_onnx(what: str) -> None:
    if not onnx_available():
        raise ModelError(f"{what} needs onnx and onnxruntime ({INSTALL})")


def transformer_of(model: "SentenceTransformer"):
    """The model's Hugging Face transformer module, or a one-line error naming what is there."""
    first = model[0]
    if getattr(first, "auto_model", None) is None or getattr(first, "tokenizer", None) is None:
        raise ModelError(f"ONNX needs a Hugging Face transformer as the model's first module, got {type(first).__name__}"
                         " (a query-side encoder copy has two transformers: use precision bf16 or fp32)")
    return first


def export_graph(model: "SentenceTransformer", path: Path) -> list[str]:
    """Export the transformer (token tensors -> ``last_hidden_state``) to ``path``, fused by
    onnxruntime's optimiser. Returns the graph's input names."""
    import torch

    transformer = transformer_of(model)
    auto_model = copy.deepcopy(transformer.auto_model).float().cpu().eval()
    if hasattr(auto_model, "set_attn_implementation"):
        try:  # eager attention exports to the pattern the optimiser fuses into one Attention node
            auto_model.set_attn_implementation("eager")
        except (ValueError, NotImplementedError):
            pass
    example = transformer.tokenizer(["an example passage of text", "short"], padding=True, return_tensors="pt")
    accepted = set(inspect.signature(auto_model.forward).parameters)
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in example and n in accepted]

    class LastHiddenState(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *tensors):
            return self.inner(**dict(zip(names, tensors))).last_hidden_state

    raw = path.with_name(path.stem + ".raw.onnx")
    axes = {n: {0: "batch_size", 1: "sequence_length"} for n in [*names, "last_hidden_state"]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python branches: the graph is checked after export
        torch.onnx.export(LastHiddenState(auto_model), tuple(example[n] for n in names), str(raw), input_names=names,
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        cfg = auto_model.config
        kind = cfg.model_type if cfg.model_type in OPTIMIZER_TYPES else "bert"
        optimized = optimize_model(str(raw), model_type=kind, num_heads=getattr(cfg, "num_attention_heads", 0),
                                   hidden_size=getattr(cfg, "hidden_size", 0))
        optimized.save_model_to_file(str(path))
    finally:
        raw.unlink(missing_ok=True)
    return names


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of ``src`` into ``dst`` (see the module docstring for the settings)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"MatMulConstBOnly": True, "DefaultTensorType": 1})  # 1 = float


def _make_module_class():
    import torch

    try:
        from sentence_transformers.sentence_transformer.modules import Transformer
    except ImportError:  # sentence-transformers 5
        from sentence_transformers.models import Transformer
    from transformers.modeling_outputs import BaseModelOutput

    class OrtModel(torch.nn.Module):
        """A torch module in name only (sentence-transformers moves and inspects its modules):
        the forward pass is one onnxruntime session run."""

        def __init__(self, path: Path, config: Any) -> None:
            import onnxruntime as ort

            super().__init__()
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.log_severity_level = 3
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.input_names = [i.name for i in self.session.get_inputs()]
            self.config, self.path = config, path

        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs):
            feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            if feeds["token_type_ids"] is None and input_ids is not None:
                feeds["token_type_ids"] = torch.zeros_like(input_ids)
            arrays = {n: feeds[n].cpu().numpy().astype(np.int64) for n in self.input_names}
            hidden = self.session.run(["last_hidden_state"], arrays)[0]
            return BaseModelOutput(last_hidden_state=torch.from_numpy(hidden))

        def save_pretrained(self, output_path: str, **kwargs) -> None:
            self.config.save_pretrained(output_path)

    class OnnxTransformerModule(Transformer):
        """sentence-transformers ``Transformer`` whose model is an ONNX graph run by onnxruntime.

        ``onnx_file`` (saved in ``sentence_bert_config.json``) is the graph inside the folder."""

        config_keys = [*Transformer.config_keys, "onnx_file"]

        def __init__(self, model_name_or_path: str, *args, onnx_file: str = INT8_FILE, **kwargs) -> None:
            object.__setattr__(self, "onnx_file", onnx_file)  # before torch.nn.Module's __init__: read by _load_model
            kwargs["backend"] = "torch"  # the graph is loaded by _load_model below, not by optimum
            super().__init__(model_name_or_path, *args, **kwargs)

        def _load_model(self, model_name_or_path, transformer_task, config, backend, is_peft_model, **model_kwargs):
            path = Path(model_name_or_path) / self.onnx_file
            if not path.is_file():
                raise ModelError("ONNX graph missing", file=path)
            return OrtModel(path, config)

        def save(self, output_path: str, *args, **kwargs) -> None:
            self.model.config.save_pretrained(output_path)
            self.processor.save_pretrained(output_path)
            self.save_config(output_path)
            dst = Path(output_path) / self.onnx_file
            dst.parent.mkdir(parents=True, exist_ok=True)
            if self.model.path.resolve() != dst.resolve():
                shutil.copyfile(self.model.path, dst)

    OnnxTransformerModule.__name__ = OnnxTransformerModule.__qualname__ = "OnnxTransformer"
    OnnxTransformerModule.__module__ = __name__
    return OnnxTransformerModule


def __getattr__(name: str):
    # sentence-transformers imports the class named in modules.json ("embedtune.onnx_model.OnnxTransformer");
    # built lazily so that importing embedtune does not import sentence-transformers
    if name == "OnnxTransformer":
        cls = _make_module_class()
        globals()["OnnxTransformer"] = cls
        return cls
    raise AttributeError(name)


def write_onnx_model(model: "SentenceTransformer", out_dir: str | Path, *, int8: bool = True) -> dict[str, Any]:
    """Write a sentence-transformers folder whose transformer is the ONNX graph of ``model`` (int8
    quantised unless ``int8=False``), with the model's other modules, prompts and tokenizer.
    Written in a temp folder renamed into place. Returns what was written."""
    require_onnx("int8 / ONNX encoding")
    transformer = transformer_of(model)
    out_dir = Path(out_dir)
    rel = INT8_FILE if int8 else FP32_FILE
    t0 = time.perf_counter()

    def write(tmp: Path) -> None:
        # the graph, config and tokenizer first (what OnnxTransformer loads), then the whole model
        # saved by sentence-transformers from there into ``tmp``
        with tempfile.TemporaryDirectory(prefix=TMP_PREFIX, dir=out_dir.parent) as work:
            src = Path(work)
            (src / "onnx").mkdir()
            transformer.auto_model.config.save_pretrained(src)
            transformer.tokenizer.save_pretrained(src)
            try:
                export_graph(model, src / FP32_FILE)
                if int8:
                    quantize_int8(src / FP32_FILE, src / INT8_FILE)
            except ModelError:
                raise
            except Exception as err:
                raise ModelError(f"{'int8' if int8 else 'ONNX'} export of this model failed: {first_line(err)}") from None
            onnx = onnx_twin(model, src, rel)
            onnx.prompts = dict(getattr(model, "prompts", {}) or {})
            onnx.default_prompt_name = getattr(model, "default_prompt_name", None)
            onnx.save(str(tmp))

    atomic_write_dir(out_dir, write)
    return {"path": str(out_dir), "onnx_file": rel, "bytes": (out_dir / rel).stat().st_size,
            "seconds": round(time.perf_counter() - t0, 2)}


def onnx_twin(model: "SentenceTransformer", folder: str | Path, onnx_file: str) -> "SentenceTransformer":
    """``model`` with its transformer replaced by the graph ``folder/onnx_file`` (``folder`` holds
    the transformer's config and tokenizer); the other modules are shared with ``model``."""
    from sentence_transformers import SentenceTransformer

    first = __getattr__("OnnxTransformer")(str(folder), onnx_file=onnx_file, max_seq_length=model.max_seq_length)
    return SentenceTransformer(modules=[first, *list(model)[1:]], device="cpu")


def onnx_encoder(model: "SentenceTransformer", folder: Path) -> "SentenceTransformer":
    """The int8 twin of ``model`` for ``precision: int8``: its transformer quantised to an int8
    ONNX graph (written once per weights under ``folder``: the embedding cache's ``onnx/``), its
    other modules shared with ``model``.

    Keyed by the transformer's weights themselves, not by the folder the model came from: a model
    trained or merged in memory (select's candidates, a query-side encoder copy) gets its own graph."""
    return _onnx_encoder(model, Path(folder) / f"{weights_digest(model[0])[:32]}-int8", model.max_seq_length)


_DIGESTS: dict[tuple, str] = {}


def weights_digest(module) -> str:
    """sha256 of a module's parameters, remembered per (module, tensor storage, in-place version)
    so that a search of one query does not hash the weights again; an optimizer step or a merge
    bumps the tensors' versions and the digest is computed afresh."""
    import hashlib

    import torch

    params = list(module.state_dict().values())
    key = (id(module), *((p.data_ptr(), p._version) for p in params))
    if key not in _DIGESTS:
        h = hashlib.sha256()
        for p in params:
            t = p.detach().cpu().contiguous()
            h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        if len(_DIGESTS) > 32:
            _DIGESTS.clear()
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


@functools.lru_cache(maxsize=2)
def _onnx_encoder(model: "SentenceTransformer", folder: Path, max_seq_length: int) -> "SentenceTransformer":
    if not (folder / INT8_FILE).is_file():
        log.info("quantising the model to int8 ONNX (once per weights): %s", folder)
        write_onnx_model(model, folder)
    return onnx_twin(model, folder, INT8_FILE)
