"""Architecture inference: the layout read off a model's structure, over many model types (tiny random configs)."""
from __future__ import annotations

import copy

import pytest
import torch
import transformers as T

import memtune
from memtune.arch import ARCHITECTURES, ArchSpec, infer_arch
from memtune.errors import ArchitectureError

TINY = dict(hidden_size=32, num_attention_heads=4, intermediate_size=48, num_hidden_layers=2, vocab_size=96)
GQA = dict(TINY, num_key_value_heads=2)

ENCODER_CONFIGS = {
    "bert": lambda: T.BertConfig(**TINY),
    "roberta": lambda: T.RobertaConfig(pad_token_id=1, **TINY),
    "xlm-roberta": lambda: T.XLMRobertaConfig(pad_token_id=1, **TINY),
    "electra": lambda: T.ElectraConfig(embedding_size=32, **TINY),
    "distilbert": lambda: T.DistilBertConfig(dim=32, n_heads=4, hidden_dim=48, n_layers=2, vocab_size=96),
    "deberta-v2": lambda: T.DebertaV2Config(**TINY),
    "t5": lambda: T.T5Config(d_model=32, num_heads=4, d_ff=48, num_layers=2, d_kv=8, vocab_size=96),
}
DECODER_CONFIGS = {
    "gpt2": lambda: T.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_inner=48, vocab_size=96, n_positions=64),
    "llama": lambda: T.LlamaConfig(**GQA),
    "mistral": lambda: T.MistralConfig(**GQA),
    "qwen2": lambda: T.Qwen2Config(**GQA),
    "qwen3": lambda: T.Qwen3Config(head_dim=8, **GQA),
    "gemma": lambda: T.GemmaConfig(head_dim=8, **GQA),
    "phi": lambda: T.PhiConfig(**TINY),
    "gpt_neox": lambda: T.GPTNeoXConfig(**TINY),
    "falcon": lambda: T.FalconConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, vocab_size=96),
    "opt": lambda: T.OPTConfig(hidden_size=32, num_attention_heads=4, ffn_dim=48, num_hidden_layers=2, vocab_size=96,
                               word_embed_proj_dim=32, max_position_embeddings=64),
    "gptj": lambda: T.GPTJConfig(n_embd=32, n_head=4, n_layer=2, vocab_size=96, rotary_dim=4, n_positions=64),
    "starcoder2": lambda: T.Starcoder2Config(**GQA),
    "olmo": lambda: T.OlmoConfig(**TINY),
    "mixtral": lambda: T.MixtralConfig(num_local_experts=2, **GQA),
}
NO_INTERFACE = {"deberta-v2", "falcon", "gptj"}  # attention computed in the model's own code: no prefix seam
ALL = {**ENCODER_CONFIGS, **DECODER_CONFIGS}


def tiny(model_type: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = ALL[model_type]()
    if model_type == "t5":
        return T.T5EncoderModel(config).eval()
    if model_type in DECODER_CONFIGS:
        return T.AutoModelForCausalLM.from_config(config).eval()
    config.num_labels = 3
    return T.AutoModelForSequenceClassification.from_config(config).eval()


def ids(n: int = 2, length: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(3, 90, (n, length), generator=g), "attention_mask": torch.ones(n, length, dtype=torch.long)}


def output(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


def randomise(model) -> None:
    """Non-zero memory weights (a fresh memory is a no-op), as after training."""
    with torch.no_grad():
        for p in memtune.tuning.method_parameters(model):
            p.normal_(0, 0.3)


def test_at_least_fifteen_model_types_are_covered():
    assert len(ALL) >= 15 and {"electra", "distilbert", "gpt_neox", "t5", "phi", "gemma", "falcon"} <= set(ALL)
    assert not set(ALL) & set(ARCHITECTURES)  # every one of them is inferred, none from the table


OLD_TABLE = {  # the table entries memtune carried before inference: inference must reproduce them
    "bert": ArchSpec("encoder.layer", "output.dropout", "attention.self", "intermediate", "query", "value", "key",
                     positions="embeddings.position_embeddings"),
    "gpt2": ArchSpec("h", "mlp", "attn", "mlp", "c_attn", "c_attn", norm="pre", positions="wpe"),
    "llama": ArchSpec("layers", "mlp", "self_attn", "mlp", "q_proj", "v_proj", "k_proj", norm="pre", positions="rotary_emb"),
}  # fmt: skip
OLD_TABLE.update(roberta=OLD_TABLE["bert"], **{"xlm-roberta": OLD_TABLE["bert"]}, mistral=OLD_TABLE["llama"], qwen2=OLD_TABLE["llama"])


@pytest.mark.parametrize("model_type", sorted(OLD_TABLE))
def test_inference_reproduces_the_former_table_entries(model_type):
    assert infer_arch(tiny(model_type)) == OLD_TABLE[model_type]


EXPECTED = {  # (layers, self-attention, query / key / value projections, FFN output, FFN input), read off the model code
    "electra": ("encoder.layer", "attention.self", ("query", "key", "value"), "output.dropout", "intermediate"),
    "distilbert": ("transformer.layer", "attention", ("q_lin", "k_lin", "v_lin"), "ffn", "ffn"),
    "deberta-v2": ("encoder.layer", "attention.self", ("query_proj", "key_proj", "value_proj"), "output.dropout", "intermediate"),
    "t5": ("encoder.block", "layer.0.SelfAttention", ("q", "k", "v"), "layer.1.DenseReluDense", "layer.1.DenseReluDense"),
    "gpt_neox": ("layers", "attention", ("query_key_value", None, "query_key_value"), "mlp", "mlp"),
    "falcon": ("h", "self_attention", ("query_key_value", None, "query_key_value"), "mlp", "mlp"),
    "opt": ("decoder.layers", "self_attn", ("q_proj", "k_proj", "v_proj"), "fc2", "fc1"),
    "mixtral": ("layers", "self_attn", ("q_proj", "k_proj", "v_proj"), "mlp", "mlp"),  # the MoE block is the FFN
}


@pytest.mark.parametrize("model_type", sorted(EXPECTED))
def test_inferred_layouts_name_the_modules_of_the_model_code(model_type):
    spec = infer_arch(tiny(model_type))
    got = (spec.layers, spec.self_attention, (spec.query_proj, spec.key_proj, spec.value_proj), spec.ffn_output, spec.ffn_input)
    assert got == EXPECTED[model_type]


@pytest.mark.parametrize("model_type", sorted(ALL))
def test_memory_on_an_inferred_layout(model_type, tmp_path):
    """No-op at attach, gradients into every memory parameter, save/load, and cached generation for decoders."""
    model = tiny(model_type)
    spec = infer_arch(model)
    assert spec.prefix_seam == ("none" if model_type in NO_INTERFACE else "interface")
    inputs = ids()
    before = output(model, inputs)
    memtune.attach(model, memtune.recipe("mt-f", budget=8))
    assert torch.equal(output(model, inputs), before)  # W_o = 0: an exact no-op
    model.train()
    out = model(**inputs)
    (out.logits if model_type != "t5" else out.last_hidden_state).float().pow(2).mean().backward()
    method = memtune.methods_of(model)["memory"]
    assert len(method.blocks) == 2
    for name, p in method.named_parameters():
        assert p.grad is not None, name
    assert torch.count_nonzero(method.blocks["0"].out.weight.grad) > 0
    model.eval()
    randomise(model)
    tuned = output(model, inputs)
    assert not torch.allclose(tuned, before)
    memtune.save(model, tmp_path / "ckpt")
    fresh = tiny(model_type)
    memtune.load(fresh, tmp_path / "ckpt")
    torch.testing.assert_close(output(fresh, inputs), tuned)
    if model_type in DECODER_CONFIGS:
        prompt = ids(2, 5)
        kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
        with torch.no_grad():
            cached = model.generate(**prompt, use_cache=True, **kw)
            uncached = model.generate(**prompt, use_cache=False, **kw)
        assert torch.equal(cached, uncached)


@pytest.mark.parametrize("model_type", sorted(set(ALL) - NO_INTERFACE))
def test_prefix_and_memory_on_an_inferred_layout(model_type):
    """MT-MF (prefix through the attention interface + memory) changes the output; decoders generate with the
    cache exactly as without."""
    model = tiny(model_type)
    inputs = ids()
    before = output(model, inputs)
    memtune.attach(model, memtune.recipe("mt-mf", budget=8))
    randomise(model)
    assert not torch.allclose(output(model, inputs), before)
    if model_type in DECODER_CONFIGS:
        prompt = ids(2, 5)
        kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
        with torch.no_grad():
            assert torch.equal(model.generate(**prompt, use_cache=True, **kw), model.generate(**prompt, use_cache=False, **kw))


@pytest.mark.parametrize("model_type", sorted(NO_INTERFACE))
def test_a_prefix_is_refused_clearly_where_attention_has_no_seam(model_type):
    model = tiny(model_type)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ArchitectureError, match="attention interface"):
        memtune.attach(model, memtune.recipe("mt-mf", budget=8))
    assert not hasattr(model, "memtune") and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_an_unreadable_layout_says_what_is_missing_and_how_to_point_at_it():
    torch.manual_seed(0)
    model = T.AutoModelForSequenceClassification.from_config(T.AlbertConfig(embedding_size=16, **TINY))  # one shared layer
    with pytest.raises(ArchitectureError, match=r"no list of 2 identical blocks.*ArchSpec\(layers, ffn_output"):
        memtune.attach(model, memtune.recipe("mt-f", budget=8))


REFUSED = {  # layouts inference must refuse with a message rather than hook the wrong module (found in review)
    "mobilebert": (lambda: T.AutoConfig.for_model("mobilebert", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=64, vocab_size=96, embedding_size=16, intra_bottleneck_size=16, true_hidden_size=16),
                   "no feed-forward module"),  # its `ffn` is a ModuleList, never called: a hook there would never fire
    "bloom": (lambda: T.BloomConfig(hidden_size=32, n_head=4, n_layer=2, vocab_size=96), "adds the residual itself"),
    "mpt": (lambda: T.AutoConfig.for_model("mpt", d_model=32, n_heads=4, n_layers=2, vocab_size=96), "adds the residual itself"),
    "bart-2-1": (lambda: T.BartConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, vocab_size=96), "stacks of blocks under decoder, encoder"),
    "t5-2-3": (lambda: T.T5Config(d_model=32, num_heads=4, d_ff=48, num_layers=2, num_decoder_layers=3, d_kv=8, vocab_size=96),
               "stacks of blocks under decoder, encoder"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_layouts_that_would_be_misread_are_refused_with_a_message(name):
    make, message = REFUSED[name]
    torch.manual_seed(0)
    model = T.AutoModel.from_config(make())
    with pytest.raises(ArchitectureError, match=message):
        memtune.attach(model, memtune.recipe("mt-f", budget=8))
    assert not hasattr(model, "memtune")
