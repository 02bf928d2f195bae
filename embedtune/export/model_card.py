"""The model card (``model/README.md``): settings and evaluation read from the run's manifests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..selection import render_selection
from .run_parts import RunParts


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(str(v) for v in value) if value else "(none)"
    elif value is None or value == "":
        text = "(none)" if value == "" else "-"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")



def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            rows += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        rows.append((prefix, obj))
    return rows



def _settings_table(config: dict[str, Any], skip: tuple[str, ...] = ()) -> list[str]:
    lines = ["| setting | value |", "|---|---|"]
    for key, value in _flatten(config):
        if not key.startswith(skip):
            lines.append(f"| `{key}` | {_cell(value)} |")
    return lines



def _base_model(parts: RunParts) -> str | None:
    train = parts.train_manifest or {}
    base = (train.get("models") or {}).get("base") or {}
    return base.get("name") or ((train.get("config") or {}).get("model") or {}).get("name")



def query_side_note(s: dict[str, Any]) -> list[str]:
    """What a user of a query-side model must know: which encoder makes its documents."""
    record = s.get("query_side")
    if not record:
        return []
    enc = record["document_encoder"]
    return [
        "## Query side only", "",
        f"Only the query side of this model was tuned (a {record.get('kind', 'query')} on the query embedding). Documents "
        f"are embedded by the base encoder unchanged (fingerprint `{enc['sha256'][:12]}`): document vectors you already "
        "stored with that encoder stay valid -- keep them, and embed only the queries with this model. Encode queries "
        "with `encode_query` and documents with `encode_document` (plain `encode` is the document side).", "",
        # measured, not assumed: eval/results/query_side.md
        "It is tuned for this collection. Query adapters measured by embedtune lost on collections they were not "
        "trained on (nDCG@10 -0.02 to -0.06; merged halfway with the base still -0.007 to -0.010), where a full "
        "fine-tune can gain: do not use it to search other document collections.", "",
    ]



def render_model_card(parts: RunParts, s: dict[str, Any]) -> str:
    """A sentence-transformers style README: every value comes from the run's files."""
    base = _base_model(parts)
    train = parts.train_manifest or {}
    mine = parts.mine_manifest or {}
    tcfg, mcfg = train.get("config") or {}, mine.get("config") or {}
    tags = ["sentence-transformers", "feature-extraction", "sentence-similarity", "embedtune"]
    front = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity", "tags:"] + [f"- {t}" for t in tags]
    if base and not Path(base).is_absolute() and not base.startswith("."):
        front.append(f"base_model: {json.dumps(base)}")
    front.append("---")
    lines = front + ["", f"# Fine-tuned embedding model{f' (from {base})' if base else ''}", ""]
    lines += [
        "A [sentence-transformers](https://www.sbert.net) model tuned for retrieval with embedtune. "
        "It maps text to normalised vectors; compare them with cosine similarity (= inner product).", "",
        "| | |", "|---|---|",
        f"| Base model | {_cell(base or 'unknown (no train manifest)')} |",
        f"| Embedding dimension | {s['dim']} |",
        f"| Max sequence length | {s['max_seq_length']} tokens |",
        "| Similarity | cosine (L2-normalised vectors, inner product) |",
        f"| Query prompt | `{s['prompts']['query']}` |" if s["prompts"]["query"] else "| Query prompt | (none) |",
        f"| Document prompt | `{s['prompts']['document']}` |" if s["prompts"]["document"] else "| Document prompt | (none) |",
        f"| Weights fingerprint (sha256) | `{s['model_sha256']}` |",
        "",
    ]
    lines += query_side_note(s)
    lines += ["## Training data", ""]
    if mcfg or train:
        data_rows = [("pairs", mcfg.get("pairs")), ("corpus (negatives mined from)", mcfg.get("corpus")),
                     ("mined data hash", (train.get("inputs") or {}).get("data"))]
        rows = (train.get("metrics") or {}).get("train_rows")
        if isinstance(rows, dict):
            data_rows += [(f"training rows: {k}", v) for k, v in rows.items()]
        elif rows is not None:
            data_rows.append(("training rows", rows))
        lines += ["| | |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in data_rows if v is not None] + [""]
    else:
        lines += ["Not recorded (the export was made from a model folder without run manifests).", ""]
    if mcfg:
        lines += ["## Hard-negative mining", "", f"Settings of the mining run (`mine/manifest.json`, created {mine.get('created', '?')}):", ""]
        lines += _settings_table(mcfg) + [""]
    if tcfg:
        lines += ["## Training", "", f"Loss and optimisation settings (`train/manifest.json`, created {train.get('created', '?')}):", ""]
        lines += _settings_table(tcfg) + [""]
        tm = train.get("metrics") or {}
        if tm.get("best_dev_ndcg@10") is not None:
            lines += [f"Dev nDCG@10 during training: {_cell(tm.get('base_dev_ndcg@10'))} (base) -> {_cell(tm.get('best_dev_ndcg@10'))} (best checkpoint); dev set: {_cell(tm.get('dev'))}.", ""]
    if parts.selection:
        lines += render_selection(parts.selection)
    lines += ["## Evaluation", ""] + render_eval_table(parts.eval_metrics, s["source_model_sha256"]) + [""]
    lines += ["## Usage", "", "```python", "from sentence_transformers import SentenceTransformer", "",
              'model = SentenceTransformer("path/to/this/folder")',
              f"query_vectors = model.encode_query([\"your question\"]{_prompt_arg(s['prompts']['query'])})",
              f"doc_vectors = model.encode_document([\"a passage\"]{_prompt_arg(s['prompts']['document'])})",
              "print(model.similarity(query_vectors, doc_vectors))", "```", "",
              "See USAGE.md next to this folder for LangChain and LlamaIndex."]
    if s.get("int8"):
        q = s["int8"]
        bench = q.get("benchmark")
        lines += ["", f"An int8 version for CPU serving is in `../{q['path']}/` (the transformer as a dynamically quantised ONNX graph "
                  f"run by onnxruntime; load it with `SentenceTransformer(path, trust_remote_code=True)` where embedtune is installed): "
                  f"cosine to this model mean {q['mean_cosine']:.4f}, min {q['min_cosine']:.4f}"
                  + (f"; nDCG@10 {bench['ndcg@10_int8']:.4f} vs {bench['ndcg@10_torch']:.4f} on {bench['queries']} queries of {bench['dataset']}." if bench else ".")]
    if s.get("onnx"):
        lines += ["", f"An ONNX export of the transformer is in `onnx/model.onnx` (checked against torch: min cosine {s['onnx']['min_cosine']:.6f} on {s['onnx']['texts']} texts)."]
    versions = train.get("versions") or {}
    if versions:
        lines += ["", "## Framework versions", ""] + [f"- {k}: {v}" for k, v in versions.items()]
    return "\n".join(lines) + "\n"



def _prompt_arg(prompt: str) -> str:
    return f", prompt={json.dumps(prompt)}" if prompt else ""



CARD_METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map@10")



def render_eval_table(metrics: dict[str, Any] | None, fingerprint: str = "") -> list[str]:
    """The evaluation of ``embedtune eval`` (``metrics.json``): mean metrics per system, then
    each system's deltas against the baseline with 95% CI and paired-test p-value. The system
    whose weights fingerprint is the exported model's is marked."""
    if not metrics:
        return ["No evaluation in the run folder (run `embedtune eval` and export again)."]
    systems = metrics.get("systems")
    if not isinstance(systems, list) or not systems or not all(isinstance(x, dict) and isinstance(x.get("metrics"), dict) for x in systems):
        return ["The run's eval/metrics.json has no per-system metrics (not written by `embedtune eval`?); see eval/metrics.json."]
    available = [m for m in CARD_METRICS if all(m in x["metrics"] for x in systems)] or sorted(systems[0]["metrics"])
    this = {x.get("name") for x in systems if isinstance(x.get("model"), dict) and x["model"].get("sha256") == fingerprint}

    def label(name: str) -> str:
        return f"{name} (this model)" if name in this else str(name)

    lines = [
        f"{Path(str(metrics.get('dataset', '?'))).name} / {metrics.get('split', '?')}: {metrics.get('queries', '?')} queries, "
        f"{metrics.get('documents', '?')} documents; exact cosine search, metrics by pytrec_eval as in BEIR.", "",
        "| metric | " + " | ".join(label(x.get("name", "?")) for x in systems) + " |",
        "|---|" + "---:|" * len(systems),
    ]
    for m in available:
        lines.append(f"| {m} | " + " | ".join(f"{x['metrics'][m]:.4f}" for x in systems) + " |")
    if not this:
        lines += ["", "Note: no evaluated system has this model's weights fingerprint; the evaluation is of another model version."]
    for c in metrics.get("comparisons") or []:
        rows = c.get("metrics") or {}
        lines += ["", f"{label(c.get('system', '?'))} vs {label(c.get('baseline', '?'))} (paired randomization test over queries):", "",
                  "| metric | delta | 95% CI | p-value |", "|---|---:|---:|---:|"]
        for m in available:
            r = rows.get(m)
            if isinstance(r, dict) and {"delta", "p_value"} <= set(r):
                ci = r.get("ci95") or [float("nan"), float("nan")]
                lines.append(f"| {m} | {r['delta']:+.4f} | [{ci[0]:+.4f}, {ci[1]:+.4f}] | {r['p_value']:.4f} |")
        wtl = c.get("ndcg@10_per_query")
        if isinstance(wtl, dict):
            lines += ["", f"Per query nDCG@10: {wtl.get('wins')} wins / {wtl.get('ties')} ties / {wtl.get('losses')} losses."]
    return lines
