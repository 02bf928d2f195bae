"""Hard-negative mining: for each (query, positive) pair, the documents a retriever ranks high
that are not positives -- with the positive-aware filtering of NV-Retriever (Moreira et al. 2024,
"TopK-PercPos" / "TopK-MarginPos") so that likely false negatives are left out.

The ``mine`` stage (``mine_hard_negatives``, :mod:`.stage`), one module per step:

1. pairs from a BEIR qrels split, a pairs JSONL or the corpus itself (:mod:`embedtune.pairs`, read by :mod:`.inputs`);
   settings are validated before anything is encoded;
2. corpus embeddings from the shared on-disk cache (``encoding.encode_corpus``: mining again with
   other settings, or after ``eval``, does not re-encode), queries encoded in length-sorted batches;
3. candidates (:mod:`.candidates`) per query chunk from the dense retriever (``search.exact_search``), BM25
   (``lexical.bm25_search``) or both fused with reciprocal-rank fusion (k=60); nothing allocates a
   query x corpus matrix;
4. filters (:mod:`.filters`), vectorised over a chunk, in the loop of :mod:`.negatives`: known positives of the query (all
   its judgements in the source) and exact-duplicate texts of a positive are never negatives; the
   rank window keeps candidates ``range_min < rank <= range_max`` among the non-positive ones;
   then ``score > pos - |pos| * relative_margin``, ``score > pos - absolute_margin`` and
   ``score > max_score`` drop candidates, ``pos`` being the query's lowest-scoring positive (or its
   highest-scoring one with ``margin_against: strongest``, for queries with dozens of judged
   positives); an optional teacher (:mod:`.teachers`) -- a cross-encoder, or ``hybrid_teacher`` (BM25 fused with the
   model's cosine, for corpora without a cross-encoder) -- drops candidates it scores above its own
   score of that positive minus its ``margin`` and stores teacher scores for MarginMSE;
5. sampling (:func:`.filters.sample_negatives`): the ``num_negatives`` best-ranked survivors (``top``) or a
   seeded random subset of them (``random``);
6. the mined folder in the contract of :mod:`embedtune.mined` (``DIR/dataset``, ``DIR/pairs.jsonl``,
   ``DIR/qrels.json``), ``DIR/report.md`` + PNGs (:mod:`.report`) and ``DIR/manifest.json``.

Scores used by the filters are always the base model's cosine similarities, whatever retriever
proposed the candidates: margins need one comparable scale for candidate and positive, and BM25 or
RRF scores have none. One row is written per (query, positive); all rows of a query share its
mined negatives. A row has ``num_negatives`` negatives unless fewer candidates passed the filters:
such rows are kept (``report.md`` counts them) and the trainer decides whether to drop or pad them.
Negatives given in a pairs JSONL are kept in front of the mined ones (``negative_ranks`` 0: not
retrieved) and count towards ``num_negatives``.
"""

from .config import CrossEncoderConfig, HybridTeacherConfig, MineConfig
from .stage import mine_hard_negatives

__all__ = ["CrossEncoderConfig", "HybridTeacherConfig", "MineConfig", "mine_hard_negatives"]
