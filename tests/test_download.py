"""`embedtune data download` against a local HTTP server (no outside network)."""

from __future__ import annotations

import functools
import hashlib
import json
import http.server
import threading
import zipfile

import pytest
from helpers import write_beir
from typer.testing import CliRunner

from embedtune.cli import app
from embedtune.corpus import load_beir


@pytest.fixture()
def served(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def make_zip(src, zip_path, prefix="mini/"):
    with zipfile.ZipFile(zip_path, "w") as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + str(p.relative_to(src)))


def test_download_verifies_and_unpacks(served, tmp_path):
    root, base = served
    make_zip(write_beir(tmp_path / "src"), root / "mini.zip")
    digest = hashlib.sha256((root / "mini.zip").read_bytes()).hexdigest()
    result = CliRunner().invoke(app, ["data", "download", "mini", "--dest", str(tmp_path / "data"), "--url", f"{base}/mini.zip",
                                      "--sha256", digest, "--json"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == {"dataset": "mini", "folder": str(tmp_path / "data" / "mini"), "splits": ["test", "train"]}
    ds = load_beir(tmp_path / "data" / "mini", "test")
    assert len(ds.corpus) == 6 and len(ds.queries) == 3
    assert not list((tmp_path / "data").glob(".tmp-*"))


def test_download_rejects_bad_checksum_and_leaves_nothing(served, tmp_path):
    root, base = served
    make_zip(write_beir(tmp_path / "src"), root / "mini.zip")
    result = CliRunner().invoke(app, ["data", "download", "mini", "--dest", str(tmp_path / "data"), "--url", f"{base}/mini.zip", "--sha256", "0" * 64])
    assert result.exit_code == 3 and "sha256 mismatch" in result.stderr
    assert list((tmp_path / "data").iterdir()) == []


def test_download_rejects_path_escape_and_invalid_data(served, tmp_path):
    root, base = served
    with zipfile.ZipFile(root / "evil.zip", "w") as zf:
        zf.writestr("../evil.txt", "x")
    result = CliRunner().invoke(app, ["data", "download", "evil", "--dest", str(tmp_path / "data"), "--url", f"{base}/evil.zip"])
    assert result.exit_code == 3 and "would escape the target folder" in result.stderr
    assert not (tmp_path / "evil.txt").exists()
    src = write_beir(tmp_path / "src2")
    (src / "corpus.jsonl").write_text('{"_id": "d1"}\n')
    make_zip(src, root / "bad.zip")
    result = CliRunner().invoke(app, ["data", "download", "bad", "--dest", str(tmp_path / "data"), "--url", f"{base}/bad.zip"])
    assert result.exit_code == 3 and "corpus.jsonl:1: field 'text': missing" in result.stderr
    assert not (tmp_path / "data" / "bad").exists()
