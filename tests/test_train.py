"""Training wiring: profiles, encoding, scoring, early stopping, and DDP equal to one process."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

import memtune
from memtune.errors import ConfigError
from memtune.train import IGNORE, BestTrainable, TrainSettings, encode, score, settings_for

TASK = SimpleNamespace(epochs=50, max_length=100, batch_size=16, batch_size_large=8)
NER = SimpleNamespace(kind="token", metric="entity_f1", labels=("O", "B-PER", "I-PER"))


def test_profiles_follow_table_i_and_the_paper_learning_rates():
    paper = settings_for(TASK, memtune.recipe("mt-mf"), "paper")
    assert (paper.epochs, paper.batch_size, paper.max_length, paper.learning_rate) == (50, 16, 100, 1e-4)
    assert settings_for(TASK, memtune.recipe("ft"), "paper").learning_rate == 2e-5
    assert settings_for(TASK, memtune.recipe("ft"), "paper", large=True).batch_size == 8
    cpu = settings_for(TASK, memtune.recipe("lora"), "cpu", epochs=2, learning_rate=None)
    assert (cpu.epochs, cpu.batch_size, cpu.max_length, cpu.learning_rate, cpu.patience) == (2, 16, 100, 1e-3, 2)
    with pytest.raises(ConfigError, match="unknown training profile 'gpu'; known profiles: paper, cpu"):
        settings_for(TASK, memtune.recipe("lora"), "gpu")
    with pytest.raises(ConfigError, match="unknown training setting"):
        settings_for(TASK, memtune.recipe("lora"), "cpu", epoch=3)
    with pytest.raises(ConfigError, match="epochs must be a positive integer"):
        TrainSettings(epochs=0, batch_size=1, learning_rate=1e-3, max_length=8)


def test_valid_size_early_stops_on_one_fixed_sample_for_every_run():
    from memtune.train import validation_examples

    data = SimpleNamespace(valid=list(range(50)))
    settings = TrainSettings(epochs=1, batch_size=1, learning_rate=1e-3, max_length=8, valid_size=10)
    chosen = validation_examples(data, settings)
    assert len(chosen) == 10 and chosen == sorted(chosen) and set(chosen) < set(data.valid)
    assert validation_examples(data, settings) == chosen  # the same sample whatever the run's seed
    assert validation_examples(data, TrainSettings(epochs=1, batch_size=1, learning_rate=1e-3, max_length=8)) is data.valid
    assert validation_examples(SimpleNamespace(valid=data.valid[:5]), settings) == data.valid[:5]  # fewer than asked: all
    with pytest.raises(ConfigError, match=r"valid_size must be a positive integer \(at most 1,000,000,000\) or None, got 0"):
        TrainSettings(epochs=1, batch_size=1, learning_rate=1e-3, max_length=8, valid_size=0)


class Encoding(dict):
    def word_ids(self):
        return self["_words"]


class WordTokenizer:
    """Stands in for a fast tokenizer: 'xx' words split into two sub-tokens, empty words vanish; [CLS] ... [SEP]."""

    unk_token = "[UNK]"

    def __call__(self, words, is_split_into_words=True, truncation=True, max_length=512):
        pieces = [(None, 1)]
        for i, w in enumerate(words):
            pieces += [(i, 10 + len(w))] * (2 if w.startswith("xx") else 1 if w else 0)
        pieces = pieces[: max_length - 1] + [(None, 2)]
        return Encoding(input_ids=[p[1] for p in pieces], _words=[p[0] for p in pieces])


def test_token_labels_sit_on_the_first_sub_token_and_truncated_words_count_as_missed():
    example = SimpleNamespace(text=["Ann", "xxBell", "ran"], text_pair=None, label=[1, 2, 0])
    (feature,) = encode([example], WordTokenizer(), "token", max_length=512)
    assert feature["labels"] == [IGNORE, 1, 2, IGNORE, 0, IGNORE]
    # scoring: predictions only where labels are kept; a truncated tail is predicted "O"
    predictions = np.array([[0, 1, 2, 2, 0, 0]])
    assert score(NER, [example], predictions, np.array([feature["labels"]])) == 100.0
    (cut,) = encode([example], WordTokenizer(), "token", max_length=3)  # only "Ann" and half of "xxBell" fit
    assert cut["labels"] == [IGNORE, 1, IGNORE]
    assert score(NER, [example], predictions[:, :3], np.array([cut["labels"]])) == 0.0  # "Ann Bell" is missed


def test_a_word_without_sub_tokens_does_not_shift_the_later_words_tags():
    example = SimpleNamespace(text=["Ann", "", "Bell", ""], text_pair=None, label=[1, 0, 1, 0])
    (feature,) = encode([example], WordTokenizer(), "token", max_length=512)
    assert feature["labels"] == [IGNORE, 1, 0, 1, IGNORE]  # the inner empty word became [UNK]; the last is gone
    predictions = np.array([[0, 1, 0, 1, 0]])
    assert score(NER, [example], predictions, np.array([feature["labels"]])) == 100.0


def test_encode_with_a_real_fast_tokenizer_labels_first_sub_tokens():
    from memtune.models import is_installed, load_tokenizer

    if not is_installed("minilm"):
        pytest.skip("the packaged MiniLM tokenizer is not installed")
    tokenizer = load_tokenizer("minilm")
    example = SimpleNamespace(text=["Ann", "Wolkenkratzer", "ran"], text_pair=None, label=[1, 0, 0])
    (feature,) = encode([example], tokenizer, "token", max_length=32)
    words = tokenizer(example.text, is_split_into_words=True).word_ids()
    assert len(feature["labels"]) == len(words) and sum(l != IGNORE for l in feature["labels"]) == 3
    assert words.count(1) > 1  # the long word is split, and only its first piece is labelled
    vanishing = SimpleNamespace(text=["Ann", "\u200b", "Bell"], text_pair=None, label=[1, 0, 1])
    assert 1 not in tokenizer(vanishing.text, is_split_into_words=True).word_ids()  # BERT drops a zero-width space
    (feature,) = encode([vanishing], tokenizer, "token", max_length=32)
    assert [l for l in feature["labels"] if l != IGNORE] == [1, 0, 1]


def test_best_trainable_restores_the_best_epoch_and_stops_after_patience():
    model = torch.nn.Linear(2, 1)
    best = BestTrainable(model, patience=2)
    with torch.no_grad():
        model.weight.fill_(1.0)
    assert not best.update(50.0, 1.0)
    with torch.no_grad():
        model.weight.fill_(2.0)
    assert not best.update(40.0, 2.0)
    assert best.update(45.0, 3.0)  # second evaluation without improvement
    best.restore()
    assert best.best_epoch == 1 and torch.equal(model.weight, torch.ones(1, 2))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
@pytest.mark.parametrize("optimizer,tolerance", [("sgd", 1e-7), ("adamw_torch", 1e-5)])
def test_two_ddp_processes_train_like_one_with_the_same_global_batch(tmp_path, optimizer, tolerance):
    """2 CPU processes (gloo) with batch 4 each == 1 process with batch 8: same tensors, same scores."""
    worker = str(Path(__file__).with_name("ddp_worker.py"))
    env_cmd = {"cwd": tmp_path, "capture_output": True, "text": True, "timeout": 300}
    single = subprocess.run([sys.executable, worker, str(tmp_path / "single.pt"), "8", optimizer], **env_cmd)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run(
        ["torchrun", "--standalone", "--nproc_per_node", "2", worker, str(tmp_path / "ddp.pt"), "4", optimizer], **env_cmd
    )
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    a, b = torch.load(tmp_path / "single.pt"), torch.load(tmp_path / "ddp.pt")
    assert a["tensors"].keys() == b["tensors"].keys() and a["eval"] == b["eval"] and a["valid"] == b["valid"]
    for name in a["tensors"]:
        torch.testing.assert_close(a["tensors"][name], b["tensors"][name], rtol=0, atol=tolerance, msg=name)


def test_all_finite_sees_nan_and_inf_and_not_huge_finite_values():
    from memtune.train import all_finite

    assert all_finite([torch.full((1000,), 3e38), torch.zeros(2)])  # its norm would overflow; its max does not
    assert not all_finite([torch.ones(3), torch.tensor([1.0, float("nan")])])
    assert not all_finite([torch.tensor([-float("inf")])])


def test_the_finite_guard_stops_at_a_non_finite_gradient_or_parameter_naming_the_run_and_step():
    from memtune.errors import TrainingDiverged
    from memtune.train import _finite_guard

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    model[0].weight.requires_grad_(False)  # frozen: not checked
    guard = _finite_guard(model, "sst2 mt-f seed 3")
    state = SimpleNamespace(global_step=4, epoch=0.5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    guard.on_pre_optimizer_step(None, state, None)  # finite: nothing happens
    guard.on_epoch_end(None, state, None)
    model[0].weight.grad.fill_(float("nan"))
    guard.on_pre_optimizer_step(None, state, None)  # a frozen parameter's gradient is not the run's
    model[1].bias.grad[0] = float("inf")
    with pytest.raises(TrainingDiverged, match=r"^sst2 mt-f seed 3: the loss or its gradient is not finite .* step 5 \(epoch 0.50\); lower --lr"):
        guard.on_pre_optimizer_step(None, state, None)
    with torch.no_grad():
        model[1].weight[0, 1] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"parameters became non-finite by step 4 \(epoch 0.50\): 1.weight; lower --lr"):
        guard.on_train_end(None, state, None)


def test_history_gets_each_epochs_logged_training_loss():
    from memtune.train import with_train_loss

    history = [{"epoch": 1.0, "valid": 0.5}, {"epoch": 2.0, "valid": 0.6}]
    log = [{"loss": 0.9, "epoch": 1.0}, {"eval_score": 0.5, "epoch": 1.0}, {"train_loss": 0.8, "epoch": 2.0}]
    assert with_train_loss(history, log) == [{"epoch": 1.0, "valid": 0.5, "train_loss": 0.9}, {"epoch": 2.0, "valid": 0.6}]
