"""A tiny random sentence encoder (2 BERT layers, 32 dimensions, the real tokenizer):
trains and embeds in milliseconds per step, for tests whose point is the code path."""

from __future__ import annotations

from pathlib import Path


def build_tiny_encoder(folder: Path, *, seed: int = 0, positions: int = 64,
                       max_seq_length: int = 32) -> str:
    """Save a randomly initialised encoder (mean pooling, no Normalize module) under
    ``folder`` and return its path; ``positions``: the most tokens it takes."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    from litpulse.core.settings import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=positions,
    )
    BertModel(config).save_pretrained(folder / "hf")
    tokenizer.save_pretrained(folder / "hf")
    word = Transformer(str(folder / "hf"), max_seq_length=max_seq_length)
    model = SentenceTransformer(modules=[word, Pooling(word.get_embedding_dimension())])
    model.save(str(folder / "encoder"))
    return str(folder / "encoder")


def build_overflowing_encoder(folder: Path, word: str) -> str:
    """The tiny encoder (:func:`build_tiny_encoder`) whose input embedding of ``word`` (one
    token of the real tokenizer) is ``inf``: a text holding it encodes to NaN, any other to
    a finite vector (an encoder that overflows on some input). Saved under ``folder``;
    returns its path."""
    import torch
    from sentence_transformers import SentenceTransformer

    tiny = build_tiny_encoder(folder / "tiny", max_seq_length=32)
    model = SentenceTransformer(tiny, device="cpu")
    token = model.tokenizer.convert_tokens_to_ids(word)
    with torch.no_grad():
        model[0].auto_model.embeddings.word_embeddings.weight[token] = float("inf")
    model.save(str(folder / "overflowing"))
    return str(folder / "overflowing")
