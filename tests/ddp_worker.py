"""Trains a tiny BERT with memtune's Trainer wiring and saves the trained tensors (rank 0).

Run once plainly and once under ``torchrun --nproc_per_node 2`` (gloo): with the same global batch the
trained tensors must agree. Usage: python ddp_worker.py OUT.pt PER_PROCESS_BATCH OPTIMIZER
"""
import os
import sys
from types import SimpleNamespace

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast, set_seed

import memtune
from memtune.experiments.compare import finish_distributed
from memtune.train import TrainSettings, train_and_evaluate

WORDS = [f"w{i}" for i in range(60)]


def tokenizer():
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")


def examples(n, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 60, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        out.append(SimpleNamespace(text=" ".join(WORDS[i] for i in ids), text_pair=None, label=int(sum(ids) % 2)))
    return out


def main(out_path, batch_size, optimizer):
    set_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
    model = BertForSequenceClassification(config)
    memtune.attach(model, memtune.recipe("mt-mf", budget=8))
    task = SimpleNamespace(name="ddp-parity", kind="sentence", metric="accuracy", labels=("0", "1"))
    data = SimpleNamespace(task=task, train=examples(64, 1), valid=examples(16, 2), eval=examples(16, 3))
    settings = TrainSettings(epochs=2, batch_size=batch_size, learning_rate=1e-2, max_length=16, patience=5, optimizer=optimizer)
    result = train_and_evaluate(model, tokenizer(), data, settings, seed=0, output_dir=os.path.dirname(out_path))
    if int(os.environ.get("RANK", "0")) == 0:
        trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        torch.save({"tensors": trained, "eval": result.eval, "valid": result.valid}, out_path)
    finish_distributed()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
