"""Does the authors' initialisation or memtune's zero-init learn faster? (issue 14, part 1)

Every run: MiniLM, a seed-0 sample of 1,500 SST-2 training sentences, the ``cpu`` profile's settings
(batch 16, lr 1e-3, AdamW) for 5 epochs with no early stop, seed 0; validation accuracy (1,000 sentences
of the 10% carve of train) and training loss after every epoch. Only the memory's initialisation differs between the two runs of a pair:

- ``zero-out``: W_o = 0, W_query/W_key/W_value PyTorch's default (memtune's default: a no-op at attach);
- ``authors``: all four projections N(0, 0.01), zero biases (the authors' code).

Pairs: MT-F and MT-MF in the paper's form (no inner LayerNorms), and MT-F in the authors' full variant
(``MemoryConfig.authors``: inner LayerNorms with eps 1e-12, biases, backbone LayerNorms trained).

    python docs/results/init-study/run.py --data-dir ../shared/data --out docs/results/init-study

Appends one JSON line per run to ``<out>/runs.jsonl`` and skips the runs already there (resumable).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import TrainerCallback, set_seed

import memtune
from memtune.experiments.compare import load_for_task
from memtune.experiments.results import append_result
from memtune.tasks import get_task, load_task
from memtune.train import settings_for, train_and_evaluate

VARIANTS = {  # name -> the recipe whose configs are used, and whether the memory takes the authors' full variant
    "mt-f": ("mt-f", False),
    "mt-mf": ("mt-mf", False),
    "mt-f-authors-variant": ("mt-f", True),
}


def configs(variant: str, init: str) -> list[memtune.MethodConfig]:
    name, authors = VARIANTS[variant]
    out = []
    for config in memtune.recipe(name).configs:
        if isinstance(config, memtune.MemoryConfig):
            config = memtune.MemoryConfig.authors(slot_dim=config.slot_dim, init=init) if authors else replace(config, init=init)
        out.append(config)
    return out


class TrainLoss(TrainerCallback):
    def __init__(self):
        self.losses = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append({"epoch": round(state.epoch or 0.0, 3), "loss": logs["loss"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--out", default="docs/results/init-study")
    parser.add_argument("--train-size", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--valid-size", type=int, default=1000, help="validation examples (a seed-0 sample of the carve)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "runs.jsonl"
    done = {(r["variant"], r["init"]) for r in map(json.loads, path.read_text().splitlines())} if path.exists() else set()
    task = get_task("sst2")
    for variant in args.variants.split(","):
        for init in ("zero-out", "authors"):
            if (variant, init) in done:
                continue
            data = load_task("sst2", args.data_dir, seed=0, train_size=args.train_size, sample_seed=0)
            set_seed(0)
            model, tokenizer = load_for_task("minilm", task)
            method = configs(variant, init)
            memtune.attach(model, method)
            recipe = memtune.recipe(VARIANTS[variant][0])
            settings = settings_for(task, recipe, "cpu", epochs=args.epochs, patience=args.epochs + 1,
                                    valid_size=args.valid_size)
            losses = TrainLoss()
            start = time.time()
            with tempfile.TemporaryDirectory() as scratch:
                result = train_and_evaluate(model, tokenizer, data, settings, seed=0, output_dir=scratch, callbacks=[losses])
            record = {
                "variant": variant, "init": init, "configs": [repr(c) for c in method], "train_size": len(data.train),
                "valid_source": data.valid_source, "n_valid": min(args.valid_size, len(data.valid)), "settings": settings.to_dict(),
                "valid_per_epoch": result.history, "train_loss_per_epoch": losses.losses,
                "best_valid": round(result.valid, 4), "best_epoch": result.best_epoch,
                "eval_source": data.eval_source, "eval_at_best_epoch": round(result.eval, 4),
                "seconds": round(time.time() - start, 1), "torch_threads": torch.get_num_threads(),
                "memtune_version": memtune.__version__,
            }  # fmt: skip
            append_result(path, record)
            curve = " ".join(f"{h['valid']:.3f}" for h in result.history)
            print(f"{variant:22s} {init:9s} valid per epoch: {curve}  ({record['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
