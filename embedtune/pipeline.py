"""``embedtune run CONFIG.yaml``: mine -> train -> select -> index -> eval -> export, in one run folder.

The pipeline only composes the stages' public functions; each stage keeps its own manifest in
``RUN/<stage>/`` and skips itself when its config and inputs did not change. The pipeline adds:

- one YAML for the whole run (``PipelineConfig``), validated before any work starts;
- ``RUN/pipeline.json``: the config's hash (another config in the same folder is an error) and,
  per stage, the hash of the upstream manifest it was run on -- when an upstream stage re-ran,
  the downstream stages re-run too; otherwise they are skipped or resumed (a killed training
  continues from its last checkpoint);
- ``select``: the regression guard -- base, tuned and merged weights compared on dev (and guard
  benchmarks); the index, the evaluation and the export use the model it ships;
- ``--from STAGE`` to force a stage and everything after it to run again;
- the final report (``RUN/report.md`` and a self-contained ``RUN/report.html``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from pydantic import Field

from .config import CorpusConfig, ModelConfig, StrictModel, build_config, deep_merge, read_yaml
from .corpus import parse_benchmark_source
from .errors import ConfigError, RunDirError
from .io import atomic_write_json, remove_stale_temp_files, sha256_file, sha256_json

log = logging.getLogger("embedtune")

STAGES = ("mine", "train", "select", "index", "eval", "export")
STATE = "pipeline.json"


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


class Pipeline:
    """Resolves the stage configs of one run and runs the stages in order."""

    def __init__(self, cfg: PipelineConfig, source: str = "config") -> None:
        self.cfg = cfg
        self.source = source
        self.run_dir = Path(cfg.run_dir)
        self._dev = None  # the training's dev split, once mining has run (see _dev_split)

    # ------------------------------------------------------------------ stage configs

    def _benchmark(self) -> tuple[Path | None, str]:
        data = self.cfg.data
        if data.demo:
            return self.run_dir / "data" / "docstrings", data.test_split
        if data.benchmark is None:
            return None, data.test_split
        folder, _ = parse_benchmark_source(f"{data.benchmark}:{data.test_split}")
        return folder, data.test_split

    def _stage_config(self, stage: str) -> StrictModel:
        cfg, data = self.cfg, self.cfg.data
        bench, _ = self._benchmark()
        corpus = data.corpus or (str(bench) if bench else None)
        model = cfg.model.model_dump()
        tuned = deep_merge(model, {"name": str(self.run_dir / "train" / "model")})
        shipped = deep_merge(model, {"name": str(self.run_dir / "select" / "model")})
        src = f"{self.source}: {stage}"
        if stage == "mine":
            from .mining import MineConfig

            pairs = data.pairs or (f"{bench}:{data.train_split}" if bench else None)
            if pairs is None:
                raise ConfigError(f"{self.source}: field 'data': set data.benchmark, data.pairs or data.demo")
            return build_config(MineConfig, deep_merge({"model": model, "pairs": pairs, "corpus": corpus}, cfg.mine, keep_none=True), src)
        if stage == "train":
            from .training import TrainConfig

            return build_config(TrainConfig, deep_merge({"model": model}, cfg.train, keep_none=True), src)
        if stage == "select":
            from .selection import SelectConfig

            return build_config(SelectConfig, cfg.select, src)
        if stage == "index":
            from .index import IndexConfig

            if corpus is None:
                raise ConfigError(f"{self.source}: field 'data.corpus': no corpus to index")
            base = {"model": shipped, "corpus": CorpusConfig(path=corpus).model_dump(), "hybrid": cfg.hybrid}
            return build_config(IndexConfig, deep_merge(base, cfg.index, keep_none=True), src)
        if stage == "eval":
            from .evaluation import EvalConfig

            return build_config(EvalConfig, deep_merge(self._eval_defaults(model, tuned), cfg.eval, keep_none=True), src)
        if stage == "export":
            from .export import ExportConfig

            return build_config(ExportConfig, cfg.export, src)
        raise ValueError(stage)

    def validate(self) -> dict[str, StrictModel]:
        """Build every stage's config now, so a typo fails before hours of work."""
        stages = list(STAGES)
        if self._benchmark()[0] is None and not self.cfg.data.demo:
            stages.remove("eval")
        return {s: self._stage_config(s) for s in stages}

    # ------------------------------------------------------------------ state

    def _state_path(self) -> Path:
        return self.run_dir / STATE

    def _read_state(self) -> dict[str, Any]:
        import json

        path = self._state_path()
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except ValueError:
            raise RunDirError("pipeline state is corrupt; delete the run folder or pass --overwrite", file=path) from None

    def _upstream_hash(self, stage: str) -> str:
        """Hash of the manifests this stage depends on (all earlier stages)."""
        parts = {}
        for s in STAGES[: STAGES.index(stage)]:
            m = self.run_dir / s / "manifest.json"
            parts[s] = sha256_file(m) if m.is_file() else None
        return sha256_json(parts)

    # ------------------------------------------------------------------ running

    def run(self, *, from_stage: str | None = None, overwrite: bool = False, progress: bool = True,
            on_stage: Callable[[str, str], None] | None = None) -> dict[str, Any]:
        configs = self.validate()
        # the settings the user chose, not the defaults: a release that adds a setting (with a
        # default) keeps existing run folders valid; each stage's own key still guards its results
        key = sha256_json(self.cfg.model_dump(mode="json", exclude_defaults=True))
        state = self._read_state()
        if state and state.get("config_key") != key and not overwrite:
            raise RunDirError("run folder holds a run of another config; choose another run_dir or pass --overwrite", file=self._state_path(), field="config_key")
        if overwrite:
            state = {}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        removed = remove_stale_temp_files(self.run_dir)
        if removed:
            log.info("removed %d temp file(s) left by a killed run", removed)
        state.setdefault("stages", {})
        state.update({"config_key": key, "config": self.cfg.model_dump(mode="json")})
        atomic_write_json(self._state_path(), state)
        if self.cfg.data.demo:
            from .demo_corpus import build_docstring_corpus

            build_docstring_corpus(self.run_dir / "data" / "docstrings")
        forced = False
        results: dict[str, Any] = {}
        for stage in STAGES:
            if stage not in configs:
                continue
            forced = forced or stage == from_stage
            upstream = self._upstream_hash(stage)
            record = state["stages"].get(stage, {})
            stale = record.get("upstream") != upstream
            rerun = overwrite or forced or stale
            state["stages"][stage] = {"upstream": upstream, "status": "running", "seconds": record.get("seconds")}
            atomic_write_json(self._state_path(), state)
            if on_stage:
                on_stage(stage, "start")
            manifest = self.run_dir / stage / "manifest.json"
            before = sha256_file(manifest) if manifest.is_file() else None
            t0 = time.perf_counter()
            results[stage] = self._run_stage(stage, configs[stage], rerun=rerun, progress=progress)
            seconds = time.perf_counter() - t0
            # A stage that found its work done leaves its manifest untouched.
            skipped = before is not None and manifest.is_file() and sha256_file(manifest) == before
            # A skipped stage keeps the wall time of the run that did the work.
            state["stages"][stage] = {"upstream": upstream, "status": "complete",
                                      "seconds": record.get("seconds") if skipped and record.get("seconds") else seconds,
                                      "skipped": skipped}
            atomic_write_json(self._state_path(), state)
            if on_stage:
                on_stage(stage, "skipped" if skipped else "done")
        from .report import write_pipeline_report

        report = write_pipeline_report(self.run_dir, state)
        return {"run_dir": str(self.run_dir), "stages": state["stages"], "results": results, "report": report}

    def _run_stage(self, stage: str, cfg: StrictModel, *, rerun: bool, progress: bool) -> dict[str, Any]:
        out = self.run_dir / stage
        if stage == "mine":
            from .mining import mine_hard_negatives

            return mine_hard_negatives(cfg, out, overwrite=rerun, show_progress=progress)
        if stage == "train":
            from .training import train_model

            # A killed training resumes from its last checkpoint unless upstream changed.
            return train_model(cfg, self.run_dir / "mine", out, resume=not rerun, overwrite=rerun, progress=progress,
                               remine=remining(self.run_dir / "mine") if cfg.rounds > 1 else None)
        if stage == "select":
            from .selection import run_selection

            train_cfg = self.validate()["train"]
            return run_selection(cfg, train_cfg.model, self.run_dir / "train", self._dev_split(), out, overwrite=rerun)
        if stage == "index":
            from .index import build_index

            return build_index(cfg, out, overwrite=rerun, show_progress=progress)
        if stage == "eval":
            return self._run_eval(cfg, out, rerun=rerun, progress=progress)
        if stage == "export":
            from .export import export_run

            return export_run(self.run_dir, out, cfg, overwrite=rerun)
        raise ValueError(stage)

    # ------------------------------------------------------------------ evaluation

    def _eval_defaults(self, model: dict[str, Any], tuned: dict[str, Any]) -> dict[str, Any]:
        bench, split = self._benchmark()
        return {"data": str(bench), "split": split, "models": [model, tuned], "labels": ["base", "tuned"], "bm25": self.cfg.bm25,
                "hybrid": self.cfg.hybrid}

    def _dev_split(self):
        """The training's dev split (seeded, so the same queries training held out), made once per
        run: the select stage scores candidates on it and the eval stage chooses the fusion weight
        on its queries."""
        if self._dev is None:
            from .mined import load_mined
            from .training.dev import make_dev_split

            self._dev = make_dev_split(load_mined(self.run_dir / "mine"), self.validate()["train"])
        return self._dev

    def shipped(self) -> str:
        """'base', 'tuned' or 'merged(alpha=...)': what the select stage chose."""
        import json

        path = self.run_dir / "select" / "selection.json"
        return json.loads(path.read_text())["shipped"] if path.is_file() else "tuned"

    def _fusion_dev(self, cfg: StrictModel) -> dict[str, Any]:
        """Where the fusion weight is chosen: the training's dev split when it is a split of the
        evaluated benchmark, else the training queries it held out; nothing (a fixed weight)
        when the training data has no labelled queries of the benchmark."""
        from .corpus import parse_benchmark_source

        train_cfg = self.validate()["train"]
        bench, _ = self._benchmark()
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
        return {"fusion_dev_split": data.train_split.split(",")[0], "fusion_dev_queries": sorted(self._dev_split().exclude_query_ids)}

    def _run_eval(self, cfg: StrictModel, out: Path, *, rerun: bool, progress: bool) -> dict[str, Any]:
        from .evaluation_report import run_evaluation

        if cfg.hybrid and cfg.fusion_dev_split is None and "bm25_weight" not in cfg.fusion.model_fields_set:
            cfg = cfg.model_copy(update=self._fusion_dev(cfg))
        shipped = self.shipped()
        if shipped.startswith("merged"):  # the merged weights are a third system
            models = list(cfg.models) + [cfg.models[1].model_copy(update={"name": str(self.run_dir / "select" / "model")})]
            cfg = cfg.model_copy(update={"models": models, "labels": list(cfg.labels or []) + ["merged"]})
        result = run_evaluation(cfg, out, overwrite=rerun, show_progress=progress)
        fusion = result["summary"].get("fusion", {}).get(f"hybrid({shipped.split('(')[0]})")
        if fusion and (self.run_dir / "index" / "bm25").is_dir():
            from .fusion import FusionConfig
            from .index import write_fusion

            # the index ships the weight chosen on dev for the shipped model (a setting: no stage re-runs)
            write_fusion(self.run_dir / "index", FusionConfig(**fusion["config"]), chosen_on={k: v for k, v in fusion.items() if k != "config"})
        return result


def remining(mined: str | Path) -> Callable[[str, Path], Path]:
    """Re-mining between training rounds (ANCE): the same pairs, mined again with the round's
    model and the settings of the first mining run (its manifest's config)."""
    from .config import build_config
    from .manifest import read_manifest
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


def headline(run_dir: str | Path) -> dict[str, Any]:
    """Base vs tuned nDCG@10, the p-value and the total wall time of a finished run."""
    import json

    run_dir = Path(run_dir)
    out: dict[str, Any] = {"run_dir": str(run_dir)}
    state_path = run_dir / STATE
    if state_path.is_file():
        stages = json.loads(state_path.read_text()).get("stages", {})
        out["wall_time_s"] = round(sum(s.get("seconds") or 0 for s in stages.values()), 1)
        out["stage_seconds"] = {k: round(v.get("seconds") or 0, 1) for k, v in stages.items()}
    selection = run_dir / "select" / "selection.json"
    if selection.is_file():
        sel = json.loads(selection.read_text())
        out["shipped"] = {"model": sel["shipped"], "alpha": sel["alpha"], "why": sel["why"], "beat_base": sel["beat_base"],
                          "dev_ndcg@10": {c["name"]: round(c["dev_ndcg@10"], 4) for c in sel["candidates"]}}
    index_manifest, train_manifest = run_dir / "index" / "manifest.json", run_dir / "train" / "manifest.json"
    if index_manifest.is_file() and train_manifest.is_file():
        # whether the shipped model's document vectors differ from the base model's: with a
        # query-side model they do not, and every index of the base model stays valid
        info = json.loads(index_manifest.read_text())["index"]
        base_sha = json.loads(train_manifest.read_text()).get("models", {}).get("base", {}).get("sha256")
        out["reindexed"] = (info.get("document_encoder_sha256") or info.get("model_sha256")) != base_sha
    manifest = run_dir / "eval" / "manifest.json"
    if manifest.is_file():
        summary = json.loads(manifest.read_text())["metrics"]
        models = summary["models"]
        out["dataset"], out["split"], out["queries"] = summary["dataset"], summary["split"], summary["queries"]
        out["base"] = {"ndcg@10": models["base"]["ndcg@10"], "recall@100": models["base"]["recall@100"]}
        out["tuned"] = {"ndcg@10": models["tuned"]["ndcg@10"], "recall@100": models["tuned"]["recall@100"]}
        if "bm25" in models:
            out["bm25"] = {"ndcg@10": models["bm25"]["ndcg@10"]}
        d = summary["deltas"]["tuned"]["ndcg@10"]
        out["delta_ndcg@10"], out["p_value"], out["ci95"] = d["delta"], d["p_value"], d["ci95"]
        out["ndcg@10"] = out["tuned"]["ndcg@10"]
        out["wins_ties_losses"] = summary["wins_ties_losses"]["tuned"]
        for name in ("merged", "hybrid(base)", "hybrid(tuned)", "hybrid(merged)"):
            if name in models:
                d = summary["deltas"][name]["ndcg@10"]
                out[name] = {"ndcg@10": models[name]["ndcg@10"], "recall@100": models[name]["recall@100"],
                             "delta_vs_base": d["delta"], "ci95": d["ci95"], "p_value": d["p_value"]}
                if name in summary.get("fusion", {}):
                    out[name] |= {"bm25_weight": summary["fusion"][name]["config"]["bm25_weight"],
                                  "fusion_chosen_on": summary["fusion"][name]["source"]}
        for name, d in summary.get("deltas_vs", {}).get("hybrid(base)", {}).items():
            if name in ("tuned", "merged", "hybrid(tuned)", "hybrid(merged)"):
                r = d["ndcg@10"]
                out.setdefault("vs_hybrid_base", {})[name] = {"delta": r["delta"], "ci95": r["ci95"], "p_value": r["p_value"]}
        if "best" in summary:
            out["best"] = summary["best"]
    return out
