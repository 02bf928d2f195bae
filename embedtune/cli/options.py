"""The CLI's vocabulary: every option that means the same thing in several commands is defined
once here, with its help, so its name, its type and its help are the same wherever it appears.

Concepts and their one name each: ``--mined`` (a folder 'embedtune mine' wrote) vs
``--benchmark`` (a BEIR folder with qrels, evaluated) vs ``--corpus`` (documents only);
``--batch-size`` (texts per encoding batch) vs ``--train-batch-size`` (rows per training step);
``--max-seq-length`` (the model's token limit) vs ``--max-tokens`` (passage length when
indexing); ``--num-negatives``; ``--top-k`` (results returned per query) vs ``--depth`` (how deep
a ranking is computed, for metrics or fusion); ``--out`` is always a folder, ``--results`` a file.

Old spellings keep working for one release through :func:`renamed` (hidden, with a warning).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand

MODEL_HELP = "Model: a local sentence-transformers folder, a Hugging Face id, or 'minilm' (packaged all-MiniLM-L6-v2)."
PRECISION_HELP = "Encoding precision: auto | fp32 | bf16 | fp16 (CUDA) | int8 (CPU, onnxruntime; pip install 'embedtune\\[onnx]')."

Json = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last stdout line; nothing else goes to stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bars and no info lines (warnings and errors still go to stderr).")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging (on stderr).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace what the output folder holds (results of another config or input).")]
CacheDir = Annotated[Optional[Path], typer.Option("--cache-dir", help="Embedding cache folder, shared by mine, index and eval "
                                                 "(default: $EMBEDTUNE_CACHE or ~/.cache/embedtune/embeddings).")]
Device = Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda | cuda:N (default auto).")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Random seed (sampling, shuffling, permutation tests); same seed, same result.")]
QueryPrompt = Annotated[Optional[str], typer.Option("--query-prompt", help="Prefix the model expects on queries, e.g. 'query: '.")]
DocumentPrompt = Annotated[Optional[str], typer.Option("--document-prompt", help="Prefix the model expects on documents, e.g. 'passage: '.")]
Precision = Annotated[Optional[str], typer.Option("--precision", help=PRECISION_HELP)]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", help="Texts per encoding batch (default 64).")]
MaxSeqLength = Annotated[Optional[int], typer.Option("--max-seq-length", help="The model's token limit for queries and documents (default: the model's own).")]
NumNegatives = Annotated[Optional[int], typer.Option("--num-negatives", "-n", help="Hard negatives per (query, positive) row.")]
Config = Annotated[Optional[Path], typer.Option("--config", help="YAML config (see configs/); flags override it.")]
Model = Annotated[Optional[str], typer.Option("--model", "-m", help=MODEL_HELP + " Default: minilm.")]
Corpus = Annotated[Optional[str], typer.Option("--corpus", "-c", help="Documents: BEIR folder, .jsonl/.csv/.parquet, or a folder of .txt/.md.")]
SkipUnknownIds = Annotated[Optional[bool], typer.Option("--skip-unknown-ids", help="Drop qrels rows naming unknown query or document ids (counted) instead of failing.")]


class _Renamed(TyperCommand):
    """A command that still accepts its options' old spellings (``renamed``: old -> new), with a
    warning on stderr; they are not shown in --help."""

    renamed: dict[str, str] = {}

    def parse_args(self, ctx, args):  # noqa: ANN001, ANN201
        from .app import console

        out = []
        for arg in args:
            name, eq, value = arg.partition("=")
            if name in self.renamed:
                new = self.renamed[name]
                console.print(f"[yellow]warning:[/] {name} is now {new}; the old spelling goes in the next release")
                arg = new + eq + value
            out.append(arg)
        return super().parse_args(ctx, out)


def renamed(**old_to_new: str) -> type[TyperCommand]:
    """``@app.command("train", cls=renamed(data="--mined"))``: keyword = old long option without
    dashes (``_`` for ``-``), or ``short_d`` for ``-d``."""
    mapping = {("-" + k[len("short_"):] if k.startswith("short_") else "--" + k.replace("_", "-")): v for k, v in old_to_new.items()}
    return type("Renamed", (_Renamed,), {"renamed": mapping})
