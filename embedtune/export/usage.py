"""``USAGE.md``: snippets that load the export in sentence-transformers, embedtune, LangChain and
LlamaIndex (and Qdrant), each printing score, passage id and text for one query."""

from __future__ import annotations

import json
from typing import Any

from .config import SAMPLE_TEXTS
from .model_card import query_side_note

QUERY = "what is this collection about?"



TOP_K = 5



def _usage_section(title: str, code: list[str], intro: str = "") -> list[str]:
    return [f"## {title}", "", *([intro, ""] if intro else []), "```python", *code, "```", ""]



def render_usage(s: dict[str, Any]) -> str:
    """USAGE.md: snippets with this export's prompts and paths relative to the export folder (it
    can be moved, zipped and shipped). Every snippet prints the same lines for the same query --
    score, passage id, text -- and the tests execute each one from the file and compare them."""
    qp, dp = s["prompts"]["query"], s["prompts"]["document"]
    index, vdb, int8 = s.get("index"), s.get("vector_db"), s.get("int8")
    query_side = bool(s.get("query_side"))
    show = "    print(f\"{score:.3f}  {pid}  {text[:60]!r}\")"
    lines = [
        "# Using the exported model", "",
        "Paths are relative to this folder: run the snippets from it, or put its location in front of them.", "",
        "Model: `model/` (sentence-transformers folder, safetensors). Vectors are L2-normalised: cosine = inner product. "
        f"Query prompt: {('`' + qp + '`') if qp else '(none)'}; document prompt: {('`' + dp + '`') if dp else '(none)'}. "
        "They are stored in `model/config_sentence_transformers.json`, so `encode_query` / `encode_document` (and "
        "`prompt_name=\"query\"` / `\"document\"`) apply them; text encoded without them will not match the evaluation.", "",
        *query_side_note(s),
    ]
    if index:
        lines += [
            f"Index: `index/` holds {index['count']:,} passages ({index['backend']} backend). Their vectors were computed with "
            f"the model in {index.get('precision', '?')} and are stored as float32; queries encoded in fp32 (or int8, "
            "below) score within rounding of them.", "",
        ]
    load_store = ["import json", "", "with open(\"index/passages.jsonl\", encoding=\"utf-8\") as fh:",
                  "    passages = [json.loads(line) for line in fh]",
                  "texts = [f\"{p['title']} {p['text']}\".strip() for p in passages]"] if index else \
                 ["texts = " + json.dumps(list(SAMPLE_TEXTS)), "passages = [{\"id\": str(i)} for i in range(len(texts))]"]
    lines += _usage_section("sentence-transformers", [
        "from sentence_transformers import SentenceTransformer", "", *load_store, "",
        "model = SentenceTransformer(\"model\")",
        "doc_vectors = model.encode_document(texts, normalize_embeddings=True)",
        f"query_vector = model.encode_query([{json.dumps(QUERY)}], normalize_embeddings=True)",
        "scores = model.similarity(query_vector, doc_vectors)[0]",
        f"for score, i in zip(*scores.topk(min({TOP_K}, len(texts)))):",
        "    score, pid, text = float(score), passages[int(i)][\"id\"], texts[int(i)]", show,
    ], "Encodes the passages again -- for a quick look; the stores below reuse the exported vectors.")
    if int8:
        bench = int8.get("benchmark")
        measured = (f" nDCG@10 on {bench['queries']} queries of {bench['dataset']}: {bench['ndcg@10_int8']:.4f} int8 vs "
                    f"{bench['ndcg@10_torch']:.4f} torch ({bench['ndcg@10_delta']:+.4f}, p = {bench['p_value']:.3f}).") if bench else ""
        lines += _usage_section("int8 on CPU (`model-int8/`)", [
            "from sentence_transformers import SentenceTransformer", "",
            "# trust_remote_code: the folder's transformer is embedtune.onnx_model.OnnxTransformer (an installed",
            "# package, pip install 'embedtune[onnx]'): sentence-transformers 6 asks before importing any class outside itself",
            "model = SentenceTransformer(\"model-int8\", trust_remote_code=True)",
            f"query_vector = model.encode_query([{json.dumps(QUERY)}], normalize_embeddings=True)",
            "print(query_vector.shape)",
        ], "`model-int8/` is the same model with its transformer as a dynamically quantised int8 ONNX graph run by "
           f"onnxruntime: several times faster than fp32 torch on CPU, close but not equal to it (cosine to torch mean "
           f"{int8['mean_cosine']:.4f}, min {int8['min_cosine']:.4f} on {int8['texts']} texts).{measured} In LangChain pass "
           "`model_kwargs={\"trust_remote_code\": True}` to `HuggingFaceEmbeddings`, in LlamaIndex `trust_remote_code=True` "
           "to `HuggingFaceEmbedding`, with `model_name=\"model-int8\"`.")
    if s.get("onnx"):
        lines += [
            "## ONNX (`model/onnx/model.onnx`)", "",
            f"The transformer as a fused fp32 ONNX graph (inputs {', '.join(s['onnx']['inputs'])}, output `last_hidden_state`; "
            f"checked against torch: min cosine {s['onnx']['min_cosine']:.6f}). sentence-transformers runs it with "
            "`SentenceTransformer(\"model\", backend=\"onnx\")` only where optimum is installed, and the optimum releases "
            "pin transformers < 4.58: installing them downgrades transformers 5 and sentence-transformers 6. Without optimum, "
            "serve the int8 model (`--int8`) or the torch folder; any onnxruntime program can run the graph directly "
            "(tokenize with `model/tokenizer.json`, pool `last_hidden_state` as `model/1_Pooling/config.json` says, L2-normalise).", "",
        ]
    if index:
        lines += ["## The exported index (embedtune)", "", "```bash",
                  "embedtune search index \"your question\" -k 5",
                  "embedtune search index --queries queries.txt --out results.jsonl   # many queries in one call",
                  "```", ""]
        lines += _usage_section("embedtune retriever", [
            "from embedtune.retriever import Retriever", "",
            "retriever = Retriever.load(\"index\", hybrid=False)",
            f"for hit in retriever.search({json.dumps(QUERY)}, k={TOP_K}):",
            "    score, pid, text = hit[\"score\"], hit[\"passage_id\"], hit[\"text\"]", show,
        ], "Each hit carries `doc_id`, `position` and `char_start`/`char_end` (the passage's span in its document) for citations.")
    fusion = (index or {}).get("fusion")
    if fusion:
        lines += _usage_section("Hybrid search: BM25 fused with this model", [
            "from embedtune.retriever import Retriever",
            "from embedtune.integrations.langchain import EmbedtuneRetriever as LangChainRetriever",
            "from embedtune.integrations.llamaindex import EmbedtuneRetriever as LlamaIndexRetriever", "",
            "retriever = Retriever.load(\"index\")  # hybrid: the index has a BM25 part",
            f"for hit in retriever.search({json.dumps(QUERY)}, k={TOP_K}):",
            "    score, pid, text = hit[\"score\"], hit[\"passage_id\"], hit[\"text\"]", show,
            f"docs = LangChainRetriever(retriever=retriever, k={TOP_K}).invoke({json.dumps(QUERY)})",
            f"nodes = LlamaIndexRetriever(retriever, similarity_top_k={TOP_K}).retrieve({json.dumps(QUERY)})",
            "assert [d.id for d in docs] == [n.node.node_id for n in nodes]",
        ], f"`index/` also holds a BM25 index of the same passages, and `index/fusion.json` the fusion measured for this "
           f"corpus: {fusion['method']} fusion, BM25 weight {fusion['bm25_weight']:.2f} (dense {1 - fusion['bm25_weight']:.2f}). "
           "`embedtune.retriever` returns that ranking; the LangChain and LlamaIndex retrievers are built on it "
           "(`pip install 'embedtune[rag]'`). From the command line: `embedtune search index \"your question\" --hybrid`.")
    q_kwargs = "{\"normalize_embeddings\": True, \"prompt_name\": \"query\"" + (", \"task\": \"query\"}" if query_side else "}")
    embeddings = ["embeddings = HuggingFaceEmbeddings(",
                  "    model_name=\"model\",",
                  "    encode_kwargs={\"normalize_embeddings\": True, \"prompt_name\": \"document\"},",
                  f"    query_encode_kwargs={q_kwargs},", ")"]
    if vdb:
        lines += _usage_section(f"Vector database: Qdrant (`{vdb['path']}/`)", [
            "from qdrant_client import QdrantClient",
            "from sentence_transformers import SentenceTransformer", "",
            "model = SentenceTransformer(\"model\")",
            f"client = QdrantClient(path={json.dumps(vdb['path'])})",
            f"query_vector = model.encode_query({json.dumps(QUERY)}, normalize_embeddings=True)",
            f"for point in client.query_points({json.dumps(vdb['collection'])}, query=query_vector.tolist(), limit={TOP_K}).points:",
            "    score, pid, text = point.score, point.payload[\"passage_id\"], point.payload[\"text\"]", show,
            "client.close()",
        ], f"`{vdb['path']}/` is a Qdrant database (local mode, `pip install qdrant-client`) holding the index's "
           f"{vdb['count']:,} passages with their vectors (not encoded again), collection `{vdb['collection']}`. Point ids are "
           "row numbers; each payload holds `text`, `doc_id`, `passage_id`, `position`, `title`, `char_start`, `char_end` "
           "(also under `metadata`, where LangChain reads them). The same code runs against a Qdrant server: "
           "`QdrantClient(url=...)` after uploading the points.")
        lines += _usage_section("LangChain (`pip install 'embedtune[rag]'`)", [
            "from langchain_huggingface import HuggingFaceEmbeddings",
            "from langchain_qdrant import QdrantVectorStore",
            "from qdrant_client import QdrantClient", "", *embeddings,
            f"store = QdrantVectorStore(client=QdrantClient(path={json.dumps(vdb['path'])}), collection_name={json.dumps(vdb['collection'])},",
            "                          embedding=embeddings, content_payload_key=\"text\", metadata_payload_key=\"metadata\")",
            f"for doc, score in store.similarity_search_with_score({json.dumps(QUERY)}, k={TOP_K}):",
            "    pid, text = doc.metadata[\"passage_id\"], doc.page_content", show,
            *([
                "",
                "# int8 queries (model-int8/, CPU), same vectors in the store",
                "embeddings_int8 = HuggingFaceEmbeddings(model_name=\"model-int8\", model_kwargs={\"trust_remote_code\": True},",
                f"                                        query_encode_kwargs={q_kwargs})",
                "int8_store = QdrantVectorStore(client=store.client, collection_name=" + json.dumps(vdb['collection']) + ",",
                "                               embedding=embeddings_int8, content_payload_key=\"text\", metadata_payload_key=\"metadata\")",
                f"print(\"int8 top passages:\", [d.metadata[\"passage_id\"] for d in int8_store.similarity_search({json.dumps(QUERY)}, k={TOP_K})])",
            ] if int8 else []),
            "store.client.close()",
        ], "The exported vectors through LangChain's Qdrant store; queries are embedded with the model and its query prompt.")
        lines += _usage_section("LlamaIndex (`pip install 'embedtune[rag]'`)", [
            "from llama_index.core import VectorStoreIndex",
            "from llama_index.embeddings.huggingface import HuggingFaceEmbedding",
            "from llama_index.vector_stores.qdrant import QdrantVectorStore",
            "from qdrant_client import QdrantClient", "",
            *(["# query-side model: HuggingFaceEmbedding encodes queries on the document side (no adapter);",
               "# search through the embedtune retriever above, or embed queries with model.encode_query"] if query_side else []),
            "embed_model = HuggingFaceEmbedding(model_name=\"model\", query_instruction=" + json.dumps(qp)
            + ", text_instruction=" + json.dumps(dp) + ", normalize=True)",
            f"client = QdrantClient(path={json.dumps(vdb['path'])})",
            f"store = QdrantVectorStore(client=client, collection_name={json.dumps(vdb['collection'])})",
            "index = VectorStoreIndex.from_vector_store(store, embed_model=embed_model)",
            f"for hit in index.as_retriever(similarity_top_k={TOP_K}).retrieve({json.dumps(QUERY)}):",
            "    score, pid, text = hit.score, hit.node.metadata[\"passage_id\"], hit.node.get_content()", show,
            *([
                "",
                "# int8 queries (model-int8/, CPU), same vectors in the store",
                "embed_int8 = HuggingFaceEmbedding(model_name=\"model-int8\", trust_remote_code=True, query_instruction=" + json.dumps(qp)
                + ", text_instruction=" + json.dumps(dp) + ", normalize=True)",
                "index_int8 = VectorStoreIndex.from_vector_store(store, embed_model=embed_int8)",
                f"hits = index_int8.as_retriever(similarity_top_k={TOP_K}).retrieve({json.dumps(QUERY)})",
                "print(\"int8 top passages:\", [hit.node.metadata[\"passage_id\"] for hit in hits])",
            ] if int8 else []),
            "client.close()",
        ], "The exported vectors through LlamaIndex's Qdrant store.")
    else:
        hint = " (export with `--vector-db qdrant` to use the index's vectors instead of encoding again)" if index else ""
        lines += _usage_section("LangChain (`pip install 'embedtune[rag]'`)", [
            "from langchain_core.vectorstores import InMemoryVectorStore",
            "from langchain_huggingface import HuggingFaceEmbeddings", "", *load_store, "", *embeddings,
            "store = InMemoryVectorStore.from_texts(texts, embeddings, metadatas=[{\"passage_id\": p[\"id\"]} for p in passages])",
            f"for doc, score in store.similarity_search_with_score({json.dumps(QUERY)}, k={TOP_K}):",
            "    pid, text = doc.metadata[\"passage_id\"], doc.page_content", show,
        ], f"Encodes the texts in memory{hint}.")
    return "\n".join(lines)
