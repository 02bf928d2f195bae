"""Kill tests for `embedtune mine` and `embedtune index build`: SIGKILL the command at seeded
random moments and at the last rename before its result becomes visible, re-run the same
command, and get exactly what an uninterrupted run gives -- no refusal, no half artifact, no
temp file left behind.

Every command runs as a subprocess (`python -m embedtune`) with the tiny random BERT. Per command,
two chains of launches run side by side (two cores, about half the wall time):

- ``a`` -> ``b``: the uninterrupted run into ``a``; then two launches into ``b`` SIGKILLed after
  delays drawn with ``random.Random(seed)`` between 0.3 s and the uninterrupted run's wall time
  (it ran beside the other chain, as these launches do); then the same command again into ``b``,
  to completion;
- ``c``: a launch that SIGKILLs itself just before it renames its final artifact into place
  (``_KILL_AT_RENAME``: deterministic, the state that looks most like a finished run), then the
  same command again into ``c``, to completion.

``b`` and ``c`` must then hold what ``a`` holds, with complete manifests and no temp files.
Embedding caches: ``mine`` gives every launch into ``b`` an empty cache, so a kill can land in the
encoding and the resume does the real work; ``index build`` into ``b`` shares ``a``'s warm cache
(the usual re-run after a crash) while chain ``c`` encodes from scratch.
Set EMBEDTUNE_KILL_SEED to draw other kill moments.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
from helpers import write_synthetic_beir

from embedtune.io import TMP_PREFIX

SEED = int(os.environ.get("EMBEDTUNE_KILL_SEED", "0"))
RANDOM_KILLS = 2  # plus the deterministic rename-kill: three kills per command within the time budget
MIN_KILL_DELAY_S = 0.3
TIMEOUT_S = 600

# Runs the CLI with os.replace / os.rename wrapped: the process SIGKILLs itself just before the
# rename whose destination is argv[1]. Every artifact is written as temp + rename (embedtune/io.py,
# index._swap_into_place), so this is the moment with the most work done and nothing published.
_KILL_AT_RENAME = textwrap.dedent(
    """
    import os
    import signal
    import sys

    target = os.path.abspath(sys.argv[1])

    def deadly(rename):
        def wrapped(src, dst, *args, **kwargs):
            if os.path.abspath(os.fspath(dst)) == target:
                os.kill(os.getpid(), signal.SIGKILL)
            return rename(src, dst, *args, **kwargs)
        return wrapped

    os.replace, os.rename = deadly(os.replace), deadly(os.rename)
    sys.argv = ["embedtune", *sys.argv[2:]]
    from embedtune.cli import main

    main()
    """
)


# --------------------------------------------------------------------------- helpers


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "EMBEDTUNE_CACHE": str(cache)}


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "embedtune", *args]


def _kill_at_rename(tmp_path: Path, target: Path, args: list[str]) -> list[str]:
    script = tmp_path / "kill_at_rename.py"
    script.write_text(_KILL_AT_RENAME)
    return [sys.executable, str(script), str(target), *args]


def _launch(argv: list[str], env: dict[str, str], log: Path, kill_after: float | None = None) -> tuple[int, float]:
    """Run one launch, SIGKILLed after ``kill_after`` seconds if still running. Returns its exit
    code (negative: the signal) and its CPU seconds. Output goes to ``log``: a pipe nobody reads
    could fill up and block the process."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as fh:
        proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + (TIMEOUT_S if kill_after is None else kill_after)
    # os.wait4 rather than Popen.wait: it also gives the child's CPU time
    while not (done := os.wait4(proc.pid, os.WNOHANG))[0]:
        if time.monotonic() >= deadline:
            os.kill(proc.pid, signal.SIGKILL)  # not reaped yet, so the pid is still this child's
            done = os.wait4(proc.pid, 0)
            break
        time.sleep(0.01)
    _, status, usage = done
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait again
    return proc.returncode, usage.ru_utime + usage.ru_stime


def _ok(rc: int, log: Path) -> None:
    assert rc == 0, f"exit {rc}:\n{log.read_text(errors='replace')[-3000:]}"


def _random_kills(argv: list[str], env_for, bound: float, seed: int, logs: Path, watch: Path) -> list[str]:
    """Launches SIGKILLed after seeded random delays in [0.3 s, bound]; ``env_for(i)`` is launch
    i's environment. A launch that finishes first is fine (exit 0 required); the returned events
    say what happened and what ``watch`` held afterwards (printed with -s)."""
    rng = random.Random(seed)
    events = []
    for i in range(RANDOM_KILLS):
        delay = rng.uniform(MIN_KILL_DELAY_S, max(bound, MIN_KILL_DELAY_S + 0.1))
        log = logs / f"kill-{i}.log"
        rc, _ = _launch(argv, env_for(i), log, kill_after=delay)
        if rc != -signal.SIGKILL:
            _ok(rc, log)
        left = sorted(p.name for p in watch.iterdir()) if watch.is_dir() else []
        events.append(f"{delay:.2f}s {'killed' if rc else 'finished'} {left}")
    return events


def _side_by_side(*chains):
    """Run independent chains of launches in two threads (two cores: about half the wall time)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(chains)) as pool:
        return [f.result() for f in [pool.submit(chain) for chain in chains]]


def _assert_clean(folder: Path) -> None:
    """Every manifest loads and says complete; no temp file or folder anywhere, the folder's
    parent included (index builds write their temp folder next to the target)."""
    manifests = list(folder.rglob("manifest.json"))
    assert manifests
    for path in manifests:
        assert json.loads(path.read_text())["status"] == "complete", path
    leftovers = [str(p) for p in folder.parent.rglob(TMP_PREFIX + "*")]
    assert not leftovers, leftovers
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]


# --------------------------------------------------------------------------- mine


def _mined_rows(folder: Path) -> list[dict]:
    """The rows of ``pairs.jsonl``, checked against the saved datasets folder (same rows)."""
    import datasets

    rows = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
    saved = datasets.load_from_disk(str(folder / "dataset")).to_list()
    assert len(saved) == len(rows)
    for row, disk in zip(rows, saved):
        assert (disk["query_id"], disk["positive_id"], disk["negative_ids"]) == (row["query_id"], row["positive_id"], row["negative_ids"])
        np.testing.assert_allclose(disk["negative_scores"], row["negative_scores"], atol=1e-6)
    return rows


def _assert_same_rows(expected: list[dict], got: list[dict]) -> None:
    assert [(r["query_id"], r["positive_id"], r["negative_ids"], r["negative_ranks"]) for r in got] == [
        (r["query_id"], r["positive_id"], r["negative_ids"], r["negative_ranks"]) for r in expected
    ]
    np.testing.assert_allclose([r["positive_score"] for r in got], [r["positive_score"] for r in expected], atol=1e-5)
    np.testing.assert_allclose(
        np.concatenate([r["negative_scores"] for r in got]), np.concatenate([r["negative_scores"] for r in expected]), atol=1e-5
    )


def test_killed_mine_resumes_to_the_same_rows(tmp_path, tiny_model_dir):
    beir = write_synthetic_beir(tmp_path / "beir", n_docs=400, n_train=200, n_test=10)
    config = tmp_path / "mine.yaml"
    # no relative margin: a random model scores everything alike, and the margin would leave
    # most rows without negatives -- nothing to compare
    config.write_text("relative_margin: null\nnum_negatives: 4\nrange_max: 20\n")
    out = {name: tmp_path / name / "mined" for name in "abc"}

    def args(folder: Path) -> list[str]:
        return ["mine", "--pairs", f"{beir}:train", "--model", tiny_model_dir, "--config", str(config), "--out", str(folder)]

    logs = tmp_path / "logs"

    def straight_then_random_kills() -> str:
        t0 = time.perf_counter()
        rc, cpu = _launch(_cli(args(out["a"])), _env(tmp_path / "cache-a"), logs / "a.log")
        wall = time.perf_counter() - t0
        _ok(rc, logs / "a.log")
        # every launch into b, the resume included, gets an empty cache: kills can land in the encoding
        events = _random_kills(_cli(args(out["b"])), lambda i: _env(tmp_path / f"cache-b{i}"), wall, SEED, logs, out["b"])
        _ok(_launch(_cli(args(out["b"])), _env(tmp_path / "cache-b-resume"), logs / "b.log")[0], logs / "b.log")
        return f"uninterrupted {wall:.1f} s ({cpu:.1f} cpu-s), kills {events}"

    def rename_kill() -> None:
        rc, _ = _launch(_kill_at_rename(tmp_path, out["c"] / "manifest.json", args(out["c"])), _env(tmp_path / "cache-c"), logs / "c-kill.log")
        assert rc == -signal.SIGKILL, (rc, (logs / "c-kill.log").read_text(errors="replace")[-3000:])
        # every artifact written but the manifest: a re-run must not take this for a finished run
        assert not (out["c"] / "manifest.json").exists() and (out["c"] / "pairs.jsonl").is_file()
        assert list(out["c"].glob(TMP_PREFIX + "manifest.json.*"))
        _ok(_launch(_cli(args(out["c"])), _env(tmp_path / "cache-c"), logs / "c.log")[0], logs / "c.log")

    print("mine:", _side_by_side(straight_then_random_kills, rename_kill)[0])

    expected = _mined_rows(out["a"])
    assert sum(len(r["negative_ids"]) for r in expected) > len(expected)  # something to compare
    manifest_a = json.loads((out["a"] / "manifest.json").read_text())
    for name in "bc":
        _assert_clean(out[name])
        _assert_same_rows(expected, _mined_rows(out[name]))
        manifest = json.loads((out[name] / "manifest.json").read_text())
        assert manifest["key"] == manifest_a["key"] and manifest["artifacts"] == manifest_a["artifacts"]
        assert manifest["metrics"]["filter_counts"] == manifest_a["metrics"]["filter_counts"]
        assert json.loads((out[name] / "qrels.json").read_text()) == json.loads((out["a"] / "qrels.json").read_text())


# --------------------------------------------------------------------------- index build


def _vectors(index_dir: Path) -> np.ndarray:
    import faiss

    index = faiss.read_index(str(index_dir / "searcher" / "index.faiss"))
    return index.reconstruct_n(0, index.ntotal)


def test_killed_index_build_resumes_to_the_same_index(tmp_path, tiny_model_dir):
    from embedtune.index import open_index, query_index

    beir = write_synthetic_beir(tmp_path / "beir", n_docs=400, n_train=0, n_test=10)
    out = {name: tmp_path / name / "index" for name in "abc"}

    def args(folder: Path) -> list[str]:
        # short passages: documents are split, so the passage store has positions and spans to get right
        return ["index", "build", "--model", tiny_model_dir, "--corpus", str(beir), "--max-tokens", "24", "--overlap", "4",
                "--out", str(folder)]

    logs = tmp_path / "logs"

    def straight_then_random_kills() -> str:
        t0 = time.perf_counter()
        rc, cpu = _launch(_cli(args(out["a"])), _env(tmp_path / "cache-a"), logs / "a.log")
        wall = time.perf_counter() - t0
        _ok(rc, logs / "a.log")
        # launches into b share a's warm cache: the usual re-run after a crash
        events = _random_kills(_cli(args(out["b"])), lambda i: _env(tmp_path / "cache-a"), wall, SEED + 1, logs, out["b"].parent)
        _ok(_launch(_cli(args(out["b"])), _env(tmp_path / "cache-a"), logs / "b.log")[0], logs / "b.log")
        return f"uninterrupted {wall:.1f} s ({cpu:.1f} cpu-s), kills {events}"

    def rename_kill() -> None:
        # killed at the rename of the finished temp folder into place; this chain encodes from scratch
        rc, _ = _launch(_kill_at_rename(tmp_path, out["c"], args(out["c"])), _env(tmp_path / "cache-c"), logs / "c-kill.log")
        assert rc == -signal.SIGKILL, (rc, (logs / "c-kill.log").read_text(errors="replace")[-3000:])
        assert not out["c"].exists()
        (finished_temp,) = out["c"].parent.glob(f"{TMP_PREFIX}index.*")
        assert (finished_temp / "manifest.json").is_file()
        _ok(_launch(_cli(args(out["c"])), _env(tmp_path / "cache-c"), logs / "c.log")[0], logs / "c.log")

    print("index build:", _side_by_side(straight_then_random_kills, rename_kill)[0])

    expected = open_index(out["a"])
    queries = [line["text"] for line in map(json.loads, (beir / "queries.jsonl").read_text().splitlines())][:5]
    expected_hits = query_index(expected, queries, k=5)
    assert expected.count > 400  # some documents were split
    for name in "bc":
        _assert_clean(out[name])
        got = open_index(out[name])  # checks the manifest, every file's sha256 and the model fingerprint
        assert got.searcher.ids == expected.searcher.ids
        assert got.manifest["key"] == expected.manifest["key"] and got.info == expected.info
        assert (out[name] / "passages.jsonl").read_bytes() == (out["a"] / "passages.jsonl").read_bytes()
        np.testing.assert_allclose(_vectors(out[name]), _vectors(out["a"]), atol=1e-6)
        for want, hits in zip(expected_hits, query_index(got, queries, k=5)):
            assert [h.passage_id for h in hits] == [h.passage_id for h in want]
            np.testing.assert_allclose([h.score for h in hits], [h.score for h in want], atol=1e-5)
        got.passages.close()
    expected.passages.close()
