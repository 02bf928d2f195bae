"""Fine-tune an embedding model on mined (query, positive, hard negatives) rows.

Built on sentence-transformers' ``SentenceTransformerTrainer`` (which is the transformers
``Trainer``): its losses, its no-duplicates batch sampler, its ``InformationRetrievalEvaluator``
for dev nDCG@10 at each evaluation step, its checkpoints and resume. This module adds what the
trainer lacks for a retrieval pipeline: turning mined rows into trainer columns (``anchor``,
``positive``, ``negative_1..n``; :mod:`.rows`), a dev split that never touches the test split (a
BEIR dev split, or a seeded held-out slice of the training queries evaluated against the full
corpus; :mod:`.dev`), one round on the trainer (:mod:`.trainer`, :mod:`.checkpoints`), the run
folder (manifest, ``training_curve.json`` + PNG (:mod:`.curve`), the final model saved atomically
into ``DIR/model``; :mod:`.stage`), and rounds of iterative re-mining (ANCE-style ``rounds``; the
caller supplies the re-mining, see ``pipeline.remining``). Losses: :mod:`embedtune.losses`.

Run folder ``DIR``::

    DIR/manifest.json          stage "train": config, input hashes, versions, best dev score, curve
    DIR/model/                 the tuned sentence-transformers folder (safetensors), written atomically
    DIR/checkpoints/           the trainer's checkpoints (resume after a crash with --resume)
    DIR/training_curve.json    training loss and dev nDCG@10 per logged / evaluation step
    DIR/training_curve.png
    DIR/round-<r>/             with rounds > 1: the re-mined data and checkpoints of round r

Multi-GPU (data parallel, DDP) -- launch the same command under torchrun or accelerate::

    torchrun --nproc_per_node 4 -m embedtune train --model minilm --data MINED --out DIR
    accelerate launch --num_processes 4 -m embedtune train --model minilm --data MINED --out DIR

``batch_size`` is per device (global batch = batch_size x processes). With ``loss.
gather_across_devices`` (default) every device's queries are scored against the documents of the
whole global batch, so in-batch negatives grow with the number of devices and the loss equals a
single-process run with the global batch (checked on CPU with gloo in ``tests/test_ddp.py``).
Only rank 0 writes the manifest, the curve and the final model. On CPU the gloo backend is used.
The CUDA path (device placement, bf16/fp16 autocast, larger batches) is written but has not been
run on a GPU here.
"""

from .config import DevConfig, TrainConfig
from .stage import train_model

__all__ = ["DevConfig", "TrainConfig", "train_model"]
