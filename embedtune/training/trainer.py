"""One training round on sentence-transformers' ``SentenceTransformerTrainer``: its arguments, its
progress routed into embedtune's log, the best checkpoint on dev kept."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .. import progress as progress_display
from ..config import ModelConfig
from ..errors import ConfigError, RunDirError
from ..io import save_model_atomically
from ..losses import KNOWN_POSITIVE_LOSSES, build_loss
from ..mined import MinedData
from .checkpoints import is_final_step, last_checkpoint, trainer_state
from .config import TrainConfig, resolve_training_precision
from .curve import training_curve
from .dev import NDCG_KEY, base_dev_score, dev_evaluator, make_dev_split
from .processes import world_size
from .rows import build_train_rows

log = logging.getLogger("embedtune")

# Every batch is padded to a multiple of this many tokens. Why: each new (rows, length) shape makes
# oneDNN and PyTorch's CPU kernels build and cache new primitives, which stay resident. With lengths
# left free (1..max_seq_length) a MiniLM bf16 training process grew ~5.5 MB a step after freeing
# and trimming everything, for as long as new lengths kept coming; padded to a fixed length it did not
# grow at all (eval/results/memory.md). Multiples of 32 leave at most max_seq_length / 32 lengths per
# column; attention masks make the extra padding invisible to the embeddings.
PAD_TO_MULTIPLE_OF = 32


def steps_per_epoch(num_rows: int, batch_size: int, world: int) -> int:
    """Optimizer steps in one pass (the trainer drops the last uneven batch under DDP only)."""
    global_batch = batch_size * world
    return num_rows // global_batch if world > 1 else math.ceil(num_rows / global_batch)


def micro_batch(cfg: TrainConfig) -> int:
    """Rows embedded at once. The teacher losses (MarginMSE, listwise KL) are means of per-row
    terms -- no in-batch negatives -- so a batch accumulated from ``loss.mini_batch_size``-row
    pieces has the full batch's gradient in that many rows' activation memory (what GradCache does
    for cached_mnrl, whose rows are coupled). The largest divisor of ``batch_size`` not above
    ``mini_batch_size``, so every optimizer step sees exactly ``batch_size`` rows."""
    from ..losses import TEACHER_LOSSES

    if cfg.loss.name not in TEACHER_LOSSES or cfg.loss.mini_batch_size >= cfg.batch_size:
        return cfg.batch_size
    return max(d for d in range(1, cfg.loss.mini_batch_size + 1) if cfg.batch_size % d == 0)


def _prompts(columns: list[str], model_cfg: ModelConfig) -> dict[str, str] | None:
    if not (model_cfg.query_prompt or model_cfg.document_prompt):
        return None
    return {col: model_cfg.query_prompt if col == "anchor" else model_cfg.document_prompt for col in columns if col != "label"}


def _training_args(cfg: TrainConfig, ckpt_dir: Path, *, num_rows: int, dev: bool, prompts: dict[str, str] | None):
    import torch
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer import SentenceTransformerTrainingArguments

    world = world_size()
    per_epoch = steps_per_epoch(num_rows, cfg.batch_size, world)
    if per_epoch < 1:
        raise ConfigError(f"{num_rows} training rows are fewer than one global batch ({cfg.batch_size} x {world})", field="batch_size")
    total = cfg.max_steps or math.ceil(per_epoch * cfg.epochs)
    eval_steps = cfg.dev.eval_steps or max(1, total // cfg.dev.evaluations)
    save_steps = eval_steps if dev else (cfg.save_steps or 100)  # load_best_model_at_end needs save == eval steps
    precision = resolve_training_precision(cfg.precision)
    cuda = torch.cuda.is_available()
    micro = micro_batch(cfg)
    return SentenceTransformerTrainingArguments(
        output_dir=str(ckpt_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=cfg.batch_size // micro,
        per_device_eval_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,  # transformers >= 5: a float < 1 is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler,
        max_grad_norm=cfg.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        activation_checkpointing=cfg.gradient_checkpointing,
        batch_sampler=BatchSamplers.NO_DUPLICATES if cfg.sampler == "no_duplicates" else BatchSamplers.BATCH_SAMPLER,
        prompts=prompts,  # the data collator prefixes each column's texts
        eval_strategy="steps" if dev else "no",
        eval_steps=eval_steps if dev else None,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=dev,
        metric_for_best_model=NDCG_KEY if dev else None,
        greater_is_better=True if dev else None,
        # Early stopping's patience counter lives in a callback: restore it so a resumed run stops
        # where the uninterrupted one would.
        restore_callback_states_from_checkpoint=True,
        logging_steps=min(cfg.logging_steps, eval_steps),
        logging_first_step=True,
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=not cuda,  # also what makes accelerate run multi-process CPU training (gloo) as DDP
        ddp_backend=("nccl" if cuda else "gloo") if world > 1 else None,
        dataloader_drop_last=world > 1,
        disable_tqdm=True,  # embedtune draws the bar (_log_in_one_voice)
    )


def pad_to_multiple(collator):  # noqa: ANN001, ANN201
    """``collator`` (the one sentence-transformers' trainer built, with its own checks and settings)
    made to pad every column to :data:`PAD_TO_MULTIPLE_OF` tokens, through a per-call
    ``processing_kwargs``: nothing is stored in the model's saved config."""
    from functools import partial

    collator.preprocess_fn = partial(collator.preprocess_fn, processing_kwargs={"text": {"pad_to_multiple_of": PAD_TO_MULTIPLE_OF}})
    return collator


@dataclass
class RoundResult:
    model_dir: Path
    best_dev: float | None
    base_dev: float | None
    curve: dict[str, list]
    steps: int
    stats: dict[str, int]
    dev_description: str | None
    seconds: float


def set_attention_dropout(model, p: float) -> int:  # noqa: ANN001
    """Set the dropout on attention probabilities of every attention layer (and the config, so the
    saved model says what it was trained with). Returns how many layers were changed.

    Why: with that dropout on, torch's fused CPU attention cannot run and each layer keeps its
    attention matrices for the backward pass (eval/bench_memory.py)."""
    import torch

    changed = 0
    for module in model.modules():
        if "Attention" in type(module).__name__ and isinstance(getattr(module, "dropout", None), torch.nn.Dropout):
            module.dropout.p = p
            changed += 1
    for transformer in model.modules():
        config = getattr(transformer, "config", None)
        for key in ("attention_probs_dropout_prob", "attention_dropout"):
            if config is not None and hasattr(config, key) and not isinstance(getattr(config, key), bool):
                setattr(config, key, p)
    return changed


def _log_in_one_voice(trainer, show_progress: bool) -> None:
    """transformers' own progress -- a tqdm bar with raw ``{'loss': ...}`` dicts written under it,
    or ``print(dict)`` to stdout when the bar is off -- replaced by embedtune's display: one bar
    with step, loss, learning rate and ETA, and one log line per logging step (when ``show_progress``)."""
    import contextlib

    from transformers.trainer_callback import PrinterCallback, ProgressCallback, TrainerCallback

    class OneVoice(TrainerCallback):
        def __init__(self) -> None:
            self.stack = contextlib.ExitStack()
            self.bar = progress_display.Step(None, None)

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = self.stack.enter_context(progress_display.step("Training (steps)", state.max_steps))
                self.bar.update(completed=state.global_step)  # a resumed run starts where it stopped

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update(completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs and "loss" in logs:
                self.bar.note(f"loss {float(logs['loss']):.4f}, lr {float(logs.get('learning_rate', 0.0)):.2g}")
                log.info("step %d/%d: loss %.4f, learning rate %.3g", state.global_step, state.max_steps,
                         float(logs["loss"]), float(logs.get("learning_rate", 0.0)))

        def on_train_end(self, args, state, control, **kwargs):
            self.stack.close()

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if show_progress:
        trainer.add_callback(OneVoice())


def train_round(
    model_name: str,
    data: MinedData,
    cfg: TrainConfig,
    work_dir: Path,
    model_dir: Path,
    *,
    resume: bool,
    callbacks: list | None = None,
    progress: bool = True,
) -> RoundResult:
    """One training run: ``model_name`` on ``data``; checkpoints in ``work_dir/checkpoints``,
    the final (best-on-dev) model saved atomically into ``model_dir``."""
    import torch
    import transformers
    from datasets import Dataset
    from sentence_transformers.sentence_transformer import SentenceTransformerTrainer
    from transformers import EarlyStoppingCallback

    from ..models import load_model

    started = time.time()
    transformers.set_seed(cfg.seed)  # python, numpy, torch (model init of new heads, dropout)
    dev = make_dev_split(data, cfg)
    rows = build_train_rows(data, cfg, dev.exclude_query_ids if dev else set())
    known = None
    if cfg.loss.name in KNOWN_POSITIVE_LOSSES and cfg.loss.mask_known_positives:
        from ..masked_mnrl import KnownPositives

        known = KnownPositives.from_ids(rows.query_ids, rows.doc_ids, rows.known_positives)
        rows.columns["label"] = list(range(len(rows.query_ids)))  # row index: the loss looks its ids up
    train_ds = Dataset.from_dict(rows.columns)

    model_cfg = cfg.model.model_copy(update={"name": model_name})
    model = load_model(model_cfg).st  # the trainer takes the sentence-transformers model itself
    if cfg.attention_dropout is not None:
        log.info("attention dropout %.2f in %d layers", cfg.attention_dropout, set_attention_dropout(model, cfg.attention_dropout))
    guide = load_model(model_cfg).st if cfg.loss.name == "gist" else None
    loss = build_loss(model, cfg.loss, guide=guide, distributed=world_size() > 1, known_positives=known)

    ckpt_dir = work_dir / "checkpoints"
    checkpoint = last_checkpoint(ckpt_dir, drop_incomplete=True) if resume else None
    if resume and checkpoint is None:
        log.info("no checkpoint in %s: starting from the beginning", ckpt_dir)
    elif not resume and last_checkpoint(ckpt_dir):
        raise RunDirError("holds checkpoints of an interrupted run: pass --resume to continue it or --overwrite to start over", file=ckpt_dir)
    args = _training_args(
        cfg, ckpt_dir, num_rows=len(train_ds), dev=dev is not None,
        prompts=_prompts(train_ds.column_names, cfg.model),
    )
    evaluator = dev_evaluator(dev, cfg.model, resolve_training_precision(cfg.precision)) if dev else None
    all_callbacks = list(callbacks or [])
    if dev and cfg.dev.early_stopping_patience:
        all_callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.dev.early_stopping_patience))
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train_ds, loss=loss, evaluator=evaluator, callbacks=all_callbacks,
    )
    pad_to_multiple(trainer.data_collator)  # the data loaders read it when training starts
    _log_in_one_voice(trainer, progress)
    log.info(
        "training on %s rows (%s negatives each), %s; dev: %s",
        f"{len(train_ds):,}", cfg.negatives_per_query, _describe_steps(args), dev.description if dev else "none",
    )
    base = base_dev_score(evaluator, model, work_dir, fresh=checkpoint is None) if dev else None
    if checkpoint and is_final_step(trainer_state(checkpoint) or {}):
        # transformers resumes a run whose last checkpoint is its final step with one step too many
        # (it checks max_steps only after a step): finish from the checkpoint instead of training
        from transformers import TrainerState

        log.info("%s is the final step: finishing the round from it", checkpoint)
        trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
        keep = trainer.state.best_model_checkpoint if args.load_best_model_at_end else None
        weights_dir = keep if keep and Path(keep).is_dir() else checkpoint
        loaded = type(trainer.model)(str(weights_dir), device="cpu", local_files_only=True)
        trainer.model.load_state_dict(loaded.state_dict())
        del loaded
    else:
        # The trainer prints its log dicts on stdout; keep stdout for the --json line.
        with contextlib.redirect_stdout(sys.stderr):
            trainer.train(resume_from_checkpoint=checkpoint)
    trainer.accelerator.wait_for_everyone()

    curve = training_curve(trainer.state.log_history, base_dev=base)
    best = trainer.state.best_metric if dev else None
    if best is not None and base is not None and best <= base:
        log.warning("training did not improve dev nDCG@10 over the base model (%.4f -> best %.4f)", base, best)
    if trainer.is_world_process_zero():
        save_model_atomically(trainer.model, model_dir)
    trainer.accelerator.wait_for_everyone()
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss

    # MatryoshkaLoss wraps the loss in .loss (CachedMultipleNegativesRankingLoss has a .loss too: not unwrapped)
    masked = getattr(loss.loss if isinstance(loss, MatryoshkaLoss) else loss, "masked_candidates", None)
    if masked is not None:  # steps run by this process since its start (a resumed run counts from there)
        rows.stats["masked_in_batch_known_positives"] = masked
        log.info("in-batch documents masked as known positives of their query: %s", f"{masked:,}")
    del trainer, loss, guide
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return RoundResult(
        model_dir=model_dir, best_dev=best, base_dev=base, curve=curve, steps=curve["steps"], stats=rows.stats,
        dev_description=dev.description if dev else None, seconds=time.time() - started,
    )


def _describe_steps(args) -> str:
    if args.max_steps and args.max_steps > 0:
        return f"{args.max_steps} steps"
    return f"{args.num_train_epochs:g} epoch(s)"
