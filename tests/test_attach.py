"""attach / detach: trainability, restoration, devices and dtypes, checkpointing, composition and bad input."""
import copy
import re

import pytest
import torch

import memtune
from memtune.compat import enable_activation_checkpointing
from conftest import DECODERS, ENCODERS, batch, logits, tiny_model

RECIPES = ["mt-f", "mt-m", "mt-mf"]


def train_step(model, inputs, lr=1e-2):
    model.train()
    out = model(**inputs, labels=inputs["input_ids"] if model.config.model_type in DECODERS else torch.tensor([0, 2]))
    out.loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= lr * p.grad.sign()
    model.zero_grad()
    model.eval()
    return out.loss.item()


@pytest.mark.parametrize("name", RECIPES)
def test_gradients_reach_only_tuned_parameters(arch, name):
    model = tiny_model(arch)
    memtune.attach(model, memtune.recipe(name, budget=8))
    state = model.memtune
    tuned = {f"memtune.{n}" for n, _ in state.named_parameters()} | set(state.head_names)
    inputs = batch(arch)
    model(**inputs, labels=inputs["input_ids"] if arch in DECODERS else torch.tensor([0, 1])).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad <= tuned
    assert {n for n, p in model.named_parameters() if p.requires_grad} == tuned
    if name != "mt-f":  # the prefix gets gradient at once (memory's W_o starts at zero, so only W_o does)
        assert any(n.startswith("memtune.methods.prefix") for n in with_grad)
    assert any(n.startswith("memtune.") for n in with_grad)


@pytest.mark.parametrize("name", RECIPES)
def test_training_changes_only_tuned_parameters_and_detach_restores_bit_for_bit(arch, name):
    model = tiny_model(arch)
    original = copy.deepcopy(model.state_dict())
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    inputs = batch(arch)
    plain = logits(model, inputs)
    memtune.attach(model, memtune.recipe(name, budget=8))
    for _ in range(3):
        train_step(model, inputs)
    tuned = logits(model, inputs)
    assert not torch.allclose(plain, tuned)
    head = set(model.memtune.head_names)
    for n, p in model.named_parameters():
        if not n.startswith("memtune.") and n not in head:
            assert torch.equal(p, original[n]), n
    memtune.detach(model)
    assert not hasattr(model, "memtune")
    assert model.state_dict().keys() == original.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in original.items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert "memtune" not in str(model.config._attn_implementation)
    assert torch.equal(logits(model, inputs), plain)


def test_train_layer_norms_option_counts_and_restores():
    model = tiny_model("bert")
    before = model.bert.encoder.layer[0].output.LayerNorm.weight.clone()
    memtune.attach(model, memtune.MemoryConfig(slot_dim=8, train_layer_norms=True))
    names = model.memtune.backbone_names["memory"]
    assert "bert.encoder.layer[0]".replace("[0]", ".0") + ".output.LayerNorm.weight" in names
    assert "bert.embeddings.LayerNorm.bias" in names
    report = memtune.parameter_report(model)
    ln = sum(p.numel() for n, p in model.named_parameters() if n in names)
    assert report["methods"]["memory"]["tuned"] == sum(p.numel() for p in model.memtune.parameters()) + ln
    train_step(model, batch("bert"))
    assert not torch.equal(model.bert.encoder.layer[0].output.LayerNorm.weight, before)
    memtune.detach(model)
    assert torch.equal(model.bert.encoder.layer[0].output.LayerNorm.weight, before)


def test_lm_head_is_not_trained_by_default_but_task_heads_are():
    lm = memtune.attach(tiny_model("llama"), memtune.recipe("mt-f", budget=8))  # untied lm_head
    assert lm.memtune.head_names == [] and not lm.lm_head.weight.requires_grad
    cls = memtune.attach(tiny_model("llama", head="seq"), memtune.recipe("mt-f", budget=8))
    assert cls.memtune.head_names == ["score.weight"] and cls.score.weight.requires_grad
    frozen = memtune.attach(tiny_model("bert"), memtune.recipe("mt-f", budget=8), train_head=False)
    assert not frozen.classifier.weight.requires_grad


@pytest.mark.parametrize("arch", ENCODERS)
def test_token_classification_head(arch):
    model = memtune.attach(tiny_model(arch, head="token"), memtune.recipe("mt-mf", budget=8))
    inputs = batch(arch, pad="right")
    assert logits(model, inputs).shape == (2, 7, 5)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_bfloat16_model_gets_bfloat16_methods(arch):
    model = tiny_model(arch).to(torch.bfloat16)
    memtune.attach(model, memtune.recipe("mt-mf", budget=8))
    assert {p.dtype for p in model.memtune.parameters()} == {torch.bfloat16}
    out = logits(model, batch(arch))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(arch, reentrant):
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(arch, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        memtune.attach(model, memtune.recipe("mt-mf", budget=8))
        torch.nn.init.normal_(model.memtune.methods["memory"].blocks["1"].out.weight)
        if checkpointing:
            enable_activation_checkpointing(model, use_reentrant=reentrant)
        model.train()
        inputs = batch(arch)
        labels = inputs["input_ids"] if arch in DECODERS else torch.tensor([0, 1])
        model(**inputs, labels=labels).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6)


def test_memory_on_some_layers_and_two_disjoint_configs():
    model = tiny_model("bert")
    memtune.attach(model, [memtune.MemoryConfig(slot_dim=4, layers=[0]), memtune.MemoryConfig(slot_dim=8, layers=[2])])
    assert list(model.memtune.methods) == ["memory", "memory_1"]
    assert list(model.memtune.methods["memory_1"].blocks) == ["2"]


def test_model_moves_with_its_methods():
    model = memtune.attach(tiny_model("bert"), memtune.recipe("mt-mf", budget=8))
    model.to(torch.float64)
    assert {p.dtype for p in model.memtune.parameters()} == {torch.float64}
    assert logits(model, batch("bert")).dtype == torch.float64


# ---- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: memtune.MemoryConfig(num_slots=0), "num_slots"),
        (lambda: memtune.MemoryConfig(slot_dim=-4), "slot_dim"),
        (lambda: memtune.MemoryConfig(slot_dim=2.5), "slot_dim"),
        (lambda: memtune.MemoryConfig(init_std=0), "init_std"),
        (lambda: memtune.PrefixConfig(prefix_length=0), "prefix_length"),
        (lambda: memtune.PrefixConfig(hidden=0), "hidden"),
        (lambda: memtune.PrefixConfig(dropout=1.5), "dropout"),
        (lambda: memtune.PrefixConfig(layers=[]), "layers"),
        (lambda: memtune.PrefixConfig(layers=[1, 1]), "twice"),
        (lambda: memtune.recipe("mt-x"), "known recipes: ft, bitfit, adapter, lora, prefix, mam, unipelt, mt-f, mt-m, mt-mf"),
        (lambda: memtune.recipe("mt-mf", budget=0), "budget"),
        (lambda: memtune.recipe("mt-mf", budget=1), "budget >= 2"),
        (lambda: memtune.recipe("mt-f", budget="32"), "budget"),
    ],
)
def test_nonsense_hyperparameters_are_rejected(make, message):
    with pytest.raises(memtune.ConfigError, match=message):
        make()


def test_errors_at_attach_leave_the_model_untouched():
    model = tiny_model("bert")
    reference = copy.deepcopy(model.state_dict())
    with pytest.raises(memtune.ConfigError, match="exceeds the model's hidden size d=32"):
        memtune.attach(model, memtune.MemoryConfig(slot_dim=64))
    with pytest.raises(memtune.ConfigError, match="layers \\[7\\] do not exist; the model has 3 layers"):
        memtune.attach(model, memtune.PrefixConfig(layers=[0, 7]))
    with pytest.raises(memtune.MemtuneError, match="both put a 'prefix' method on layer 1"):
        memtune.attach(model, [memtune.PrefixConfig(layers=[0, 1]), memtune.PrefixConfig(layers=[1])])
    with pytest.raises(memtune.MemtuneError, match="needs a MethodConfig"):
        memtune.attach(model, "mt-mf")
    assert not hasattr(model, "memtune") and all(not m._forward_hooks for m in model.modules())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.items())
    assert all(p.requires_grad for p in model.parameters())


def test_attaching_twice_is_refused():
    model = memtune.attach(tiny_model("bert"), memtune.recipe("mt-f"))
    with pytest.raises(memtune.MemtuneError, match="already has memtune methods attached; call memtune.detach"):
        memtune.attach(model, memtune.recipe("mt-f"))


def test_not_a_transformers_model():
    with pytest.raises(memtune.MemtuneError, match="needs a transformers PreTrainedModel"):
        memtune.attach(torch.nn.Linear(3, 3), memtune.recipe("mt-f"))
    with pytest.raises(memtune.MemtuneError, match="no memtune methods attached"):
        memtune.detach(tiny_model("bert"))


def test_an_explicit_arch_spec_overrides_the_inferred_layout():
    from transformers import DistilBertConfig, DistilBertModel

    model = DistilBertModel(DistilBertConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, hidden_dim=48))
    assert memtune.infer_arch(model).ffn_output == "ffn"  # inferred: no table entry needed
    spec = memtune.ArchSpec(
        layers="transformer.layer", ffn_output="ffn.dropout", self_attention="attention",
        ffn_input="ffn", query_proj="q_lin", value_proj="v_lin",
    )
    memtune.attach(model, memtune.recipe("mt-mf", budget=8), arch=spec)  # pointed at modules explicitly
    assert memtune.tuning.state_of(model).arch is spec
    assert len(model.transformer.layer[0].ffn.dropout._forward_hooks) == 1 and not model.transformer.layer[0].ffn._forward_hooks
    ids = torch.randint(0, 50, (2, 5))
    assert model(input_ids=ids).last_hidden_state.shape == (2, 5, 32)


def test_wrong_module_path_is_explained():
    spec = memtune.ArchSpec(layers="encoder.layer", ffn_output="output.nonexistent", self_attention="attention.self",
                            ffn_input="intermediate", query_proj="query", value_proj="value")
    model = tiny_model("bert")
    with pytest.raises(memtune.ArchitectureError, match="'output.nonexistent' \\(the FFN output\\)"):
        memtune.attach(model, memtune.recipe("mt-f", budget=8), arch=spec)
    assert not hasattr(model, "memtune")


def test_flash_attention_models_get_a_clear_message():
    model = tiny_model("llama")
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(memtune.ArchitectureError, match="attn_implementation='sdpa'"):
        memtune.attach(model, memtune.recipe("prefix", budget=8))
    assert not hasattr(model, "memtune")


def test_deepcopy_gives_an_independent_tuned_model():
    model = memtune.attach(tiny_model("bert"), memtune.recipe("mt-mf", budget=8))
    torch.nn.init.normal_(model.memtune.methods["memory"].blocks["0"].out.weight)
    inputs = batch("bert")
    expected = logits(model, inputs)
    twin = copy.deepcopy(model)
    torch.testing.assert_close(logits(twin, inputs), expected)
    twin(**inputs, labels=torch.tensor([0, 1])).loss.backward()
    assert twin.memtune.methods["memory"].blocks["0"].out.weight.grad is not None
    assert model.memtune.methods["memory"].blocks["0"].out.weight.grad is None
    memtune.detach(twin)
    assert "memtune" not in twin.config._attn_implementation
    assert "memtune" in model.config._attn_implementation  # the original keeps its methods
    torch.testing.assert_close(logits(model, inputs), expected)


def test_layer_norms_trained_by_two_configs_are_counted_once():
    model = memtune.attach(
        tiny_model("bert"),
        [memtune.MemoryConfig(slot_dim=4, layers=[0], train_layer_norms=True),
         memtune.MemoryConfig(slot_dim=4, layers=[2], train_layer_norms=True)],
    )
    report = memtune.parameter_report(model)
    assert report["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


def _config_fields():
    import dataclasses
    import typing

    from memtune.methods import METHODS

    for cls in METHODS.values():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] in (bool, float, int, str):
                yield pytest.param(cls, f.name, hints[f.name], id=f"{cls.__name__}.{f.name}")


BAD_VALUES = {
    bool: ["no", 1, 0, None, "False"],
    float: [float("nan"), float("inf"), float("-inf"), "1", None, True],
    int: [2.5, "3", None, True],
    str: [1, None, ["relu"]],
}


@pytest.mark.parametrize("cls,name,kind", list(_config_fields()))
def test_every_config_field_refuses_values_of_the_wrong_kind(cls, name, kind):
    """On/off flags take only True/False (``bias='no'`` once switched biases on), numbers only finite numbers."""
    for value in BAD_VALUES[kind]:
        with pytest.raises(memtune.ConfigError, match=rf"{cls.__name__}\.{name}\b.*{re.escape(repr(value))}"):
            cls(**{name: value})


def test_training_settings_refuse_non_finite_numbers():
    from memtune.settings import TrainSettings

    base = dict(epochs=1, batch_size=1, learning_rate=1e-3, max_length=8)
    for name, value in [("learning_rate", float("inf")), ("learning_rate", float("nan")), ("weight_decay", float("nan")),
                        ("weight_decay", float("inf")), ("warmup_ratio", float("nan"))]:  # fmt: skip
        with pytest.raises(memtune.ConfigError, match=name):
            TrainSettings(**{**base, name: value})


def test_parameter_report_of_a_plain_module_gets_a_message():
    with pytest.raises(memtune.MemtuneError, match="parameter_report needs a transformers model, got Linear"):
        memtune.parameter_report(torch.nn.Linear(2, 2))


def test_lora_targets_and_adapter_activation_of_the_wrong_type_get_messages():
    with pytest.raises(memtune.ConfigError, match="LoraConfig.targets must be a non-empty list"):
        memtune.LoraConfig(targets=7)
    with pytest.raises(memtune.ConfigError, match="AdapterConfig.activation must be a string"):
        memtune.AdapterConfig(activation=[1])


def test_methods_too_large_for_memory_are_refused_before_any_allocation(monkeypatch):
    model = tiny_model("bert")
    state = copy.deepcopy(model.state_dict())
    import memtune.tuning

    monkeypatch.setattr(memtune.tuning, "_available_bytes", lambda: 2**30)  # 1 GiB free
    with pytest.raises(memtune.ConfigError, match=r"would add 1,950,000,096 parameters \(7\.3 GiB.*1\.0 GiB this machine has free"):
        memtune.attach(model, memtune.recipe("adapter", budget=10**7))  # 3 layers x (2 x 32 x 10^7 weights + biases)
    assert not hasattr(model, "memtune") and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(memtune.ConfigError, match="LoraConfig.rank r=50 exceeds the model's hidden size d=32"):
        memtune.attach(model, memtune.recipe("lora", budget=100))


def test_a_meta_model_takes_methods_of_any_size_without_memory():
    """memtune params counts on the meta device: a budget of a million builds nothing in real memory."""
    from transformers import AutoModelForSequenceClassification

    config = tiny_model("bert").config
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    memtune.attach(model, memtune.recipe("adapter", budget=10**6))
    report = memtune.parameter_report(model)
    assert report["tuned"] == 3 * (2 * 32 * 10**6 + 10**6 + 32)  # 3 layers of W_down, W_up and their biases
    assert all(p.is_meta for p in memtune.tuning.method_parameters(model))
