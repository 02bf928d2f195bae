"""Fetch a public BEIR dataset zip, verify it, and unpack it in BEIR layout.

Verification: the zip's own CRCs (``testzip``), an optional sha256 the user passes, no member
path may escape the target folder, and the unpacked files must load with embedtune's strict
BEIR readers. The folder appears only when all of that passed (unpacked into a temp folder,
then renamed).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable

from .corpus import beir_splits, load_beir
from .errors import InputError

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"


def _fetch(url: str, dest: Path, progress: Callable[[int, int], None] | None) -> str:
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(dest, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0)
            done = 0
            while block := resp.read(1 << 20):
                out.write(block)
                h.update(block)
                done += len(block)
                if progress:
                    progress(done, total)
    except OSError as err:  # URLError, HTTPError, timeouts
        raise InputError(f"download failed: {getattr(err, 'reason', err)}", file=url) from None
    return h.hexdigest()


def _safe_extract(archive: zipfile.ZipFile, target: Path, source: str) -> None:
    for member in archive.namelist():
        p = PurePosixPath(member)
        if p.is_absolute() or ".." in p.parts:
            raise InputError(f"zip member '{member}' would escape the target folder; refusing to unpack", file=source)
    archive.extractall(target)


def download_beir(
    name: str,
    dest: str | Path = "data",
    *,
    url: str | None = None,
    sha256: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Download ``name`` into ``dest/name`` and return that folder (kept as is if already there)."""
    dest = Path(dest)
    final = dest / name
    if (final / "corpus.jsonl").is_file():
        return final
    url = url or BEIR_URL.format(name=name)
    dest.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=dest))
    try:
        zip_path = work / f"{name}.zip"
        digest = _fetch(url, zip_path, progress)
        if sha256 and digest != sha256.lower():
            raise InputError(f"sha256 mismatch: expected {sha256}, got {digest}", file=url)
        try:
            with zipfile.ZipFile(zip_path) as archive:
                bad = archive.testzip()
                if bad:
                    raise InputError(f"corrupt zip member '{bad}'", file=url)
                _safe_extract(archive, work / "unpacked", url)
        except zipfile.BadZipFile:
            raise InputError("not a valid zip file", file=url) from None
        roots = [p.parent for p in (work / "unpacked").rglob("corpus.jsonl")]
        if len(roots) != 1:
            raise InputError(f"expected one BEIR folder with corpus.jsonl in the zip, found {len(roots)}", file=url)
        root = roots[0]
        splits = beir_splits(root)
        if not splits:
            raise InputError("no qrels/<split>.tsv in the zip", file=url)
        for split in splits:
            load_beir(root, split)  # strict validation of every file
        (root / "SOURCE.txt").write_text(f"url: {url}\nsha256: {digest}\n", encoding="utf-8")
        root.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final
