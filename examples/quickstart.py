"""Quickstart: MT-MF on the packaged MiniLM, a slice of SST-2, a plain PyTorch loop, save and load.

    python examples/quickstart.py                 # defaults: mt-mf, 1024 training sentences, 2 epochs
    python examples/quickstart.py --method mt-f --train-size 4096

Reads SST-2 from --data-dir (default: $MEMTUNE_DATA, else ../shared/data beside the project). The dev
split is the evaluation set; nothing here is tuned on it.
"""
from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForSequenceClassification

import memtune
from memtune.models import load_model, load_tokenizer


def read_sst2(path: Path) -> list[tuple[str, int]]:
    """GLUE SST-2 TSV: one header line, then sentence<TAB>label (columns by position)."""
    rows = []
    with path.open(encoding="utf-8") as f:
        next(f)
        for line_no, line in enumerate(f, start=2):
            sentence, _, label = line.rstrip("\n").rpartition("\t")
            if label not in ("0", "1"):
                raise SystemExit(f"{path}:{line_no}: expected a 0/1 label in the last column, got {label!r}")
            rows.append((sentence.strip(), int(label)))
    return rows


def data_dir(arg: str | None) -> Path:
    candidates = [arg, os.environ.get("MEMTUNE_DATA"), Path(__file__).resolve().parents[2] / "shared" / "data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "sst2" / "train.tsv").is_file():
            return Path(candidate)
    raise SystemExit(f"SST-2 not found: looked for sst2/train.tsv under {[str(c) for c in candidates if c]}; pass --data-dir")


def batches(rows, tokenizer, size, shuffle, seed=0):
    order = list(range(len(rows)))
    if shuffle:
        random.Random(seed).shuffle(order)
    for start in range(0, len(order), size):
        chunk = [rows[i] for i in order[start : start + size]]
        inputs = tokenizer([s for s, _ in chunk], padding=True, truncation=True, max_length=64, return_tensors="pt")
        yield inputs, torch.tensor([y for _, y in chunk])


@torch.no_grad()
def accuracy(model, rows, tokenizer) -> float:
    model.eval()
    correct = sum((model(**x).logits.argmax(-1) == y).sum().item() for x, y in batches(rows, tokenizer, 64, False))
    return 100.0 * correct / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="mt-mf")
    parser.add_argument("--budget", type=int, default=32)
    parser.add_argument("--train-size", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data-dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    root = data_dir(args.data_dir)
    train = read_sst2(root / "sst2" / "train.tsv")
    random.Random(args.seed).shuffle(train)
    train, dev = train[: args.train_size], read_sst2(root / "sst2" / "dev.tsv")
    tokenizer = load_tokenizer("minilm")
    model = load_model("minilm", AutoModelForSequenceClassification, num_labels=2)

    memtune.attach(model, memtune.recipe(args.method, budget=args.budget))
    report = memtune.parameter_report(model)
    print(
        f"{args.method} on MiniLM: {report['tuned']:,} tuned ({report['tuned_pct']:.2f}%), "
        f"{report['stored']:,} stored ({report['stored_pct']:.2f}%), head {report['head']:,}, backbone {report['backbone']:,}"
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        steps = tqdm(batches(train, tokenizer, args.batch_size, True, seed=epoch), total=-(-len(train) // args.batch_size), desc=f"epoch {epoch + 1}")
        for inputs, labels in steps:
            loss = model(**inputs, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            steps.set_postfix(loss=f"{loss.item():.3f}")
    elapsed = time.time() - start
    score = accuracy(model, dev, tokenizer)
    print(f"SST-2 dev accuracy {score:.1f}% after {args.epochs} epochs on {len(train)} sentences ({elapsed:.0f} s of training)")

    with tempfile.TemporaryDirectory() as tmp:
        memtune.save(model, tmp)
        size = sum(f.stat().st_size for f in Path(tmp).iterdir())
        reloaded = memtune.load(load_model("minilm", AutoModelForSequenceClassification, num_labels=2), tmp)
        print(f"saved {size / 1e6:.1f} MB; reloaded model dev accuracy {accuracy(reloaded, dev, tokenizer):.1f}%")


if __name__ == "__main__":
    main()
