"""``embedtune run CONFIG.yaml``: mine -> train -> select -> index -> eval -> export, in one run folder.

The pipeline only composes the stages' public functions. It is :data:`STAGE_TABLE` -- per stage
its name, how its config is built from the run's YAML and the function that runs it (its inputs:
the earlier stages' folders; its outputs: ``RUN/<stage>/``, listed in ``run_folder.STAGE_ARTIFACTS``)
-- walked by one loop (:meth:`Pipeline.run`).
Each stage keeps its own manifest and skips itself when its config and inputs did not change
(:mod:`embedtune.run_folder`). The pipeline adds:

- one YAML for the whole run (``PipelineConfig``), validated before any work starts, and every
  input the stages will read checked too (corpus, queries, each qrels split, the dev split, guard
  benchmarks, models and teachers): a bad qrels row stops the run before mining, not at eval;
- ``RUN/pipeline.json``: the config's hash (another config in the same folder is an error) and,
  per stage, the hash of the earlier stages' manifests it was run on, its wall time and its peak
  resident memory -- when an upstream stage re-ran, the downstream stages re-run too; otherwise
  they are skipped or resumed (a killed training continues from its last checkpoint);
- re-mining between training rounds (``train.rounds > 1``, :func:`remining`);
- ``select``: the regression guard -- base, tuned and merged weights compared on dev (and guard
  benchmarks); the index, the evaluation and the export use the model it ships;
- ``--from STAGE`` to force a stage and everything after it to run again;
- the final report (``RUN/report.md`` and a self-contained ``RUN/report.html``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import Field

from .config import CorpusConfig, ModelConfig, StrictModel, build_config, deep_merge, read_yaml
from .corpus import parse_benchmark_source
from .errors import ConfigError
from .io import remove_stale_temp_files
from .peak_memory import peak_rss_mb, release_freed_memory, reset_peak_rss
from .run_folder import RunFolder, read_manifest

log = logging.getLogger("embedtune")


class DataSection(StrictModel):
    """Where the labels, the corpus and the benchmark come from."""

    benchmark: str | None = Field(None, description="BEIR folder or name (./data, ../shared/datasets) evaluated at the end.")
    demo: bool = Field(False, description="Build the embedded docstring corpus into RUN/data and use it as the benchmark.")
    train_split: str = Field("train", description="Qrels split(s) mined for supervised pairs, e.g. 'train' or 'train,dev'.")
    test_split: str = Field("test", description="Split evaluated at the end; never seen by mining or training.")
    pairs: str | None = Field(None, description="Override the pairs source: 'self' (unsupervised) or a pairs .jsonl.")
    corpus: str | None = Field(None, description="Corpus to mine and index; default: the benchmark's corpus.")


class PipelineConfig(StrictModel):
    run_dir: str = Field(..., description="Folder that receives every stage's artifacts.")
    model: ModelConfig = ModelConfig()
    data: DataSection = DataSection()
    mine: dict[str, Any] = Field(default_factory=dict, description="MineConfig keys (model/pairs/corpus are filled in).")
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig keys (model is filled in).")
    select: dict[str, Any] = Field(default_factory=dict, description="SelectConfig keys: merge weights tried, guard benchmarks.")
    index: dict[str, Any] = Field(default_factory=dict, description="IndexConfig keys (model/corpus are filled in).")
    eval: dict[str, Any] = Field(default_factory=dict, description="EvalConfig keys (models/data are filled in).")
    export: dict[str, Any] = Field(default_factory=dict, description="ExportConfig keys.")
    bm25: bool = Field(True, description="Add BM25 to the final comparison.")
    hybrid: bool = Field(True, description="Hybrid retrieval: a BM25 index beside the vectors, hybrid(base) and "
                         "hybrid(tuned) in the evaluation, and the fusion weight chosen on dev stored in the index.")


def load_pipeline_config(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    data = deep_merge(read_yaml(path), overrides or {})
    return build_config(PipelineConfig, data, source=str(path))


# --------------------------------------------------------------------------- the stages


@dataclass(frozen=True)
class Stage:
    """One row of the stage table: its config is built from the run's YAML by ``config``; ``run``
    does the work in ``RUN/<name>/`` (``rerun``: ignore what the folder holds). A stage's inputs are
    the folders of the stages before it; what it writes is :data:`run_folder.STAGE_ARTIFACTS`."""

    name: str
    config: Callable[["Pipeline"], StrictModel]
    run: Callable[["Pipeline", Any, bool, bool], dict[str, Any]]  # (pipeline, config, rerun, progress)


def _mine_config(p: "Pipeline") -> StrictModel:
    from .mining import MineConfig

    bench = p.benchmark()[0]
    pairs = p.cfg.data.pairs or (f"{bench}:{p.cfg.data.train_split}" if bench else None)
    if pairs is None:
        raise ConfigError(f"{p.source}: field 'data': set data.benchmark, data.pairs or data.demo")
    base = {"model": p.cfg.model.model_dump(), "pairs": pairs, "corpus": p.corpus()}
    return build_config(MineConfig, deep_merge(base, p.cfg.mine, keep_none=True), f"{p.source}: mine")


def _mine(p: "Pipeline", cfg: Any, rerun: bool, progress: bool) -> dict[str, Any]:
    from .mining import mine_hard_negatives

    return mine_hard_negatives(cfg, p.folder.stage_dir("mine"), overwrite=rerun, show_progress=progress)


def _train_config(p: "Pipeline") -> StrictModel:
    from .training import TrainConfig

    return build_config(TrainConfig, deep_merge({"model": p.cfg.model.model_dump()}, p.cfg.train, keep_none=True), f"{p.source}: train")


def _train(p: "Pipeline", cfg: Any, rerun: bool, progress: bool) -> dict[str, Any]:
    from .training import train_model

    mined = p.folder.stage_dir("mine")
    # A killed training resumes from its last checkpoint unless upstream changed.
    return train_model(cfg, mined, p.folder.stage_dir("train"), resume=not rerun, overwrite=rerun, progress=progress,
                       remine=remining(mined) if cfg.rounds > 1 else None)


def _select_config(p: "Pipeline") -> StrictModel:
    from .selection import SelectConfig

    return build_config(SelectConfig, p.cfg.select, f"{p.source}: select")


def _select(p: "Pipeline", cfg: Any, rerun: bool, progress: bool) -> dict[str, Any]:
    from .selection import run_selection

    return run_selection(cfg, p.configs["train"].model, p.folder.stage_dir("train"), p.dev_split(), p.folder.stage_dir("select"),
                         overwrite=rerun, pseudo_queries=p.cfg.data.pairs == "self", teacher_bm25_weight=p.teacher_bm25_weight())


def _index_config(p: "Pipeline") -> StrictModel:
    from .index import IndexConfig

    corpus = p.corpus()
    if corpus is None:
        raise ConfigError(f"{p.source}: field 'data.corpus': no corpus to index")
    base = {"model": p.model_config(p.folder.shipped_model), "corpus": CorpusConfig(path=corpus).model_dump(), "hybrid": p.cfg.hybrid}
    return build_config(IndexConfig, deep_merge(base, p.cfg.index, keep_none=True), f"{p.source}: index")


def _index(p: "Pipeline", cfg: Any, rerun: bool, progress: bool) -> dict[str, Any]:
    from .index import build_index

    return build_index(cfg, p.folder.stage_dir("index"), overwrite=rerun, show_progress=progress)


def _eval_config(p: "Pipeline") -> StrictModel:
    from .evaluation import EvalConfig

    bench, split = p.benchmark()
    base = {"benchmark": str(bench), "split": split, "models": [p.cfg.model.model_dump(), p.model_config(p.folder.tuned_model)],
            "labels": ["base", "tuned"], "bm25": p.cfg.bm25, "hybrid": p.cfg.hybrid}
    return build_config(EvalConfig, deep_merge(base, p.cfg.eval, keep_none=True), f"{p.source}: eval")


def _eval(p: "Pipeline", cfg: Any, rerun: bool, progress: bool) -> dict[str, Any]:
    from .evaluation_report import run_evaluation

    if cfg.hybrid and cfg.fusion_dev_split is None and "bm25_weight" not in cfg.fusion.model_fields_set:
        cfg = cfg.model_copy(update=p.fusion_dev(cfg))
    shipped = p.folder.shipped()
    if shipped.startswith("merged"):  # the merged weights are a third system
        models = list(cfg.models) + [cfg.models[1].model_copy(update={"name": str(p.folder.shipped_model)})]
        cfg = cfg.model_copy(update={"models": models, "labels": list(cfg.labels or []) + ["merged"]})
    result = run_evaluation(cfg, p.folder.stage_dir("eval"), overwrite=rerun, show_progress=progress)
    fusion = result["summary"].get("fusion", {}).get(f"hybrid({shipped.split('(')[0]})")
    index_dir = p.folder.stage_dir("index")
    if fusion and (index_dir / "bm25").is_dir():
        from .fusion import FusionConfig
        from .index import write_fusion

        # the index ships the weight chosen on dev for the shipped model (a setting: no stage re-runs)
        write_fusion(index_dir, FusionConfig(**fusion["config"]), chosen_on={k: v for k, v in fusion.items() if k != "config"})
    return result


def _export_config(p: "Pipeline") -> StrictModel:
    from .export import ExportConfig

    return build_config(ExportConfig, p.cfg.export, f"{p.source}: export")


def _export(p: "Pipeline", cfg: Any, rerun: bool, progress: bool) -> dict[str, Any]:
    from .export import export_run

    return export_run(p.folder.root, p.folder.stage_dir("export"), cfg, overwrite=rerun)


STAGE_TABLE = (
    Stage("mine", _mine_config, _mine),
    Stage("train", _train_config, _train),
    Stage("select", _select_config, _select),
    Stage("index", _index_config, _index),
    Stage("eval", _eval_config, _eval),
    Stage("export", _export_config, _export),
)
STAGES = tuple(s.name for s in STAGE_TABLE)


class Pipeline:
    """The stage configs of one run, checked before any work, and the loop that runs them."""

    def __init__(self, cfg: PipelineConfig, source: str = "config") -> None:
        self.cfg = cfg
        self.source = source
        self.folder = RunFolder(cfg.run_dir)
        self._dev = None  # the training's dev split, once mining has run (see dev_split)
        self.configs = self.validate()

    # ------------------------------------------------------------------ what the stages read

    def benchmark(self) -> tuple[Path | None, str]:
        data = self.cfg.data
        if data.demo:
            return self.folder.root / "data" / "docstrings", data.test_split
        if data.benchmark is None:
            return None, data.test_split
        folder, _ = parse_benchmark_source(f"{data.benchmark}:{data.test_split}")
        return folder, data.test_split

    def corpus(self) -> str | None:
        bench = self.benchmark()[0]
        return self.cfg.data.corpus or (str(bench) if bench else None)

    def model_config(self, name: Path) -> dict[str, Any]:
        """The run's model settings for another model folder of the run (tuned, shipped)."""
        return deep_merge(self.cfg.model.model_dump(), {"name": str(name)})

    def validate(self) -> dict[str, StrictModel]:
        """Build every stage's config now, so a typo fails before hours of work."""
        evaluated = self.benchmark()[0] is not None or self.cfg.data.demo
        return {s.name: s.config(self) for s in STAGE_TABLE if s.name != "eval" or evaluated}

    def check_inputs(self) -> None:
        """Read every input the stages will need, so a bad file fails before the first stage:
        models and teachers, the corpus, and the benchmark's queries and qrels of every split the
        run uses (a qrels row naming an unknown document would stop the run at eval otherwise)."""
        from .corpus import load_beir_corpus, load_qrels, load_queries, qrels_file
        from .mining.inputs import load_mining_inputs
        from .models import resolve_model_path

        mine = self.configs["mine"]
        for name in [self.cfg.model.name] + ([str(mine.cross_encoder.path)] if mine.cross_encoder else []):
            resolve_model_path(name)
        load_mining_inputs(mine)  # the corpus and the pairs, with their qrels when they are a BEIR split
        splits: list[tuple[str, str, bool]] = []  # (source, split, skip_unknown_ids)
        if "eval" in self.configs:
            ev = self.configs["eval"]
            splits += [(ev.benchmark, s, ev.skip_unknown_ids) for s in (ev.split, ev.fusion_dev_split) if s]
        if self.configs["train"].dev.source:
            splits.append((*parse_benchmark_source(self.configs["train"].dev.source), False))
        splits += [(*parse_benchmark_source(g), False) for g in self.configs["select"].guard]
        ids: dict[Path, tuple[set[str], set[str]]] = {}
        for source, split, skip in splits:
            folder = Path(source)
            if folder not in ids:
                ids[folder] = (set(load_queries(folder / "queries.jsonl")), set(load_beir_corpus(folder / "corpus.jsonl")))
            load_qrels(qrels_file(folder, split), query_ids=ids[folder][0], doc_ids=ids[folder][1], skip_unknown_ids=skip)

    def teacher_bm25_weight(self) -> float:
        """The hybrid teacher's BM25 weight: mining's, or its default when mining had no hybrid
        teacher (what select's teacher guard judges with)."""
        from .mining.config import HybridTeacherConfig

        return (self.configs["mine"].hybrid_teacher or HybridTeacherConfig()).bm25_weight

    def dev_split(self):
        """The training's dev split (seeded, so the same queries training held out), made once per
        run: the select stage scores candidates on it and the eval stage chooses the fusion weight
        on its queries."""
        if self._dev is None:
            from .mined import load_mined
            from .training.dev import make_dev_split

            self._dev = make_dev_split(load_mined(self.folder.stage_dir("mine")), self.configs["train"])
        return self._dev

    def fusion_dev(self, cfg: StrictModel) -> dict[str, Any]:
        """Where the fusion weight is chosen: the training's dev split when it is a split of the
        evaluated benchmark, else the training queries it held out; nothing (a fixed weight)
        when the training data has no labelled queries of the benchmark."""
        train_cfg = self.configs["train"]
        bench, _ = self.benchmark()
        if train_cfg.dev.source:
            folder, split = parse_benchmark_source(train_cfg.dev.source)
            if bench is not None and folder.resolve() == Path(bench).resolve():
                return {"fusion_dev_split": split}
            return {}
        data = self.cfg.data
        if data.pairs is not None or not train_cfg.dev.enabled:
            # pseudo-queries or a pairs file: no judged queries to choose on (the benchmark's own
            # dev labels would make a no-label recipe a labelled one): the fixed default weight
            return {"fusion": cfg.fusion.model_copy(update={"bm25_weight": cfg.fusion.bm25_weight})}
        return {"fusion_dev_split": data.train_split.split(",")[0], "fusion_dev_queries": sorted(self.dev_split().exclude_query_ids)}

    # ------------------------------------------------------------------ the loop

    def run(self, *, from_stage: str | None = None, overwrite: bool = False, progress: bool = True,
            on_stage: Callable[[str, str], None] | None = None) -> dict[str, Any]:
        if from_stage is not None and from_stage not in STAGES:
            raise ConfigError(f"--from must be one of {', '.join(STAGES)}, got '{from_stage}'")
        # the settings the user chose, not the defaults: a release that adds a setting (with a
        # default) keeps existing run folders valid; each stage's own key still guards its results
        state = self.folder.start_run(self.cfg.model_dump(mode="json", exclude_defaults=True), self.cfg.model_dump(mode="json"),
                                      overwrite=overwrite)
        if self.cfg.data.demo:
            from .demo_corpus import build_docstring_corpus

            build_docstring_corpus(self.folder.root / "data" / "docstrings")
        self.check_inputs()
        removed = remove_stale_temp_files(self.folder.root)
        if removed:
            log.info("removed %d temp file(s) left by a killed run", removed)
        forced = False
        results: dict[str, Any] = {}
        for stage in STAGE_TABLE:
            if stage.name not in self.configs:
                continue
            forced = forced or stage.name == from_stage
            upstream = self.folder.upstream_hash(STAGES[: STAGES.index(stage.name)])
            record = state["stages"].get(stage.name, {})
            rerun = overwrite or forced or record.get("upstream") != upstream
            state["stages"][stage.name] = {**record, "upstream": upstream, "status": "running"}
            self.folder.write_state(state)
            if on_stage:
                on_stage(stage.name, "start")
            before = self.folder.manifest_hash(stage.name)
            release_freed_memory()  # what earlier stages freed: each stage's peak is its own
            reset_peak_rss()
            t0 = time.perf_counter()
            results[stage.name] = stage.run(self, self.configs[stage.name], rerun, progress)
            seconds, peak = time.perf_counter() - t0, peak_rss_mb()
            # A stage that found its work done leaves its manifest untouched and keeps the wall
            # time and memory of the run that did the work.
            skipped = before is not None and self.folder.manifest_hash(stage.name) == before
            if skipped and record.get("seconds"):
                seconds, peak = record["seconds"], record.get("peak_rss_mb", peak)
            state["stages"][stage.name] = {"upstream": upstream, "status": "complete", "seconds": seconds,
                                           "peak_rss_mb": peak, "skipped": skipped}
            self.folder.write_state(state)
            if on_stage:
                on_stage(stage.name, "skipped" if skipped else "done")
        from .report import write_pipeline_report

        report = write_pipeline_report(self.folder.root, state)
        return {"run_dir": str(self.folder.root), "stages": state["stages"], "results": results, "report": report}


def remining(mined: str | Path) -> Callable[[str, Path], Path]:
    """Re-mining between training rounds (ANCE): the same pairs, mined again with the round's
    model and the settings of the first mining run (its manifest's config)."""
    from .mining import MineConfig, mine_hard_negatives

    mined = Path(mined)
    manifest = read_manifest(mined) or {}
    if manifest.get("stage") != "mine" or not manifest.get("config"):
        raise ConfigError("rounds > 1 re-mine with the settings of the mining run, but the data folder has no mining manifest", file=mined, field="rounds")

    def remine(model_name: str, out_dir: Path) -> Path:
        cfg = dict(manifest["config"])
        cfg["model"] = {**cfg.get("model", {}), "name": model_name}
        summary = mine_hard_negatives(build_config(MineConfig, cfg, source=str(mined / "manifest.json")), out_dir)
        log.info("re-mined with %s: %s rows, %s negatives", model_name, summary.get("pairs"), summary.get("negatives"))
        return out_dir

    return remine
