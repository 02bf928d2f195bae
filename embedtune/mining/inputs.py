"""What mining reads: the corpus and the (query, positive) pairs of a BEIR split, a pairs JSONL or the
corpus itself, and the hashes of those inputs for the manifest."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..corpus import Document, load_corpus, parse_benchmark_source
from ..errors import ConfigError, InputError
from ..pairs import (
    PairSet,
    TransformersQueryGenerator,
    pairs_from_beir,
    pairs_from_corpus,
    pairs_from_jsonl,
    parse_splits,
)
from .config import MineConfig


@dataclass
class MiningInputs:
    corpus: dict[str, Document]
    corpus_path: Path
    source_kind: str  # beir | pairs | self
    source_files: list[Path]
    pair_set: PairSet | None  # None for 'self' until make_pairs() (generation can be costly)
    beir_folder: Path | None = None
    splits: list[str] = field(default_factory=list)

    def make_pairs(self, cfg: "MineConfig") -> PairSet:
        if self.pair_set is None:
            generator = TransformersQueryGenerator(cfg.self_pairs.qgen) if "qgen" in cfg.self_pairs.generators else None
            self.pair_set = pairs_from_corpus(self.corpus, cfg.self_pairs, seed=cfg.seed, query_generator=generator)
        return self.pair_set



def load_mining_inputs(cfg: MineConfig) -> MiningInputs:
    """Corpus and pairs, validated: every input error comes before any model is loaded. Pairs
    generated from the corpus (``self``) are made later by ``make_pairs``."""
    source = cfg.pairs.strip()
    beir_folder: Path | None = None
    splits: list[str] = []
    if source == "self":
        kind = "self"
        qgen = cfg.self_pairs.qgen
        if "qgen" in cfg.self_pairs.generators and qgen is not None and not Path(qgen.model).expanduser().is_dir():
            raise ConfigError(f"query-generation model folder not found: {qgen.model}", field="self_pairs.qgen.model")
    elif source.endswith(".jsonl") or Path(source).is_file():
        kind = "pairs"
        if not Path(source).is_file():
            raise InputError("pairs file not found", file=source, field="pairs")
    else:
        kind = "beir"
        if ":" not in source:
            raise ConfigError(f"pairs source '{source}' is not 'dataset:split', a .jsonl file, or 'self'", field="pairs")
        beir_folder, split = parse_benchmark_source(source)
        splits = parse_splits(split)
    if cfg.corpus is None and beir_folder is None:
        raise ConfigError("--corpus is required unless --pairs is a BEIR split (e.g. scifact:train)", field="corpus")
    if cfg.cross_encoder is not None and not Path(cfg.cross_encoder.path).expanduser().is_dir():
        raise ConfigError(f"cross-encoder folder not found: {cfg.cross_encoder.path}", field="cross_encoder.path")
    corpus_path = Path(cfg.corpus) if cfg.corpus is not None else beir_folder
    corpus = load_corpus(corpus_path, id_field=cfg.id_field, title_field=cfg.title_field, text_field=cfg.text_field)
    pair_set = None
    files: list[Path] = []
    if kind == "beir":
        pair_set = pairs_from_beir(beir_folder, splits, corpus, skip_unknown_ids=cfg.skip_unknown_ids)
        files = [beir_folder / "queries.jsonl", *(beir_folder / "qrels" / f"{s}.tsv" for s in splits)]
    # Empty documents (reported by load_corpus) are never a negative, a positive or a pseudo-query source.
    corpus = {doc_id: doc for doc_id, doc in corpus.items() if doc.full_text}
    if kind == "pairs":
        pair_set = pairs_from_jsonl(Path(source), corpus, unmatched_positives=cfg.unmatched_positives)
        files = [Path(source)]
    return MiningInputs(corpus, corpus_path.resolve(), kind, [f.resolve() for f in files], pair_set, beir_folder, splits)



def resolved_pairs_source(inputs: MiningInputs, source: str) -> str:
    """The pairs source with absolute paths, so a manifest can be re-run from any folder."""
    if inputs.source_kind == "beir":
        return f"{inputs.beir_folder.resolve()}:{','.join(inputs.splits)}"
    if inputs.source_kind == "pairs":
        return str(Path(source).resolve())
    return source



def hash_inputs(inputs: MiningInputs, cfg: MineConfig) -> dict[str, str]:
    from ..run_folder import hash_path
    from ..models import model_fingerprint, resolve_model_path

    hashes = {"corpus": hash_path(inputs.corpus_path)}
    if inputs.corpus_path.is_dir() and (inputs.corpus_path / "corpus.jsonl").is_file():
        hashes["corpus"] = hash_path(inputs.corpus_path / "corpus.jsonl")  # not the qrels of the folder
    for f in inputs.source_files:
        hashes[f"pairs:{f.name}"] = hash_path(f)
    hashes["model"] = model_fingerprint(resolve_model_path(cfg.model.name))
    if cfg.cross_encoder is not None:
        hashes["cross_encoder"] = model_fingerprint(Path(cfg.cross_encoder.path).expanduser())
    if cfg.pairs.strip() == "self" and cfg.self_pairs.qgen is not None and "qgen" in cfg.self_pairs.generators:
        hashes["query_generator"] = model_fingerprint(Path(cfg.self_pairs.qgen.model).expanduser())
    return hashes
