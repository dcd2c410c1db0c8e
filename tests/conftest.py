"""Tiny random models built from transformers config classes (no downloads), shared by the tests."""
from __future__ import annotations

import os

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    MPNetConfig,
    RobertaConfig,
)

FUZZ_SCALE = int(os.environ.get("MEMTUNE_FUZZ_SCALE", "1"))
"""Multiplies every property test's number of examples: MEMTUNE_FUZZ_SCALE=20 for a fuzz campaign (docs/reliability.md)."""

VOCAB = 96
TINY = dict(hidden_size=32, num_attention_heads=4, intermediate_size=48, num_hidden_layers=3)

CONFIGS = {
    "bert": lambda: BertConfig(vocab_size=VOCAB, max_position_embeddings=64, **TINY),
    "roberta": lambda: RobertaConfig(vocab_size=VOCAB, max_position_embeddings=66, pad_token_id=1, **TINY),
    "mpnet": lambda: MPNetConfig(vocab_size=VOCAB, max_position_embeddings=66, pad_token_id=1, **TINY),
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=3, n_head=4, n_inner=48),
    "llama": lambda: LlamaConfig(vocab_size=VOCAB, num_key_value_heads=2, max_position_embeddings=64, **TINY),
}
ENCODERS = ("bert", "roberta", "mpnet")
DECODERS = ("gpt2", "llama")
ARCHS = ENCODERS + DECODERS


def tiny_model(arch: str, head: str = "auto", seed: int = 0, **config_overrides):
    """A random tiny model: sequence classification for encoders, causal LM for decoders (by default)."""
    torch.manual_seed(seed)
    config = CONFIGS[arch]()
    for k, v in config_overrides.items():
        setattr(config, k, v)
    if head == "auto":
        head = "seq" if arch in ENCODERS else "lm"
    if head == "seq":
        config.num_labels = 3
        if arch in DECODERS:
            config.pad_token_id = 0
        model = AutoModelForSequenceClassification.from_config(config)
    elif head == "token":
        config.num_labels = 5
        model = AutoModelForTokenClassification.from_config(config)
    else:
        model = AutoModelForCausalLM.from_config(config)
    return model.eval()


def batch(arch: str, batch_size: int = 2, length: int = 7, pad: str | None = None, seed: int = 1):
    """Random token ids (avoiding the pad ids) and an attention mask; ``pad`` = 'left'/'right' pads row 0."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch_size, length), generator=g)
    mask = torch.ones_like(ids)
    if pad == "right":
        mask[0, -3:] = 0
    elif pad == "left":
        mask[0, :3] = 0
    ids = ids.masked_fill(mask == 0, 1 if arch in ("roberta", "mpnet") else 0)
    return {"input_ids": ids, "attention_mask": mask}


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and several threads crawl on a busy machine); a module uses it
    with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param
