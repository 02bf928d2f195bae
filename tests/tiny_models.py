"""Tiny random models built offline for tests (a few seconds, no downloads)."""

from __future__ import annotations

import string
from pathlib import Path

VOCAB_WORDS = (
    "the a an of to in and or is are was be for on with as by at from this that it not no "
    "protein cell cells gene genes cancer risk patients study studies effect effects disease "
    "treatment dose blood heart brain liver vitamin diet food fat sugar salt water acid fish "
    "increase decrease reduce reduced high low level levels result results data model models "
    "search index query queries document documents passage passages vector vectors embedding "
    "train training test tests loss batch negative negatives positive positives score scores "
    "function returns array value values number numbers string list file files path name "
    "python numpy torch tensor matrix sum mean sort random seed error errors type types"
).split()


def _wordpiece_tokenizer(vocab: list[str]):
    """A BERT WordPiece tokenizer over ``vocab``, built from its parts with ``tokenizers``.

    ``BertTokenizerFast(vocab_file=...)`` under transformers 5 ignores the file and yields a
    5-token vocabulary: every word became [UNK] and unrelated texts got cosine 1.0.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    ids = {token: i for i, token in enumerate(vocab)}
    tok = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    return BertTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
    )


def build_tiny_bert(folder: Path, *, hidden: int = 32, layers: int = 2, seed: int = 0, max_len: int = 128) -> Path:
    """A random BERT (hidden 32, 2 layers) + WordPiece tokenizer, saved as a
    sentence-transformers folder with safetensors weights and mean pooling + normalize."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel

    folder = Path(folder)
    raw = folder / "_hf"
    raw.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = specials + VOCAB_WORDS + chars + ["##" + c for c in string.ascii_lowercase + string.digits]
    tokenizer = _wordpiece_tokenizer(list(dict.fromkeys(vocab)))
    tokenizer.model_max_length = max_len
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=hidden * 2, max_position_embeddings=max_len,
    )
    BertModel(config).save_pretrained(raw, safe_serialization=True)
    tokenizer.save_pretrained(raw)
    transformer = Transformer(str(raw), max_seq_length=max_len)
    model = SentenceTransformer(modules=[transformer, Pooling(hidden, pooling_mode="mean"), Normalize()], device="cpu")
    out = folder / "model"
    model.save(str(out), safe_serialization=True)
    return out
