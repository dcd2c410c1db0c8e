"""memtune visualize: the observed memory scores equal Eq. (8) / Eq. (9) written out, the cluster numbers
behave on known arrangements, and the command draws a picture, its points and its numbers."""
from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch

import memtune
from memtune.attention import PROBE_ATTR
from memtune.cli import main
from memtune.visualize.analysis import chance_agreement, neighbour_agreement, quality, silhouette
from memtune.visualize.scores import memories, observing, prefix_scores
from conftest import batch, logits, tiny_model
from test_compare import FIXTURES, tiny_model_dir  # noqa: F401 - a fixture


def test_prefix_scores_are_the_second_softmax_of_eq_9_averaged_over_heads():
    g = torch.Generator().manual_seed(0)
    query, key = torch.randn(2, 4, 5, 8, generator=g), torch.randn(2, 3, 8, generator=g)  # 4 heads share 2 key heads
    got = prefix_scores(query, key, 0.5)
    expected = torch.stack([(query[:, h] @ key[h // 2].T * 0.5).softmax(-1) for h in range(4)], dim=1).mean(1)
    torch.testing.assert_close(got, expected)
    assert got.shape == (2, 5, 3) and torch.allclose(got.sum(-1), torch.ones(2, 5))


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_observing_reads_each_memory_of_the_layer_and_leaves_the_model_as_it_was(arch):
    model = tiny_model(arch)
    memtune.attach(model, memtune.recipe("mt-mf", 8))
    inputs = batch(arch, pad="right")
    before = logits(model, inputs)
    found = memories(model, -1)
    assert [m.kind for m in found] == ["prefix", "ffn"] and all(m.layer == 2 for m in found)
    block = found[1].module
    seen = {}
    handle = block.register_forward_pre_hook(lambda module, args: seen.setdefault("h", args[0]))
    with torch.no_grad(), observing(found) as store:
        model(**inputs)
    handle.remove()
    assert torch.equal(logits(model, inputs), before)  # observing changed nothing, and left nothing behind
    assert not hasattr(found[0].module, PROBE_ATTR) and not block._forward_pre_hooks
    (ffn,), (prefix,) = store["ffn"], store["prefix"]
    torch.testing.assert_close(ffn, block.scores(seen["h"]))
    assert ffn.shape == (2, 7, block.memory.shape[0]) and prefix.shape == (2, 7, found[0].size)
    torch.testing.assert_close(prefix.sum(-1), torch.ones(2, 7))


def test_a_layer_without_memory_and_a_model_without_any_are_refused():
    model = tiny_model("bert")
    memtune.attach(model, memtune.MemoryConfig(num_slots=4, layers=[0]))
    with pytest.raises(memtune.MemtuneError, match=r"layer -1 \(2 of 0..2\) has no external memory; tuned layers: \[0\]"):
        memories(model, -1)
    lora = tiny_model("bert")
    memtune.attach(lora, memtune.LoraConfig(rank=2))
    with pytest.raises(memtune.MemtuneError, match="no external memory to look at"):
        memories(lora, -1)


def test_cluster_numbers_separate_clustered_from_label_blind_points():
    rng = np.random.default_rng(0)
    labels = np.array(["a"] * 50 + ["b"] * 50)
    clustered = np.concatenate([rng.normal(0, 0.1, (50, 3)), rng.normal(5, 0.1, (50, 3))])
    blind = rng.normal(0, 1, (100, 3))
    assert neighbour_agreement(clustered, labels) == 1.0 and silhouette(clustered, labels) > 0.9
    assert abs(neighbour_agreement(blind, labels) - chance_agreement(labels)) < 0.15 and abs(silhouette(blind, labels)) < 0.1
    assert chance_agreement(labels) == 0.5 and silhouette(blind, np.array(["a"] * 100)) is None
    assert set(quality(clustered, clustered[:, :2], labels)) == {"silhouette_raw", "silhouette_2d", "neighbours_raw",
                                                                  "neighbours_2d", "neighbours_chance"}  # fmt: skip


def data_with_more_inputs(tmp_path):
    """The fixture data, with 40 SST-2 dev sentences and 12 CoNLL-2004 dev sentences (enough points for t-SNE)."""
    root = shutil.copytree(FIXTURES, tmp_path / "data")
    rng = random.Random(0)
    words = "a gentle moving film dull lifeless mess warm witty tedious flat beautifully acted boring best".split()
    lines = [f"{' '.join(rng.choices(words, k=5))} \t{i % 2}" for i in range(40)]
    (root / "sst2" / "dev.tsv").write_text("text\tlabel\n" + "\n".join(lines) + "\n")
    docs = [f"#doc {i}\n0\tAnna\tB-Peop\t['N']\t[0]\n1\tin\tO\t['N']\t[1]\n2\tOhio\tB-Loc\t['N']\t[2]\n" for i in range(12)]
    (root / "conll2004" / "dev.txt").write_text("".join(docs))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sst2", "conll2004"])
def test_visualize_draws_each_memory_trained_and_untrained_with_its_numbers(capsys, tiny_model_dir, tmp_path, task):
    from memtune.experiments.compare import load_for_task
    from memtune.tasks import get_task

    model, _ = load_for_task(str(tiny_model_dir), get_task(task))
    memtune.attach(model, memtune.recipe("mt-mf", 8))
    memtune.save(model, tmp_path / "ckpt")
    data, out = data_with_more_inputs(tmp_path), tmp_path / "pictures"
    code = main(["visualize", str(tmp_path / "ckpt"), "--model", str(tiny_model_dir), "--task", task, "--data-dir", str(data),
                 "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    stem = out / f"{task}-layer1"
    report = json.loads(stem.with_name(f"{task}-layer1-quality.json").read_text())
    assert [(p["memory"].split(" (")[0], p["state"]) for p in report["panels"]] == [
        ("attention memory", "trained"), ("FFN memory", "trained"), ("attention memory", "untrained"), ("FFN memory", "untrained")
    ]  # fmt: skip
    points = report["points"]
    assert points == (40 if task == "sst2" else 36) and all(p["points"] == points for p in report["panels"])
    assert all(0 <= p["neighbours_2d"] <= 1 and p["neighbours_chance"] > 0 for p in report["panels"])
    assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = stem.with_name(f"{task}-layer1-points.csv").read_text().splitlines()
    assert rows[0] == "memory,state,label,x,y" and len(rows) == 1 + 4 * points


def test_a_checkpoint_without_run_json_needs_model_and_task(capsys, tmp_path):
    (tmp_path / "ckpt").mkdir()
    assert main(["visualize", str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err
    assert "does not say which base model and task it was tuned on (no run.json); pass --model and --task" in err
    (tmp_path / "ckpt" / "run.json").write_text(json.dumps({"model": "minilm", "task": "cola-typo"}))
    assert main(["visualize", str(tmp_path / "ckpt")]) == 2  # model and task come from run.json: the task is refused
    assert "cola-typo" in capsys.readouterr().err
