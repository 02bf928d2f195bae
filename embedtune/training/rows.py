"""Mined rows -> trainer rows: the columns a loss reads (``anchor``, ``positive``, ``negative_1..n``,
teacher scores), short rows padded or dropped, and the query -> positives view query-side tuning uses."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from ..corpus import load_corpus, parse_benchmark_source
from ..errors import ConfigError, InputError
from ..mined import MinedData
from ..losses import TEACHER_LOSSES
from .config import TrainConfig


def mined_corpus(data: MinedData) -> tuple[dict[str, str], str]:
    """The corpus mining searched (``config.corpus`` of its manifest), plus any mined text it lacks."""
    corpus: dict[str, str] = {}
    desc = "the mined documents only (no corpus in the mining manifest)"
    mine_cfg = (data.manifest or {}).get("config", {})
    if mine_cfg.get("corpus"):
        path = Path(mine_cfg["corpus"])
        if not path.exists():
            path = parse_benchmark_source(mine_cfg["corpus"])[0]
        docs = load_corpus(
            path, id_field=mine_cfg.get("id_field", "_id"), title_field=mine_cfg.get("title_field", "title"),
            text_field=mine_cfg.get("text_field", "text"),
        )
        corpus = {doc_id: doc.full_text for doc_id, doc in docs.items()}
        desc = f"the full corpus {path} ({len(corpus):,} docs)"
    # Mined documents the corpus lacks (positives given as text in a pairs file) keep their mined text.
    c = data.columns
    wanted = set(c["positive_id"]).union(*map(set, c["negative_ids"])) - set(corpus)
    if wanted:
        rows = [i for i, (pid, negs) in enumerate(zip(c["positive_id"], c["negative_ids"])) if pid in wanted or wanted & set(negs)]
        texts = data.texts(rows)
        for k, i in enumerate(rows):
            corpus.setdefault(c["positive_id"][i], texts["positive"][k])
            for doc_id, text in zip(c["negative_ids"][i], texts["negatives"][k]):
                corpus.setdefault(doc_id, text)
    return corpus, desc



def query_positives(data: MinedData, exclude: set[str], corpus: dict[str, str]) -> tuple[dict[str, str], dict[str, set[str]]]:
    """Training queries and the ids of every document judged relevant to each (rows mining kept +
    graded qrels), the ``exclude`` (dev) queries left out: what the query side trains on."""
    c = data.columns
    queries: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}
    for qid, query, pid in zip(c["query_id"], c["query"], c["positive_id"]):
        if qid not in exclude:
            queries.setdefault(qid, query)
            relevant.setdefault(qid, set()).add(pid)
    for qid, docs in (data.qrels or {}).items():
        if qid in relevant:
            relevant[qid] |= {d for d, s in docs.items() if s > 0}
    missing = sorted({d for r in relevant.values() for d in r} - set(corpus))
    if missing:
        raise InputError(f"{len(missing)} positive document id(s) are not in the mined corpus (e.g. '{missing[0]}')",
                         file=data.source, field="positive_id")
    return queries, relevant



@dataclass
class TrainRows:
    columns: dict[str, list]  # anchor, positive, negative_1..n, [label]
    stats: dict[str, int]
    query_ids: list[str] = field(default_factory=list)  # per row
    doc_ids: list[list[str]] = field(default_factory=list)  # per row: positive, negative_1..n
    known_positives: dict[str, set[str]] = field(default_factory=dict)  # query id -> relevant document ids



def build_train_rows(data: MinedData, cfg: TrainConfig, exclude_query_ids: set[str] = frozenset()) -> TrainRows:
    """Mined rows -> trainer columns ``anchor, positive, negative_1..n`` (+ ``label``, the teacher's scores, for margin_mse and listwise_kl).

    Rows of ``exclude_query_ids`` (dev queries) are left out; ``max_pairs_per_query`` keeps the
    highest-graded positives of each query; rows with fewer than ``negatives_per_query`` negatives
    are padded with random documents from other rows or dropped (``short_rows``).
    """
    c = data.columns
    rng = random.Random(cfg.seed)
    n_neg = cfg.negatives_per_query
    use_teacher = cfg.loss.name in TEACHER_LOSSES
    if use_teacher and not data.has_teacher_scores:
        raise ConfigError(
            f"loss {cfg.loss.name} needs teacher scores (teacher_positive_score, teacher_negative_scores) in the mined data; "
            "mine with a teacher (mine.cross_encoder or mine.hybrid_teacher) or choose another loss", field="loss.name",
        )
    stats = {"mined_rows": data.num_rows, "dev_rows_excluded": 0, "capped_rows": 0, "padded_rows": 0, "dropped_short_rows": 0}

    by_query: dict[str, list[int]] = {}
    for i, qid in enumerate(c["query_id"]):
        if qid in exclude_query_ids:
            stats["dev_rows_excluded"] += 1
            continue
        by_query.setdefault(qid, []).append(i)
    if cfg.max_pairs_per_query:
        grades = data.qrels or {}
        for qid, rows in by_query.items():
            if len(rows) > cfg.max_pairs_per_query:
                rng.shuffle(rows)  # ties among equal grades are broken at random (seeded)
                rows.sort(key=lambda i: -grades.get(qid, {}).get(c["positive_id"][i], 1))
                stats["capped_rows"] += len(rows) - cfg.max_pairs_per_query
                del rows[cfg.max_pairs_per_query:]
    selected = sorted(i for rows in by_query.values() for i in rows)

    texts = data.texts(selected)  # document texts of the selected rows only
    known_positives: dict[str, set[str]] = {}
    for i in selected:
        known_positives.setdefault(c["query_id"][i], set()).add(c["positive_id"][i])
    for qid, docs in (data.qrels or {}).items():
        known_positives.setdefault(qid, set()).update(d for d, s in docs.items() if s > 0)
    pool_text: dict[str, str] = {}  # padding candidates: the positives of the training rows
    for k, i in enumerate(selected):
        pool_text.setdefault(c["positive_id"][i], texts["positive"][k])
    pool_ids = list(pool_text)

    out: dict[str, list] = {"anchor": [], "positive": []}
    row_query_ids: list[str] = []
    row_doc_ids: list[list[str]] = []
    for n in range(1, n_neg + 1):
        out[f"negative_{n}"] = []
    if use_teacher:
        out["label"] = []
    for k, i in enumerate(selected):
        qid = c["query_id"][i]
        negs = list(zip(c["negative_ids"][i], texts["negatives"][k]))[:n_neg]
        if len(negs) < n_neg:
            padding = None if use_teacher or cfg.short_rows == "drop" else _padding(
                pool_ids, {d for d, _ in negs} | known_positives.get(qid, set()), n_neg - len(negs), rng
            )
            if padding is None:
                stats["dropped_short_rows"] += 1
                continue
            negs += [(d, pool_text[d]) for d in padding]
            stats["padded_rows"] += 1
        out["anchor"].append(c["query"][i])
        out["positive"].append(texts["positive"][k])
        row_query_ids.append(qid)
        row_doc_ids.append([c["positive_id"][i]] + [d for d, _ in negs])
        for n, (_, text) in enumerate(negs, start=1):
            out[f"negative_{n}"].append(text)
        if use_teacher:
            scores = texts["teacher_negative_scores"][k][:n_neg]
            out["label"].append([float(texts["teacher_positive_score"][k])] + [float(v) for v in scores])
    stats["train_rows"] = len(out["anchor"])
    if not out["anchor"]:
        raise InputError("no training rows left after holding out dev queries and dropping short rows", file=data.source)
    return TrainRows(columns=out, stats=stats, query_ids=row_query_ids, doc_ids=row_doc_ids, known_positives=known_positives)



def _padding(pool: list[str], taken: set[str], n: int, rng: random.Random) -> list[str] | None:
    """``n`` distinct random ids from ``pool`` that are not in ``taken`` (None if there are not enough)."""
    chosen: list[str] = []
    for _ in range(20 * n):  # rejection sampling: the pool is large next to what a query excludes
        d = pool[rng.randrange(len(pool))]
        if d not in taken and d not in chosen:
            chosen.append(d)
            if len(chosen) == n:
                return chosen
    rest = [d for d in pool if d not in taken and d not in chosen]  # small pools: draw from what is left
    if len(rest) < n - len(chosen):
        return None
    return chosen + rng.sample(rest, n - len(chosen))
