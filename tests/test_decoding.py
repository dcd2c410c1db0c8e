"""memtune.decoding: prompt/target features and batched generation with left padding and the cache."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import memtune
from memtune.decoding import IGNORE, DecodingConfig, generate, generate_ids, prompt_ids, target_ids, training_features
from memtune.errors import ConfigError

from conftest import VOCAB, tiny_model
from fixture_data import tiny_lm_dir  # noqa: F401 - a fixture

WORDS = ["<pad>", "<eos>", "[UNK]", "Text:", "name", "[Aromi]", "food", "[Thai]", "area", "riverside", "is", "a", "pub",
         "in", "the", "Aromi", "serves", "Thai"]  # fmt: skip


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over WORDS (ids below the tiny models' vocabulary of 96)."""
    vocab = {w: i for i, w in enumerate(WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="[UNK]")
    assert len(vocab) < VOCAB
    return tokenizer


SOURCES = ["name [Aromi] food [Thai]", "name [Aromi] area riverside food [Thai] name [Aromi]", "area riverside"]


def test_training_features_label_the_target_only_and_end_with_eos():
    tokenizer = tiny_tokenizer()
    features = training_features(tokenizer, SOURCES[0], "Aromi is a pub", max_length=32)
    prompt = prompt_ids(tokenizer, SOURCES[0])
    assert features["input_ids"] == prompt + target_ids(tokenizer, "Aromi is a pub")
    assert features["labels"][: len(prompt)] == [IGNORE] * len(prompt)
    assert features["labels"][len(prompt):] == features["input_ids"][len(prompt):]
    assert features["input_ids"][-1] == tokenizer.eos_token_id
    # too long for max_length: never cut, left to the caller to skip and count
    assert training_features(tokenizer, SOURCES[0], "Aromi is a pub", max_length=len(prompt) + 4) is None


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("recipe", [None, "mt-mf", "prefix", "lora"])
def test_batched_left_padded_generation_equals_one_input_at_a_time(arch, recipe):
    model = tiny_model(arch)
    if recipe:
        memtune.attach(model, memtune.recipe(recipe, budget=8))
        with torch.no_grad():
            for p in memtune.tuning.method_parameters(model):
                p.normal_(0, 0.5)  # far from the no-op start, so the methods shape what is generated
    tokenizer = tiny_tokenizer()
    config = DecodingConfig(max_new_tokens=5, batch_size=3)
    batched = generate_ids(model, tokenizer, SOURCES, config, progress=False)
    alone = [generate_ids(model, tokenizer, [s], DecodingConfig(max_new_tokens=5, batch_size=1), progress=False)[0]
             for s in SOURCES]  # fmt: skip
    assert batched == alone and len(batched) == 3 and all(batched)


def test_generation_with_the_cache_equals_generation_without_it():
    model = memtune.attach(tiny_model("llama"), memtune.recipe("mt-mf", budget=8))
    with torch.no_grad():
        for p in memtune.tuning.method_parameters(model):
            p.normal_(0, 0.5)
    tokenizer = tiny_tokenizer()
    ids = torch.tensor([prompt_ids(tokenizer, SOURCES[1])])
    run = lambda cache: model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, use_cache=cache, pad_token_id=0)  # noqa: E731
    assert torch.equal(run(True), run(False))


def test_a_prompt_that_leaves_no_room_is_refused_with_its_index():
    model = tiny_model("gpt2")  # 64 positions
    long = " ".join(["name [Aromi]"] * 40)
    with pytest.raises(ConfigError, match=r"e2e test, input 1: its prompt is 8\d tokens.*the model has 64"):
        generate(model, tiny_tokenizer(), [SOURCES[0], long], progress=False, where="e2e test")


@pytest.mark.parametrize("field", ["max_new_tokens", "num_beams", "batch_size"])
def test_decoding_settings_are_checked(field):
    with pytest.raises(ConfigError, match=f"{field} must be a positive integer"):
        DecodingConfig(**{field: 0})


def test_beam_search_runs_and_keeps_the_batch_order():
    model = tiny_model("gpt2")
    tokenizer = tiny_tokenizer()
    beams = DecodingConfig(max_new_tokens=4, num_beams=3, batch_size=2)
    batched = generate_ids(model, tokenizer, SOURCES, beams, progress=False)
    alone = [generate_ids(model, tokenizer, [s], DecodingConfig(max_new_tokens=4, num_beams=3, batch_size=1), progress=False)[0]
             for s in SOURCES]  # fmt: skip
    assert batched == alone


def test_generated_ids_stop_at_eos_and_the_text_drops_special_tokens(monkeypatch):
    from memtune import decoding

    assert decoding._until_eos([15, 16, 1, 17], eos=1) == [15, 16]
    assert decoding._until_eos([15, 16], eos=1) == [15, 16] and decoding._until_eos([15], eos=None) == [15]
    monkeypatch.setattr(decoding, "generate_ids", lambda *a, **k: [[15, 16, 17, 0], []])  # 0 is the pad token
    assert generate(None, tiny_tokenizer(), SOURCES[:2]) == ["Aromi serves Thai", ""]


def test_generation_keeps_token_ids_only_and_min_new_tokens_holds_off_the_end_token():
    model = tiny_model("gpt2")
    tokenizer = tiny_tokenizer()
    seen = {}
    original = model.generate

    def spy(**kwargs):
        seen.update(kwargs)
        out = original(**kwargs)
        assert isinstance(out, torch.Tensor)  # ids, not a dict of scores or logits
        return out

    model.generate = spy
    eos = tokenizer.eos_token_id

    def end_token_wins(module, inputs, logits):  # every greedy step picks the end token, unless held off
        logits[..., eos] += 1e4
        return logits

    model.lm_head.register_forward_hook(end_token_wins)
    assert generate_ids(model, tokenizer, SOURCES, DecodingConfig(max_new_tokens=5), progress=False) == [[], [], []]
    assert seen["output_scores"] is False and seen["output_logits"] is False and seen["return_dict_in_generate"] is False
    fixed = generate_ids(model, tokenizer, SOURCES, DecodingConfig(max_new_tokens=5, min_new_tokens=5), progress=False)
    assert [len(ids) for ids in fixed] == [5, 5, 5]
    with pytest.raises(ConfigError, match=r"min_new_tokens must be an integer from 0 to max_new_tokens \(5\), got 6"):
        DecodingConfig(max_new_tokens=5, min_new_tokens=6)


def test_a_tokenizer_without_an_end_token_is_refused_and_one_without_a_pad_token_pads_with_the_end_token():
    tokenizer = tiny_tokenizer()
    model = tiny_model("gpt2")
    padded = generate_ids(model, tokenizer, SOURCES, DecodingConfig(max_new_tokens=4, batch_size=3), progress=False)
    tokenizer.pad_token = None  # e.g. GPT-2's and Llama's tokenizers: padding falls back to the end token
    assert tokenizer.pad_token_id is None
    assert generate_ids(model, tokenizer, SOURCES, DecodingConfig(max_new_tokens=4, batch_size=3), progress=False) == padded
    tokenizer.eos_token = None
    with pytest.raises(ConfigError, match="the tokenizer has no end-of-sequence token, which ends every training target"):
        training_features(tokenizer, SOURCES[0], "Aromi is a pub", max_length=32)


def test_the_runner_loads_a_decoder_without_a_pad_token_with_the_end_token_as_pad(tiny_lm_dir, tmp_path):
    from memtune.experiments.compare import load_for_task
    from memtune.tasks import get_task

    folder = Path(shutil.copytree(tiny_lm_dir, tmp_path / "no-pad"))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("pad_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    special = folder / "special_tokens_map.json"
    if special.exists():
        special.write_text(json.dumps({k: v for k, v in json.loads(special.read_text()).items() if k != "pad_token"}))
    model, tokenizer = load_for_task(str(folder), get_task("e2e"))
    assert tokenizer.pad_token == tokenizer.eos_token == "<eos>" and model.config.pad_token_id is not None
