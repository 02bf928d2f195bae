"""Losses checked by hand: KnownPositivesMNRL and its GradCache twin (the mask they build from row
indices and the loss they give) and listwise_kl (the teacher's and the student's softmax over a candidate list)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedtune.masked_mnrl import KnownPositives

# Rows (query, positive, hard negative). q0 also knows d1 (row 1's positive); q2 also knows d4,
# row 1's hard negative. Candidates in the loss: positives d0 d1 d2, then negatives d3 d4 d6.
QUERY_IDS = ["q0", "q1", "q2"]
DOC_IDS = [["d0", "d3"], ["d1", "d4"], ["d2", "d6"]]
RELEVANT = {"q0": {"d0", "d1"}, "q1": {"d1"}, "q2": {"d2", "d4"}}
EXPECTED_MASK = np.array([
    [0, 1, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 1, 0],
], dtype=bool)


class _Stub(torch.nn.Module):
    """Stands in for the SentenceTransformer: the loss only stores it (embeddings are patched in)."""


def _loss(monkeypatch, embeddings, rows):
    from sentence_transformers.sentence_transformer.losses import multiple_negatives_ranking

    from embedtune.masked_mnrl import KnownPositivesMNRL

    monkeypatch.setattr(multiple_negatives_ranking, "embed_columns", lambda model, features: embeddings)
    known = KnownPositives.from_ids([QUERY_IDS[r] for r in rows], [DOC_IDS[r] for r in rows], RELEVANT)
    return KnownPositivesMNRL(_Stub(), known, scale=20.0)


def _by_hand(embeddings, mask, scale=20.0):
    q = torch.nn.functional.normalize(embeddings[0], dim=-1)
    docs = torch.nn.functional.normalize(torch.cat(embeddings[1:]), dim=-1)
    logits = (q @ docs.T) * scale
    logits = logits.masked_fill(torch.as_tensor(mask), float("-inf"))
    return torch.nn.functional.cross_entropy(logits, torch.arange(len(q)))


def test_known_positives_are_masked_and_the_loss_matches_by_hand(monkeypatch):
    torch.manual_seed(0)
    embeddings = [torch.randn(3, 8) for _ in range(3)]  # anchors, positives, negatives
    loss = _loss(monkeypatch, embeddings, rows=[0, 1, 2])
    got = loss([{}, {}, {}], torch.tensor([0, 1, 2]))
    assert loss.masked_candidates == int(EXPECTED_MASK.sum()) == 2
    assert got.item() == pytest.approx(_by_hand(embeddings, EXPECTED_MASK).item(), rel=1e-5)
    unmasked = _by_hand(embeddings, np.zeros_like(EXPECTED_MASK))
    assert abs(got.item() - unmasked.item()) > 1e-3  # the mask changes the loss


def test_cached_mnrl_masks_the_same_candidates_chunk_by_chunk():
    """GradCache scores mini_batch_size rows at a time: each chunk must get its own rows of the mask."""
    from embedtune.masked_mnrl import KnownPositivesCachedMNRL

    torch.manual_seed(0)
    embeddings = [torch.randn(3, 8) for _ in range(3)]
    known = KnownPositives.from_ids(QUERY_IDS, DOC_IDS, RELEVANT)
    loss = KnownPositivesCachedMNRL(torch.nn.Sequential(torch.nn.Identity()), known, scale=20.0, mini_batch_size=2)
    loss._set_mask(torch.tensor([0, 1, 2]))
    chunks = [[e[:2], e[2:]] for e in embeddings]  # rows 0-1, then row 2
    got = loss.calculate_loss(chunks)
    assert loss.masked_candidates == 2
    assert got.item() == pytest.approx(_by_hand(embeddings, EXPECTED_MASK).item(), rel=1e-5)
    assert abs(got.item() - _by_hand(embeddings, np.zeros_like(EXPECTED_MASK)).item()) > 1e-3


def test_rows_are_looked_up_by_the_label_not_by_position(monkeypatch):
    """The trainer shuffles: a batch holds rows [2, 0] and the labels say so."""
    torch.manual_seed(1)
    embeddings = [torch.randn(2, 8) for _ in range(3)]
    loss = _loss(monkeypatch, embeddings, rows=[0, 1, 2])
    got = loss([{}, {}, {}], torch.tensor([2, 0]))
    # batch candidates: positives d2 d0, negatives d6 d3; q2 knows none of d0/d3/d6, q0 knows d0 only (its own)
    assert loss.masked_candidates == 0
    assert got.item() == pytest.approx(_by_hand(embeddings, np.zeros((2, 4), dtype=bool)).item(), rel=1e-5)
    got = loss([{}, {}, {}], torch.tensor([0, 1]))  # q0 knows d1, row 1's positive
    assert loss.masked_candidates == 1
    assert got.item() == pytest.approx(_by_hand(embeddings, np.array([[0, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)).item(), rel=1e-5)


def test_listwise_kl_matches_a_hand_computation(monkeypatch):
    """The teacher's and the student's softmax over (positive, negatives) at temperature 1/scale; KL, x T^2."""
    from sentence_transformers.sentence_transformer.losses import distill_kl_div

    from embedtune.losses import LossConfig, build_loss

    q = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    pos, neg1, neg2 = torch.tensor([[0.8, 0.6], [0.0, 1.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    monkeypatch.setattr(distill_kl_div, "embed_columns", lambda model, features: [q, pos, neg1, neg2])
    teacher = torch.tensor([[0.9, 0.2, 0.5], [0.7, 0.6, 0.1]])
    student = torch.tensor([[0.8, 0.0, 0.6], [0.8, 0.6, 0.96]])  # the dot products above, by hand
    t = 1 / 20.0
    p = torch.softmax(teacher / t, 1)
    by_hand = (p * (p.log() - torch.log_softmax(student / t, 1))).sum(1).mean() * t * t

    loss = build_loss(_Stub(), LossConfig(name="listwise_kl", scale=20.0))
    assert type(loss).__name__ == "DistillKLDivLoss"
    assert loss([{}, {}, {}, {}], teacher).item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert by_hand.item() > 1e-3  # the student orders row 1 differently from the teacher: something to learn
    # a teacher that scores exactly as the student does leaves nothing to learn
    assert loss([{}, {}, {}, {}], student).item() == pytest.approx(0.0, abs=1e-7)
