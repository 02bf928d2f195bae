"""MultipleNegativesRankingLoss (plain and cached) that never uses a known positive of a query as its negative.

Why this exists: sentence-transformers' losses see texts only, so every other row's positive in a
batch is a negative for this row's query -- even when the qrels say it is relevant to it. With
dense judgements that is common: in NFCorpus train (42 judged documents per query) 31% of the rows
of a random 32-row batch meet at least one in-batch "negative" that their own qrels call relevant,
and the loss pushes it away. GISTEmbedLoss guesses such false negatives with a guide model; here
they are known. The trainer passes each row's index as the ``label`` column (sentence-transformers
hands labels to the loss and leaves them out of the no-duplicates check), the loss looks up the
query and the document ids of every candidate in the batch and gives the known positives a logit of
-inf, as mining keeps them out of the hard negatives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss
from sentence_transformers.util import cos_sim


@dataclass
class KnownPositives:
    """Training rows as numbers, for :class:`KnownPositivesMNRL`."""

    row_query: np.ndarray  # (rows,) query number of each row
    row_docs: np.ndarray  # (rows, 1 + negatives) document numbers: positive, negative_1..n
    pairs: np.ndarray  # query * num_docs + document, for every relevant pair
    num_docs: int

    @classmethod
    def from_ids(cls, query_ids: list[str], doc_ids: list[list[str]], relevant: dict[str, set[str]]) -> "KnownPositives":
        queries = {q: i for i, q in enumerate(dict.fromkeys([*query_ids, *relevant]))}
        docs: dict[str, int] = {}
        for ids in [*doc_ids, *relevant.values()]:
            for d in ids:
                docs.setdefault(d, len(docs))
        row_docs = np.array([[docs[d] for d in ids] for ids in doc_ids], dtype=np.int64)
        pairs = np.array([queries[q] * len(docs) + docs[d] for q, ds in relevant.items() for d in ds], dtype=np.int64)
        row_query = np.array([queries[q] for q in query_ids], dtype=np.int64)
        return cls(row_query=row_query, row_docs=row_docs, pairs=pairs, num_docs=len(docs))


class _KnownPositivesMask:
    """The batch's known-positive mask, for both MNRL variants: built from the row indices the trainer
    passes as labels, handed out to the similarity function row block by row block (MNRL scores all
    rows at once; GradCache scores ``mini_batch_size`` rows at a time, in order)."""

    def _init_mask(self, known: KnownPositives) -> None:
        self.row_query = known.row_query
        self.row_docs = known.row_docs
        self.known_pairs = np.unique(known.pairs)
        self.num_docs = known.num_docs
        self.masked_candidates = 0  # how many in-batch candidates were masked so far (for the log)
        self._mask: torch.Tensor | None = None
        self._mask_row = 0

    def forward(self, sentence_features, labels: torch.Tensor) -> torch.Tensor:
        # both parents compute the loss (and read the mask) inside forward; GradCache's backward
        # only replays the embedding
        self._set_mask(labels)
        try:
            return super().forward(sentence_features, labels)
        finally:
            self._mask = None

    def _set_mask(self, labels: torch.Tensor) -> None:
        rows = labels.detach().long().view(-1)
        world_rows, offset = rows, 0
        if self.gather_across_devices and torch.distributed.is_available() and torch.distributed.is_initialized():
            parts = [torch.empty_like(rows) for _ in range(torch.distributed.get_world_size())]
            torch.distributed.all_gather(parts, rows)
            world_rows = torch.cat(parts)
            offset = torch.distributed.get_rank() * len(rows)
        local = rows.cpu().numpy()
        # Candidate order of the parent's similarity matrix: the positives of all (world) rows,
        # then the first negatives of all rows, and so on.
        candidates = self.row_docs[world_rows.cpu().numpy()].T.reshape(-1)
        keys = self.row_query[local][:, None] * self.num_docs + candidates[None, :]
        mask = np.isin(keys, self.known_pairs)
        mask[np.arange(len(local)), offset + np.arange(len(local))] = False  # the row's own positive
        self.masked_candidates += int(mask.sum())
        self._mask, self._mask_row = torch.from_numpy(mask), 0

    def _masked_cos_sim(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        scores = cos_sim(a, b)
        if self._mask is None:
            return scores
        mask = self._mask[self._mask_row : self._mask_row + len(a)]
        self._mask_row += len(a)
        if scores.shape != mask.shape:  # only the query->document direction is supported
            raise RuntimeError(f"similarity of shape {tuple(scores.shape)} does not match the mask {tuple(mask.shape)}")
        return scores.masked_fill(mask.to(scores.device), float("-inf"))


class KnownPositivesMNRL(_KnownPositivesMask, MultipleNegativesRankingLoss):
    """MNRL (query -> positive, own hard negatives, in-batch documents) with known positives masked.

    ``known`` holds the training rows as numbers (see :class:`KnownPositives`).
    The row's own positive is never masked.
    """

    def __init__(self, model: Any, known: KnownPositives, *, scale: float = 20.0, gather_across_devices: bool = False) -> None:
        super().__init__(model, scale=scale, similarity_fct=self._masked_cos_sim, gather_across_devices=gather_across_devices)
        self._init_mask(known)


class KnownPositivesCachedMNRL(_KnownPositivesMask, CachedMultipleNegativesRankingLoss):
    """The same loss with GradCache (``cached_mnrl``): the batch's activations are held
    ``mini_batch_size`` rows at a time, so memory no longer grows with the batch; same loss value."""

    def __init__(self, model: Any, known: KnownPositives, *, scale: float = 20.0, mini_batch_size: int = 16,
                 gather_across_devices: bool = False) -> None:
        super().__init__(model, scale=scale, similarity_fct=self._masked_cos_sim, mini_batch_size=mini_batch_size,
                         gather_across_devices=gather_across_devices)
        self._init_mask(known)
