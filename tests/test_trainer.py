"""The HF Trainer trains exactly memtune's parameters (and the head), and memtune.save works after it."""
import torch
from transformers import Trainer, TrainingArguments

import memtune
from conftest import batch, logits, tiny_model


def test_trainer_updates_only_tuned_parameters(tmp_path):
    model = memtune.attach(tiny_model("bert"), memtune.recipe("mt-mf", budget=8))
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    tuned = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
    inputs = batch("bert", batch_size=8, length=6)
    rows = [{"input_ids": inputs["input_ids"][i], "attention_mask": inputs["attention_mask"][i], "labels": torch.tensor(i % 3)} for i in range(8)]
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=4, max_steps=4, learning_rate=1e-2,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=rows).train()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    changed = [n for n, p in model.named_parameters() if n in tuned and not torch.equal(p, tuned[n])]
    assert any(n.startswith("memtune.methods.prefix") for n in changed) and "classifier.weight" in changed
    model.eval()
    expected = logits(model, inputs)
    memtune.save(model, tmp_path / "ckpt")
    torch.testing.assert_close(logits(memtune.load(tiny_model("bert"), tmp_path / "ckpt"), inputs), expected, rtol=1e-5, atol=1e-6)
