"""Data-parallel training (DDP) on CPU: 2 processes with the gloo backend, launched by torchrun,
give the same loss and weights as one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from test_training import _max_diff, _weights, make_mined, trainable_model_dir, without_dropout  # noqa: F401 (fixture)

from embedtune.training import TrainConfig, train_model

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from embedtune.training import TrainConfig, train_model

    train_model(TrainConfig.model_validate(json.loads(sys.argv[3])), sys.argv[1], sys.argv[2], progress=False)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path, data, out, cfg: TrainConfig) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(_SCRIPT)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), str(script), str(data), str(out), cfg.model_dump_json(),
    ]
    proc = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _losses(manifest: dict) -> list[float]:
    return [p["loss"] for p in manifest["metrics"]["training_curve"]["rounds"][0]["loss"]]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path, trainable_model_dir):  # noqa: F811
    model = without_dropout(trainable_model_dir, tmp_path / "model")
    # q_i is also relevant to d_{i+1}: the known-positive mask has entries, and it must be built
    # from the gathered rows of both processes in the same order as the gathered embeddings.
    qrels = {f"q{i}": {f"d{i}": 1, f"d{i + 1}": 1} for i in range(32)}
    data = make_mined(tmp_path / "m", n_queries=32, negatives=1, distinct=True, qrels=qrels)
    # fp32: what is compared is the arithmetic of the split; bf16 rounds a half batch differently
    common = {"model": {"name": model}, "max_steps": 4, "learning_rate": 1e-3, "negatives_per_query": 1,
              "dev": {"enabled": False}, "logging_steps": 1, "precision": "fp32"}
    single = train_model(TrainConfig.model_validate({**common, "batch_size": 8}), data, tmp_path / "single", progress=False)
    assert single["metrics"]["rows"]["masked_in_batch_known_positives"] > 0

    ddp_cfg = TrainConfig.model_validate({**common, "batch_size": 4})  # per device: 2 x 4 = 8
    _torchrun(tmp_path, data, tmp_path / "ddp", ddp_cfg)
    ddp = json.loads((tmp_path / "ddp" / "manifest.json").read_text())
    assert ddp["status"] == "complete"  # written once, by rank 0
    assert _losses(ddp) == pytest.approx(_losses(single), abs=1e-4)
    assert _max_diff(_weights(tmp_path / "single" / "model"), _weights(tmp_path / "ddp" / "model")) < 1e-5

    # Without gathering, each process only sees its own 4 rows as in-batch negatives: a different
    # loss, so the agreement above is due to the gathering and not to something trivial.
    _torchrun(tmp_path, data, tmp_path / "local", ddp_cfg.model_copy(update={"loss": ddp_cfg.loss.model_copy(update={"gather_across_devices": False})}))
    local = json.loads((tmp_path / "local" / "manifest.json").read_text())
    assert abs(_losses(local)[0] - _losses(single)[0]) > 1e-2
