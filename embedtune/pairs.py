"""Where (query, positive) pairs for mining come from.

Three sources, all returning a :class:`PairSet`:

* a BEIR qrels split (``scifact:train``, ``path/to/beir:train,dev``): one pair per judgement with
  a score > 0; every judged-relevant document of a query, over all the splits given, is a known
  positive of that query and never one of its negatives;
* a pairs JSONL (``query``, ``positive``, optional ``negatives``): a positive is matched to a
  corpus document by exact text (the document's ``full_text`` -- title + " " + text -- or its
  ``text`` alone). A positive found in no document is, by default (``unmatched_positives: add``),
  added to the candidate pool as an extra document ``pairs-positive-<n>``, so it can also serve
  as a negative for other queries (as in sentence-transformers' ``mine_hard_negatives``);
  ``unmatched_positives: error`` makes it an error naming the line instead. All positives of one
  query text are known positives of that query;
* ``self``: pairs derived from the corpus alone by self-supervised generators (inverse cloze
  task, independent random crops, title -> body, keyword queries of a passage's salient terms)
  and, optionally, a query-generation model the user supplies (doc2query/T5-style seq2seq or a
  causal LM, via transformers ``generate``). Generated pairs are deduplicated and their query
  lengths reported; the source document is a known positive of the query, so it is never mined
  as its negative.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, Sequence

import numpy as np
from pydantic import Field, model_validator

from .config import StrictModel
from .corpus import Document, beir_splits, load_pairs, load_qrels, load_queries, read_jsonl
from .errors import ConfigError, InputError, first_line

log = logging.getLogger("embedtune")

Generator = Literal["ict", "crop", "title", "keywords", "qgen"]


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class MiningPair:
    """One (query, positive) row before negatives are mined."""

    query_id: str
    query: str
    positive_id: str  # pool document id; for generated positives, the source document's id
    positive: str  # the text trained on (no prompt)
    positive_in_pool: bool  # True when ``positive`` is exactly the text of pool document positive_id
    given_negatives: tuple[str, ...] = ()  # from a pairs JSONL; kept in front of mined negatives
    source: str = "qrels"  # qrels | pairs | ict | crop | title | keywords | qgen


@dataclass
class PairSet:
    pairs: list[MiningPair]
    known_positives: dict[str, set[str]]  # query id -> pool doc ids never used as its negatives
    extra_docs: dict[str, Document] = field(default_factory=dict)  # added to the candidate pool
    qrels: dict[str, dict[str, int]] | None = None  # BEIR sources: every judgement of the splits given
    stats: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- configs


class QueryGenConfig(StrictModel):
    """A local query-generation model (doc2query/T5-style seq2seq, or a causal LM)."""

    model: str = Field(..., description="Local transformers folder (safetensors) of a seq2seq or causal LM.")
    kind: Literal["auto", "seq2seq", "causal"] = Field("auto", description="'auto' reads config.is_encoder_decoder.")
    prompt: str | None = Field(
        None,
        description="Template with '{passage}'. Default: '{passage}' for seq2seq (doc2query), "
        "'Passage: {passage}\\nA search query this passage answers:' for causal LMs.",
    )
    max_input_tokens: int = Field(384, gt=8)
    max_new_tokens: int = Field(32, gt=0)
    do_sample: bool = Field(True, description="Sample (top-p) so several queries per passage differ.")
    top_p: float = Field(0.95, gt=0, le=1)
    temperature: float = Field(1.0, gt=0)
    batch_size: int = Field(16, gt=0)
    device: str = "auto"
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _prompt_has_slot(self) -> "QueryGenConfig":
        if self.prompt is not None and "{passage}" not in self.prompt:
            raise ValueError("prompt must contain '{passage}'")
        return self


class SelfPairsConfig(StrictModel):
    """Pairs from an unlabeled corpus (``--pairs self``)."""

    generators: list[Generator] = Field(
        default_factory=lambda: ["ict", "crop", "title"],
        description="ict: a sentence -> rest of its passage; crop: two random spans of one document; "
        "title: title -> body (documents with a title; its mined negatives keep their titles, a cue the model can learn "
        "instead of the domain, so mix it with the others); keywords: a few of the document's most salient terms "
        "(tf-idf over the corpus) -> the document, the short keyword queries real users type; "
        "qgen: a query-generation model (needs qgen.model).",
    )
    pairs_per_doc: int = Field(1, gt=0, description="Pairs each generator makes per document.")
    max_documents: int | None = Field(None, gt=0, description="Use a seeded random sample of this many documents.")
    min_query_words: int = Field(2, ge=1, description="Generated queries with fewer words are dropped.")
    ict_keep_sentence_prob: float = Field(
        0.1, ge=0, le=1, description="Probability of leaving the query sentence in the positive (Lee et al. 2019 use 0.1)."
    )
    ict_context_words: int = Field(256, gt=8, description="ICT positive: sentences around the query, up to this many words.")
    crop_min_ratio: float = Field(0.1, gt=0, le=1, description="Crop length as a fraction of the document (Contriever: 0.1-0.5).")
    crop_max_ratio: float = Field(0.5, gt=0, le=1)
    crop_min_words: int = Field(4, ge=1)
    crop_max_words: int = Field(256, ge=1)
    keyword_min_terms: int = Field(2, ge=1, description="Fewest terms in a keyword query.")
    keyword_max_terms: int = Field(5, ge=1, description="Most terms in a keyword query.")
    keyword_candidates: int = Field(
        10, ge=1, description="A keyword query's terms are drawn from the document's this-many most salient terms."
    )
    qgen: QueryGenConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "SelfPairsConfig":
        if not self.generators:
            raise ValueError("choose at least one generator")
        if self.crop_min_ratio > self.crop_max_ratio:
            raise ValueError("crop_min_ratio must be <= crop_max_ratio")
        if self.crop_min_words > self.crop_max_words:
            raise ValueError("crop_min_words must be <= crop_max_words")
        if self.keyword_min_terms > self.keyword_max_terms:
            raise ValueError("keyword_min_terms must be <= keyword_max_terms")
        if "qgen" in self.generators and self.qgen is None:
            raise ValueError("generator 'qgen' needs qgen.model (a local query-generation model folder)")
        return self


# --------------------------------------------------------------------------- BEIR qrels


def parse_splits(split: str) -> list[str]:
    splits = [s.strip() for s in split.replace("+", ",").split(",") if s.strip()]
    if not splits:
        raise ConfigError("no split given (use e.g. 'scifact:train' or 'scifact:train,dev')", field="pairs")
    return list(dict.fromkeys(splits))


def pairs_from_beir(folder: Path, splits: Sequence[str], corpus: dict[str, Document], *, skip_unknown_ids: bool = False) -> PairSet:
    """One pair per relevant (score > 0) judgement of the given splits."""
    folder = Path(folder)
    available = beir_splits(folder)
    for split in splits:
        if split not in available:
            raise InputError(f"split '{split}' not found (available: {', '.join(available) or 'none'})", file=folder / "qrels" / f"{split}.tsv")
    queries = load_queries(folder / "queries.jsonl")
    qrels: dict[str, dict[str, int]] = {}
    skipped = 0
    for split in splits:
        split_qrels, n_skipped = load_qrels(
            folder / "qrels" / f"{split}.tsv", query_ids=set(queries), doc_ids=set(corpus), skip_unknown_ids=skip_unknown_ids
        )
        skipped += n_skipped
        for qid, judged in split_qrels.items():
            merged = qrels.setdefault(qid, {})
            for did, score in judged.items():
                merged[did] = max(score, merged.get(did, score))
    pairs: list[MiningPair] = []
    known: dict[str, set[str]] = {}
    empty_positives = 0
    for qid, judged in qrels.items():
        relevant = [did for did, score in judged.items() if score > 0]
        if relevant:
            known[qid] = set(relevant)
        for did in relevant:
            if not corpus[did].full_text:  # an empty document teaches nothing: still known, never a pair
                empty_positives += 1
                continue
            pairs.append(MiningPair(qid, queries[qid], did, corpus[did].full_text, True, source="qrels"))
    if not pairs:
        raise InputError(f"no relevant (score > 0) judgements in split(s) {', '.join(splits)}", file=folder / "qrels")
    stats = {"queries": len(known), "pairs": len(pairs), "skipped_qrels": skipped, "splits": list(splits),
             "empty_positives_skipped": empty_positives}
    return PairSet(pairs=pairs, known_positives=known, qrels=qrels, stats=stats)


# --------------------------------------------------------------------------- pairs JSONL


def pairs_from_jsonl(path: Path, corpus: dict[str, Document], *, unmatched_positives: Literal["add", "error"] = "add") -> PairSet:
    """Read labeled pairs and tie each positive to a pool document (see the module docstring)."""
    path = Path(path)
    raw = load_pairs(path)  # validates fields, names file/line on errors
    line_numbers = [lineno for lineno, _ in read_jsonl(path)]
    by_text: dict[str, str] = {}
    for doc in corpus.values():  # full_text first, so it wins over a bare text that equals another doc's full text
        by_text.setdefault(doc.full_text, doc.id)
    for doc in corpus.values():
        by_text.setdefault(doc.text.strip(), doc.id)
    extra: dict[str, Document] = {}
    extra_by_text: dict[str, str] = {}
    query_ids: dict[str, str] = {}
    pairs: list[MiningPair] = []
    known: dict[str, set[str]] = {}
    seen: set[tuple[str, str]] = set()
    matched = 0
    for lineno, pair in zip(line_numbers, raw):
        qid = query_ids.setdefault(pair.query, f"pq{len(query_ids)}")
        positive = pair.positive.strip()
        doc_id = by_text.get(positive)
        if doc_id is not None:
            matched += 1
            text = corpus[doc_id].full_text if corpus[doc_id].full_text == positive else positive
            in_pool = text == corpus[doc_id].full_text
        else:
            if unmatched_positives == "error":
                raise InputError(
                    "positive matches no corpus document exactly (set unmatched_positives: add to add it to the candidate pool)",
                    file=path, line=lineno, field="positive",
                )
            doc_id = extra_by_text.get(positive)
            if doc_id is None:
                doc_id = f"pairs-positive-{len(extra)}"
                extra[doc_id] = Document(id=doc_id, text=positive)
                extra_by_text[positive] = doc_id
            text, in_pool = positive, True
        known.setdefault(qid, set()).add(doc_id)
        if (qid, doc_id) in seen:
            continue
        seen.add((qid, doc_id))
        pairs.append(MiningPair(qid, pair.query, doc_id, text, in_pool, tuple(pair.negatives), source="pairs"))
    stats = {
        "queries": len(query_ids),
        "pairs": len(pairs),
        "positives_matched_to_corpus": matched,
        "positives_added_to_pool": len(extra),
        "duplicate_pairs_dropped": len(raw) - len(pairs),
        "pairs_with_given_negatives": sum(1 for p in pairs if p.given_negatives),
    }
    return PairSet(pairs=pairs, known_positives=known, extra_docs=extra, stats=stats)


# --------------------------------------------------------------------------- self-supervised

# A regex splitter rather than nltk/pysbd (not dependencies): ICT tolerates the odd wrong split,
# and this keeps abbreviations like "e.g. the" together because the next word must be capitalised.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])|\n+")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def ict_pair(doc: Document, rng: np.random.Generator, cfg: SelfPairsConfig) -> tuple[str, str] | None:
    """Inverse cloze task: a sentence is the query, the sentences around it the positive; with
    probability ``ict_keep_sentence_prob`` the sentence stays in (so the model also learns
    lexical matching, Lee et al. 2019)."""
    sentences = split_sentences(doc.text)
    if len(sentences) < 2:
        return None
    i = int(rng.integers(len(sentences)))
    keep = rng.random() < cfg.ict_keep_sentence_prob
    # Grow a window of neighbouring sentences around i until the word budget is spent.
    lo, hi, words = i, i + 1, len(sentences[i].split()) if keep else 0
    while True:
        grown = False
        for j in (lo - 1, hi):
            if 0 <= j < len(sentences) and not (lo <= j < hi):
                n = len(sentences[j].split())
                if words + n > cfg.ict_context_words and words > 0:
                    continue
                words += n
                lo, hi = min(lo, j), max(hi, j + 1)
                grown = True
        if not grown:
            break
    context = [s for k, s in enumerate(sentences[lo:hi], start=lo) if keep or k != i]
    if not context:
        return None
    positive = " ".join(context)
    return sentences[i], f"{doc.title} {positive}".strip()


def crop_pair(doc: Document, rng: np.random.Generator, cfg: SelfPairsConfig) -> tuple[str, str] | None:
    """Two independent random spans of one document (Contriever's independent cropping)."""
    words = doc.full_text.split()
    if len(words) < 2 * cfg.crop_min_words:
        return None
    spans = []
    for _ in range(2):
        ratio = rng.uniform(cfg.crop_min_ratio, cfg.crop_max_ratio)
        length = int(np.clip(round(ratio * len(words)), cfg.crop_min_words, min(cfg.crop_max_words, len(words))))
        start = int(rng.integers(0, len(words) - length + 1))
        spans.append(" ".join(words[start : start + length]))
    return spans[0], spans[1]


def title_pair(doc: Document, rng: np.random.Generator, cfg: SelfPairsConfig) -> tuple[str, str] | None:
    title, body = doc.title.strip(), doc.text.strip()
    if not title or not body or _normalise(title) == _normalise(body):
        return None
    return title, body


# Words of two or more characters, hyphens inside kept ("p53", "IL-6", "full-term"); punctuation splits.
_TERM = re.compile(r"\w[\w\-]*\w")


def _terms(text: str, stopwords: frozenset[str]) -> list[str]:
    """Lower-cased terms of ``text`` without stopwords and all-digit tokens (years, counts)."""
    return [t for t in (m.lower() for m in _TERM.findall(text)) if t not in stopwords and not t.isdigit()]


class KeywordQueries:
    """Keyword queries: a handful of a document's most salient terms, in the order they appear.

    Real users type a few terms, not a sentence ("irritable bowel peppermint oil"); no generator
    above writes such queries. Salience is tf x idf over the documents given (idf = log(N / df)),
    so a keyword query depends on the corpus, unlike the other rule generators. Raw tf, and terms
    of one document only left out: with sublinear tf the picks were hapaxes and typos
    ("179-kilobase", "isphagula") rather than the topic ("myelin basic protein gene").
    Written here because neither bm25s nor sentence-transformers draws keyword queries from a corpus.
    """

    def __init__(self, docs: Sequence[Document]):
        from bm25s.stopwords import STOPWORDS_EN_PLUS  # NLTK's English list, 179 words

        self._stopwords = frozenset(STOPWORDS_EN_PLUS)
        df: Counter = Counter()
        for doc in docs:
            df.update(set(_terms(doc.full_text, self._stopwords)))
        self._idf = {t: float(np.log(len(docs) / n)) for t, n in df.items() if n >= 2}

    def __call__(self, doc: Document, rng: np.random.Generator, cfg: SelfPairsConfig) -> tuple[str, str] | None:
        terms = _terms(doc.full_text, self._stopwords)
        tf = Counter(terms)
        first = {}
        for i, t in enumerate(terms):
            first.setdefault(t, i)
        # ties broken by position, so the ranking does not depend on hash order
        salience = {t: tf[t] * self._idf.get(t, 0.0) for t in tf}
        ranked = sorted(tf, key=lambda t: (-salience[t], first[t]))
        candidates = [t for t in ranked[: cfg.keyword_candidates] if salience[t] > 0]
        if len(candidates) < cfg.keyword_min_terms:
            return None
        k = int(rng.integers(cfg.keyword_min_terms, min(cfg.keyword_max_terms, len(candidates)) + 1))
        # drawn in proportion to salience: the topic's terms more often than the tail of the ten
        weights = np.array([salience[t] for t in candidates])
        chosen = rng.choice(len(candidates), size=k, replace=False, p=weights / weights.sum())
        query = " ".join(sorted((candidates[i] for i in chosen), key=first.__getitem__))
        return query, doc.full_text


_RULE_GENERATORS = {"ict": ict_pair, "crop": crop_pair, "title": title_pair}


class QueryGenerator(Protocol):
    """Anything that writes search queries for passages (plug in your own)."""

    name: str

    def generate(self, passages: list[str], num_queries: int, seed: int) -> list[list[str]]:
        """``num_queries`` queries for each passage, deterministic for a seed."""
        ...


def _doc_rng(seed: int, generator: str, doc_id: str) -> np.random.Generator:
    """Per-document generator: a document's pairs don't change when other documents are added."""
    from .io import sha256_text

    return np.random.default_rng([seed, int(sha256_text(generator, doc_id)[:15], 16)])


def _length_summary(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {"count": 0}
    a = np.asarray(lengths)
    return {"count": int(a.size), "mean": round(float(a.mean()), 2), "p50": float(np.percentile(a, 50)),
            "p90": float(np.percentile(a, 90)), "min": int(a.min()), "max": int(a.max())}


def pairs_from_corpus(
    corpus: dict[str, Document],
    cfg: SelfPairsConfig,
    *,
    seed: int = 42,
    query_generator: QueryGenerator | None = None,
) -> PairSet:
    """Self-supervised pairs: each selected generator makes ``pairs_per_doc`` pairs per document.

    Pairs are deduplicated on (query, positive) after lower-casing and collapsing whitespace;
    queries shorter than ``min_query_words`` or equal to their positive are dropped. One query
    text made from several documents becomes one query whose known positives are all of them.
    """
    docs = list(corpus.values())
    if cfg.max_documents is not None and cfg.max_documents < len(docs):
        pick = np.random.default_rng(seed).choice(len(docs), size=cfg.max_documents, replace=False)
        docs = [docs[i] for i in sorted(pick)]
    if "qgen" in cfg.generators and query_generator is None:
        raise ConfigError("generator 'qgen' needs a query-generation model (qgen.model)", field="self_pairs.qgen")

    raw: list[tuple[str, str, str, str]] = []  # (generator, doc id, query, positive)
    for gen in cfg.generators:
        if gen == "qgen":
            passages = [d.full_text for d in docs]
            generated = query_generator.generate(passages, cfg.pairs_per_doc, seed)
            raw.extend(("qgen", d.id, q, d.full_text) for d, qs in zip(docs, generated) for q in qs)
            continue
        make = KeywordQueries(docs) if gen == "keywords" else _RULE_GENERATORS[gen]
        for doc in docs:
            rng = _doc_rng(seed, gen, doc.id)
            for _ in range(cfg.pairs_per_doc):
                pair = make(doc, rng, cfg)
                if pair is not None:
                    raw.append((gen, doc.id, pair[0], pair[1]))

    produced = Counter(g for g, *_ in raw)
    dropped = Counter()
    seen: set[tuple[str, str]] = set()
    query_ids: dict[str, str] = {}
    query_texts: dict[str, str] = {}  # normalised query -> the text of its first pair
    per_doc: Counter = Counter()
    known: dict[str, set[str]] = {}
    pairs: list[MiningPair] = []
    for gen, doc_id, query, positive in raw:
        query, positive = " ".join(query.split()), positive.strip()
        nq = _normalise(query)
        if len(query.split()) < cfg.min_query_words:
            dropped["too_short"] += 1
            continue
        if nq == _normalise(positive):
            dropped["query_equals_positive"] += 1
            continue
        key = (nq, _normalise(positive))
        if key in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(key)
        if nq not in query_ids:
            query_ids[nq] = f"{gen}:{doc_id}:{per_doc[gen, doc_id]}"
            query_texts[nq] = query
            per_doc[gen, doc_id] += 1
        qid = query_ids[nq]
        known.setdefault(qid, set()).add(doc_id)
        in_pool = positive == corpus[doc_id].full_text
        # one text per query id: "See also" and "See Also" are one query, and mining looks queries up by text
        pairs.append(MiningPair(qid, query_texts[nq], doc_id, positive, in_pool, source=gen))
    if not pairs:
        raise InputError(
            f"the generators {cfg.generators} made no usable pairs from {len(docs)} document(s) "
            "(documents too short, or without titles/sentences?)",
        )
    kept = Counter(p.source for p in pairs)
    lengths = {gen: _length_summary([len(p.query.split()) for p in pairs if p.source == gen]) for gen in cfg.generators}
    stats = {
        "documents": len(docs),
        "queries": len(query_ids),
        "pairs": len(pairs),
        "generated": dict(produced),
        "kept": dict(kept),
        "dropped": dict(dropped),
        "query_words": lengths,
        "query_words_all": _length_summary([len(p.query.split()) for p in pairs]),
    }
    return PairSet(pairs=pairs, known_positives=known, stats=stats)


# --------------------------------------------------------------------------- query generation model


class TransformersQueryGenerator:
    """doc2query with a local transformers model: seq2seq (T5-style) or causal LM, via ``generate``.

    Only safetensors weights are loaded (``models.check_model_folder``). Sampling is seeded per
    batch, so the same seed gives the same queries on the same machine.
    """

    def __init__(self, cfg: QueryGenConfig):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        from .errors import ModelError
        from .models import check_model_folder, resolve_device

        path = Path(cfg.model).expanduser()
        if not path.is_dir():
            raise ModelError("query-generation model folder not found", file=path)
        check_model_folder(path)
        self.cfg = cfg
        self.name = str(path)
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=cfg.trust_remote_code)
            self.kind = cfg.kind if cfg.kind != "auto" else ("seq2seq" if config.is_encoder_decoder else "causal")
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=cfg.trust_remote_code)
            cls = AutoModelForSeq2SeqLM if self.kind == "seq2seq" else AutoModelForCausalLM
            self.model = cls.from_pretrained(path, local_files_only=True, use_safetensors=True, trust_remote_code=cfg.trust_remote_code)
        except Exception as err:
            msg = first_line(err)
            raise ModelError(f"cannot load query-generation model: {msg}", file=path) from None
        self.device = resolve_device(cfg.device)
        self.model.to(self.device).eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.kind == "causal":
            self.tokenizer.padding_side = "left"  # generation continues from the right end
        self.prompt = cfg.prompt or ("{passage}" if self.kind == "seq2seq" else "Passage: {passage}\nA search query this passage answers:")
        self._torch = torch

    def generate(self, passages: list[str], num_queries: int, seed: int) -> list[list[str]]:
        torch = self._torch
        out: list[list[str]] = []
        from . import progress

        starts = range(0, len(passages), self.cfg.batch_size)
        for b, start in enumerate(progress.track(starts, "Generating queries (batches)", enabled=len(starts) > 1)):
            batch = [self.prompt.format(passage=p) for p in passages[start : start + self.cfg.batch_size]]
            enc = self.tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=self.cfg.max_input_tokens)
            enc.pop("token_type_ids", None)
            enc = {k: v.to(self.device) for k, v in enc.items()}
            torch.manual_seed(seed + b)
            with torch.inference_mode():
                ids = self.model.generate(
                    **enc,
                    max_new_tokens=self.cfg.max_new_tokens,
                    do_sample=self.cfg.do_sample,
                    top_p=self.cfg.top_p if self.cfg.do_sample else None,
                    temperature=self.cfg.temperature if self.cfg.do_sample else None,
                    num_return_sequences=num_queries,
                    num_beams=1,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            if self.kind == "causal":
                ids = ids[:, enc["input_ids"].shape[1] :]  # keep only the continuation
            texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
            texts = [t.strip().split("\n")[0].strip() for t in texts]
            out.extend(texts[i : i + num_queries] for i in range(0, len(texts), num_queries))
        return out
