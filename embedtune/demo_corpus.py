"""A real domain corpus that every fresh machine already has: the documentation of the
installed Python packages (numpy, scipy, torch, the standard library).

Each public function or method with a proper docstring becomes one document (title: its
qualified name; text: the docstring after its one-line summary) and one query (the summary).
Queries are split into train and test *by function*, so the test questions are about functions
the model never saw a pair for. Nothing is downloaded and no text is committed: the corpus is
generated at run time from whatever is installed, and the manifest records the versions.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
import re
from pathlib import Path

from .errors import InputError
from .io import atomic_write_dir

log = logging.getLogger("embedtune")

DEFAULT_MODULES = (
    "numpy", "numpy.linalg", "numpy.fft", "numpy.random", "numpy.polynomial", "numpy.ma",
    "scipy.stats", "scipy.optimize", "scipy.linalg", "scipy.signal", "scipy.sparse", "scipy.special",
    "scipy.interpolate", "scipy.integrate",
    "torch", "torch.nn.functional", "torch.linalg", "torch.fft",
    "os", "pathlib", "json", "collections", "itertools", "functools", "re", "string", "textwrap", "shutil",
    "subprocess", "datetime", "random", "statistics", "math", "typing", "inspect", "argparse", "logging",
    "csv", "sqlite3", "urllib.parse", "asyncio", "concurrent.futures", "unittest", "difflib", "heapq",
    "bisect", "zipfile", "tarfile", "tempfile", "hashlib", "threading", "socket", "decimal", "fractions",
    "enum", "dataclasses", "contextlib", "copy", "glob", "fnmatch", "io", "struct", "codecs", "locale",
    "time", "uuid", "base64", "binascii", "secrets", "hmac", "xml.etree.ElementTree", "html", "email",
)
# A first paragraph like "arccos(x, /, out=None, ...)" or "add(input, other) -> Tensor" is a
# signature, not a summary: the summary is the next paragraph.
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->.*)?$", re.S)


def _summary_and_body(doc: str) -> tuple[str, str] | None:
    paras = [p.strip() for p in doc.strip().split("\n\n") if p.strip()]
    while paras and _SIGNATURE.match(paras[0].replace("\n", " ")):
        paras.pop(0)
    if len(paras) < 2:
        return None
    summary = " ".join(paras[0].split())
    body = "\n\n".join(paras[1:])
    if not (15 <= len(summary) <= 300) or len(body) < 80:
        return None
    return summary, body


def collect_docstrings(modules: tuple[str, ...] = DEFAULT_MODULES, max_body_chars: int = 1500) -> list[dict]:
    """(qualified name, summary, body) of every documented public callable, deduplicated."""
    seen_objects: set[int] = set()
    entries: list[dict] = []
    for mod_name in modules:
        try:
            module = importlib.import_module(mod_name)
        except Exception:  # an optional package or a stdlib module this Python lacks
            log.debug("demo corpus: module %s not importable, skipped", mod_name)
            continue
        root = mod_name.split(".")[0]
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_"):
                continue
            candidates = [(name, obj)]
            if inspect.isclass(obj) and (getattr(obj, "__module__", "") or "").split(".")[0] == root:
                candidates += [(f"{name}.{a}", b) for a, b in sorted(vars(obj).items()) if not a.startswith("_") and callable(b)]
            for qual, target in candidates:
                if not callable(target) or id(target) in seen_objects:
                    continue
                seen_objects.add(id(target))
                try:
                    doc = inspect.getdoc(target)
                except Exception:
                    continue
                parsed = _summary_and_body(doc) if doc else None
                if parsed:
                    entries.append({"name": f"{mod_name}.{qual}", "summary": parsed[0], "body": parsed[1][:max_body_chars]})
    # A summary shared by several functions is an ambiguous question; a body shared by aliases
    # would be a duplicate document. Drop both.
    summary_count: dict[str, int] = {}
    for e in entries:
        summary_count[e["summary"]] = summary_count.get(e["summary"], 0) + 1
    unique, bodies = [], set()
    for e in entries:
        if summary_count[e["summary"]] > 1 or e["body"] in bodies:
            continue
        bodies.add(e["body"])
        unique.append(e)
    return unique


def _is_test(name: str, test_fraction: float, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


def build_docstring_corpus(out_dir: str | Path, *, test_fraction: float = 0.2, seed: int = 0, modules: tuple[str, ...] = DEFAULT_MODULES) -> Path:
    """Write the docstring corpus as a BEIR folder (corpus, queries, qrels/train.tsv, qrels/test.tsv).

    The folder is written whole into a temp folder and renamed, so it is complete or absent.
    """
    out_dir = Path(out_dir)
    if (out_dir / "corpus.jsonl").is_file():
        return out_dir
    entries = collect_docstrings(modules)
    if len(entries) < 50:
        raise InputError(f"only {len(entries)} documented functions found in the installed packages; the demo needs at least 50", file=out_dir)

    def write(tmp: Path) -> None:
        (tmp / "qrels").mkdir()
        splits: dict[str, list[str]] = {"train": [], "test": []}
        with open(tmp / "corpus.jsonl", "w", encoding="utf-8") as corpus, open(tmp / "queries.jsonl", "w", encoding="utf-8") as queries:
            for i, e in enumerate(entries):
                doc_id, qid = f"doc{i}", f"q{i}"
                corpus.write(json.dumps({"_id": doc_id, "title": e["name"], "text": e["body"], "metadata": {}}) + "\n")
                queries.write(json.dumps({"_id": qid, "text": e["summary"], "metadata": {}}) + "\n")
                splits["test" if _is_test(e["name"], test_fraction, seed) else "train"].append(f"{qid}\t{doc_id}\t1")
        for split, rows in splits.items():
            (tmp / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n", encoding="utf-8")
        versions = {}
        for root in sorted({m.split(".")[0] for m in modules}):
            mod = importlib.import_module(root) if root in ("numpy", "scipy", "torch") else None
            if mod is not None:
                versions[root] = getattr(mod, "__version__", "?")
        import platform

        versions["python"] = platform.python_version()
        (tmp / "SOURCE.json").write_text(json.dumps({
            "what": "docstrings of installed Python packages (query = one-line summary, document = rest of the docstring)",
            "documents": len(entries), "train_queries": len(splits["train"]), "test_queries": len(splits["test"]),
            "test_fraction": test_fraction, "seed": seed, "versions": versions, "modules": list(modules),
        }, indent=2))

    return atomic_write_dir(out_dir, write)
