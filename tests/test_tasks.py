"""Task registry and data readers: hand-written fixtures in the real formats, plus the real data when present."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

import memtune.tasks.data as task_data
from memtune.errors import ConfigError
from memtune.tasks import READERS, TASKS, carve, get_task, load_task, sample, shared_data_dir
from fixture_data import fixture_root, isolated, read, real, shared  # noqa: F401 - isolated, shared: fixtures

FIXTURES = fixture_root()  # the hand-written fixture files, in a temporary folder
_NLI_STRINGS = ("entailment", "not_entailment")


def write(root: Path, task_name: str, split: str, content: str | bytes) -> Path:
    task = get_task(task_name)
    path = root / task.folder / task.files[split]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


# --- registry ----------------------------------------------------------------------------------------

TABLE_I = {  # epochs, input length, batch size BERT-base, BERT-large
    "mrpc": (50, 100, 16, 16), "rte": (50, 100, 16, 16), "cb": (50, 300, 16, 16), "qnli": (50, 100, 128, 64),
    "sst2": (50, 100, 128, 64), "conll2003": (30, 100, 128, 64), "conll2004": (30, 100, 8, 8),
    "msra": (30, 60, 128, 64),
}


def test_registry_matches_table_i_and_the_protocol():
    classification = {name: task for name, task in TASKS.items() if task.kind != "generation"}  # generation: test_generation_tasks.py
    assert set(classification) == set(TABLE_I)
    for name, task in classification.items():
        assert (task.epochs, task.max_length, task.batch_size, task.batch_size_large) == TABLE_I[name], name
        assert task.valid_split != "test" and task.reader_for("train") in READERS
        if task.kind == "sentence":
            assert task.eval_split == "dev" and task.valid_split in (None, "valid"), name  # never GLUE dev
        else:
            assert task.eval_split == "test" and task.labels[0] == "O" and task.metric == "entity_f1", name
    assert get_task("mrpc").metric == "f1" and get_task("mrpc").labels[1] == "equivalent"
    assert [len(TASKS[n].labels) for n in ("cb", "conll2003", "conll2004", "msra")] == [3, 9, 9, 7]


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown task 'sst-2'") as err:
        get_task("sst-2")
    assert all(name in str(err.value) for name in TASKS)


def test_a_task_may_not_validate_on_test():
    with pytest.raises(ConfigError, match="valid_split must not be 'test'"):
        dataclasses.replace(get_task("conll2003"), valid_split="test")


def test_a_new_glue_style_task_is_one_entry(monkeypatch):
    """Everything task-specific is in the entry: RTE's files read as a 'pairs' task."""
    pairs = dataclasses.replace(get_task("rte"), name="pairs", labels=("yes", "no"), label_strings=_NLI_STRINGS)
    monkeypatch.setitem(TASKS, "pairs", pairs)
    data = load_task("pairs", FIXTURES)
    assert data.task is pairs and len(data.train) + len(data.valid) == 6


# --- readers -----------------------------------------------------------------------------------------


def test_sst2_reader_skips_the_header_and_strips_the_trailing_space():
    examples = read("sst2", "train")
    assert [e.text for e in examples[:2]] == ["a gentle , moving film", "a dull , lifeless mess"]
    assert [e.label for e in examples] == [1, 0, 1, 0, 1, 0] and examples[0].text_pair is None


def test_mrpc_reader_finds_columns_by_header_name():
    train = read("mrpc", "train")  # starts with a UTF-8 BOM
    assert (train[1].text, train[1].text_pair, train[1].label) == (
        'Stocks rose " sharply " today .', "The weather was cold .", 0)
    assert [e.label for e in train] == [1, 0, 1, 0]
    test = read("mrpc", "test")  # an extra leading index column
    assert (test[0].text, test[0].text_pair, test[0].label) == ("They won .", "They were victorious .", 1)


def test_qnli_reads_json_train_and_valid_and_tsv_dev():
    data = load_task("qnli", FIXTURES)
    assert [(e.text, e.label) for e in data.train] == [
        ("Who wrote the play?", 0), ("When did the war end?", 1), ("What is the capital?", 0)]
    assert data.valid_source == "valid" and data.valid[0].text_pair == "Its colour is grey."
    assert data.eval_source == "dev" and [e.label for e in data.eval] == [0, 1]
    assert data.eval[0].text_pair == "The river runs through the valley."
    assert any("8,999" in n for n in data.notes)


def test_rte_reader_reads_pairs():
    examples = read("rte", "train")
    assert (examples[0].text, examples[0].text_pair, examples[0].label) == (
        "A man is playing a guitar.", "A man plays music.", 0)
    assert [e.label for e in examples] == [0, 1, 0, 1, 0, 1]


def test_cb_reader_reads_jsonl():
    examples = read("cb", "train")
    assert [e.label for e in examples] == [0, 1, 2, 0, 1]
    assert (examples[2].text, examples[2].text_pair) == ("Maybe she knew. Who can tell?", "she knew")


def test_conll2003_reader_skips_docstart_and_aligns_tags():
    examples = read("conll2003", "train")
    labels = get_task("conll2003").labels
    assert [e.text for e in examples] == [
        ["Acme", "hires", "Dutch", "engineers", "."], ["Maria", "Lopez"], ["OSLO", "2001-01-01"]]
    assert [[labels[t] for t in e.label] for e in examples] == [
        ["B-ORG", "O", "B-MISC", "O", "O"], ["B-PER", "I-PER"], ["B-LOC", "O"]]
    assert [e.text for e in read("conll2003", "test")] == [["Peru", "wins", "."]]  # no trailing blank line


def test_conll2004_reader_splits_on_doc_lines():
    examples = read("conll2004", "train")
    labels = get_task("conll2004").labels
    assert [e.text for e in examples] == [
        ["Gov.", "Anna", "Smith", "of", "Ohio"], ["Globex", "said"], ["The", "Gold", "Cup"]]
    assert [[labels[t] for t in e.label] for e in examples] == [
        ["O", "B-Peop", "I-Peop", "O", "B-Loc"], ["B-Org", "O"], ["O", "B-Other", "I-Other"]]


def test_msra_reader_reads_characters():
    examples = read("msra", "train")
    labels = get_task("msra").labels
    assert ["".join(e.text) for e in examples] == ["当北京", "张三说", "新华社", "好"]
    assert [labels[t] for t in examples[2].label] == ["B-ORG", "I-ORG", "I-ORG"]
    assert all(len(e.text) == len(e.label) for e in examples)


# --- splits ------------------------------------------------------------------------------------------


def test_conll2003_validates_on_dev_and_reports_test():
    data = load_task("conll2003", FIXTURES)
    assert (data.valid_source, data.eval_source) == ("dev", "test")
    assert (len(data.train), len(data.valid), len(data.eval)) == (3, 1, 1)
    assert data.root == str(FIXTURES) and data.notes == []


def test_glue_dev_is_reported_and_validation_is_carved_from_train():
    data = load_task("sst2", FIXTURES, valid_fraction=0.34)
    assert data.eval_source == "dev" and [e.text for e in data.eval][0] == "the best film of the year"
    assert data.valid_source == "34% of train (seed 0)" and len(data.valid) == 2 and len(data.train) == 4
    assert sorted(e.label for e in data.valid) == [0, 1]  # stratified


def test_carve_is_deterministic_disjoint_and_seeded():
    data = load_task("rte", FIXTURES, valid_fraction=0.34, seed=3)
    again = load_task("rte", FIXTURES, valid_fraction=0.34, seed=3)
    assert [e.text for e in data.valid] == [e.text for e in again.valid]
    assert not {e.text for e in data.valid} & {e.text for e in data.train}
    assert len(data.valid) + len(data.train) == 6
    from memtune.tasks import Example

    many = [Example(f"s{i}", None, i % 3) for i in range(300)]
    rest, valid = carve(many, 0.1, seed=0)
    assert len(valid) == 30 and len(rest) == 270 and [e.label for e in valid].count(2) == 10
    assert valid == carve(many, 0.1, seed=0)[1] and valid != carve(many, 0.1, seed=1)[1]
    with pytest.raises(ConfigError, match="between 0 and 1"):
        carve(many, 1.5, seed=0)


@pytest.mark.parametrize("name, missing", [("rte", "dev.tsv"), ("cb", "val.jsonl"), ("conll2004", "test.txt")])
def test_eval_falls_back_to_valid_when_the_eval_file_is_held_out(name, missing):
    data = load_task(name, FIXTURES)
    assert data.eval is data.valid and data.eval_source == f"valid ({missing} is absent: held out)"
    assert any(missing in n and "held out" in n for n in data.notes)
    if name == "conll2004":
        assert data.valid_source == "dev" and [e.text[0] for e in data.valid] == ["Lima"]


def test_held_out_file_is_used_when_present(tmp_path):
    for split in ("train", "dev"):
        write(tmp_path, "rte", split, (FIXTURES / "rte" / "train.tsv").read_text())
    data = load_task("rte", tmp_path)
    assert data.eval_source == "dev" and len(data.eval) == 6 and not any("held out" in n for n in data.notes)


def test_msra_has_no_dev_so_validation_is_carved():
    data = load_task("msra", FIXTURES, valid_fraction=0.25)
    assert data.valid_source == "25% of train (seed 0)" and len(data.valid) == 1 and len(data.train) == 3
    assert data.eval_source == "test" and ["".join(e.text) for e in data.eval] == ["上海", "李四"]


def test_train_size_sampling_is_deterministic():
    first = load_task("sst2", FIXTURES, valid_fraction=0.2, train_size=3, sample_seed=5)
    again = load_task("sst2", FIXTURES, valid_fraction=0.2, train_size=3, sample_seed=5)
    assert len(first.train) == 3 and [e.text for e in first.train] == [e.text for e in again.train]
    assert not {e.text for e in first.train} & {e.text for e in first.valid}  # sampled after the carve
    assert any("training on 3 of 5" in n for n in first.notes)
    pool = list(range(50))
    assert sample(pool, 5, 1) == sample(pool, 5, 1) != sample(pool, 5, 2)
    with pytest.raises(ConfigError, match="train_size must be between 1 and the 5"):
        load_task("sst2", FIXTURES, valid_fraction=0.2, train_size=6)


# --- finding the data --------------------------------------------------------------------------------


def test_explicit_dir_beats_env_and_env_beats_shared(tmp_path, monkeypatch):
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    for root, sentence in ((explicit, "from explicit"), (env, "from env")):
        write(root, "rte", "train", "index\tsentence1\tsentence2\tlabel\n"
              + "".join(f"{i}\t{sentence}\th\t{'entailment' if i % 2 else 'not_entailment'}\n" for i in range(4)))
    monkeypatch.setenv("MEMTUNE_DATA", str(env))
    assert load_task("rte", explicit).train[0].text == "from explicit"
    assert load_task("rte").train[0].text == "from env"
    (tmp_path / "empty").mkdir()
    fallen = load_task("rte", tmp_path / "empty")  # an explicit dir without the task falls through, with a note
    assert fallen.root == str(env) and any(str(tmp_path / "empty") in n for n in fallen.notes)


def test_a_data_dir_typo_is_refused_instead_of_falling_back(tmp_path, monkeypatch):
    """A --data-dir or $MEMTUNE_DATA that is missing or a file is an error, never a silent switch to other data."""
    (tmp_path / "a-file").write_text("x")
    for given, what in ((tmp_path / "no-such-folder", "does not exist"), (tmp_path / "a-file", "is a file")):
        with pytest.raises(ConfigError, match=rf"--data-dir {re.escape(str(given))} {what}"):
            load_task("rte", given)
        monkeypatch.setenv("MEMTUNE_DATA", str(given))
        with pytest.raises(ConfigError, match=rf"\$MEMTUNE_DATA {re.escape(str(given))} {what}"):
            load_task("rte")
        monkeypatch.delenv("MEMTUNE_DATA")


def test_not_found_message_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMTUNE_DATA", str(tmp_path / "env"))
    (tmp_path / "env").mkdir()
    (tmp_path / "mine").mkdir()
    monkeypatch.setattr(task_data, "shared_data_dir", lambda: tmp_path / "shared" / "data")
    with pytest.raises(ConfigError) as err:
        load_task("rte", tmp_path / "mine")
    message = str(err.value)
    for expected in ("'rte'", "rte/train.tsv", "--data-dir", str(tmp_path / "mine"), "$MEMTUNE_DATA",
                     str(tmp_path / "env"), str(tmp_path / "shared" / "data"), "MEMTUNE_DATA=DIR",
                     "`datasets` package is not installed"):
        assert expected in message, expected
    monkeypatch.delenv("MEMTUNE_DATA")
    with pytest.raises(ConfigError, match=r"--data-dir \(not given\); \$MEMTUNE_DATA \(not set\)"):
        load_task("conll2004")  # conll2004 has no hub copy either


def test_hub_is_used_when_no_local_copy(monkeypatch):
    """The guarded hub path, with a stand-in for datasets.load_dataset (label ids mapped by name)."""

    class Split(list):
        features = {"label": SimpleNamespace(names=["not_entailment", "entailment"])}

    train = Split([{"sentence1": f"p{i}", "sentence2": f"h{i}", "label": i % 2} for i in range(10)])
    dev = Split([{"sentence1": "dp", "sentence2": "dh", "label": 1}])
    calls = []
    monkeypatch.setattr(task_data, "shared_data_dir", lambda: None)
    monkeypatch.setattr(task_data, "_load_dataset",
                        lambda: lambda *args: calls.append(args) or {"train": train, "validation": dev})
    data = load_task("rte")
    assert calls == [("glue", "rte")] and data.root == "hub:glue/rte" and data.eval_source == "dev"
    assert (data.eval[0].text, data.eval[0].text_pair, data.eval[0].label) == ("dp", "dh", 0)  # entailment = 0
    assert len(data.train) == 9 and len(data.valid) == 1


def test_hub_token_tags_are_mapped_by_name(monkeypatch):
    class Split(list):
        features = {"ner_tags": SimpleNamespace(feature=SimpleNamespace(names=["O", "B-LOC", "I-LOC"]))}

    rows = Split([{"tokens": ["New", "York", "is"], "ner_tags": [1, 2, 0]}] * 3)
    monkeypatch.setattr(task_data, "shared_data_dir", lambda: None)
    one = Split(rows[:1])
    monkeypatch.setattr(task_data, "_load_dataset", lambda: lambda *args: {"train": rows, "validation": one, "test": one})
    data = load_task("conll2003")
    labels = get_task("conll2003").labels
    assert data.eval[0].text == ["New", "York", "is"]
    assert [labels[t] for t in data.eval[0].label] == ["B-LOC", "I-LOC", "O"]


# --- bad data ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, split, content, problem", [
    ("rte", "train", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tonly two\n",
     "line 3: expected 4 tab-separated columns, found 2"),
    ("sst2", "train", "text\tlabel\ngood \t1\nbad \tnegative\n",
     "line 3: unknown label 'negative'; expected one of: 0, 1"),
    ("cb", "train", '{"premise": "p", "hypothesis": "h", "label": "entailment"}\n{"premise": "p", "label": "neutral"}\n',
     "line 2: expected keys premise, hypothesis, label; found premise, label"),
    ("cb", "train", '{"premise": "p", "hypothesis": "h", "label": "maybe"}\n',
     "line 1: unknown label 'maybe'; expected one of: entailment, contradiction, neutral"),
    ("cb", "train", '{"premise": "p", "hypothesis": "h", "label": "neutral"}\n{"premise": \n',
     "line 2: expected one JSON object per line"),
    ("mrpc", "train", "Quality\t#1 String\n1\ta\n", "line 1: expected a header with columns #2 String"),
    ("qnli", "train", '{"0": {"text_a": "q", "text_b": "s", "label": "yes"}}',
     "entry '0': unknown label 'yes'; expected one of: entailment, not_entailment"),
    ("conll2003", "train", "-DOCSTART- -X- -X- O\n\nAcme NNP B-NP B-ORG\nhires VBZ O\n",
     "line 4: expected 4 whitespace-separated columns, found 3"),
    ("conll2003", "train", "Acme NNP B-NP B-ORG\nhires VBZ B-VP B-ORGANIZATION\n",
     "line 2: unknown label 'B-ORGANIZATION'; expected one of: O, B-PER, I-PER"),
    ("conll2004", "train", "#doc 1\n0\tGov.\tO\t['N']\t[0]\n1\tAnna\tB-PER\t['N']\t[1]\n",
     "line 3: unknown label 'B-PER'; expected one of: O, B-Loc"),
    ("msra", "train", "北\tB-LOC\n京 I-LOC\n", "line 2: expected 2 tab-separated columns, found 1"),
])
def test_bad_lines_name_the_file_the_line_and_what_was_expected(tmp_path, name, split, content, problem):
    path = write(tmp_path, name, split, content)
    with pytest.raises(ConfigError) as err:
        load_task(name, tmp_path)
    assert str(err.value).startswith(str(path)) and problem in str(err.value)


@pytest.mark.parametrize("name, content", [
    ("rte", ""), ("rte", "index\tsentence1\tsentence2\tlabel\n"), ("cb", "\n"), ("qnli", ""), ("mrpc", ""),
    ("conll2003", "-DOCSTART- -X- -X- O\n\n"), ("conll2004", ""), ("msra", "\n\n"),
])
def test_empty_files_are_named(tmp_path, name, content):
    path = write(tmp_path, name, "train", content)
    with pytest.raises(ConfigError, match="expected") as err:
        load_task(name, tmp_path)
    assert str(err.value).startswith(f"{path} ") and ("no examples" in str(err.value) or "empty" in str(err.value))


def test_bad_eval_file_is_named_too(tmp_path):
    write(tmp_path, "conll2003", "train", (FIXTURES / "conll2003" / "train.txt").read_text())
    write(tmp_path, "conll2003", "dev", (FIXTURES / "conll2003" / "valid.txt").read_text())
    path = write(tmp_path, "conll2003", "test", b"Peru NNP B-NP B-LOC\n\xff\xfe NNP B-NP O\n")
    with pytest.raises(ConfigError, match=f"{path}, line 2: expected UTF-8 text"):
        load_task("conll2003", tmp_path)


# --- the real data (../shared/data) ------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("name, split, rows, first_label_count", [
    ("rte", "train", 2490, 1249),  # entailment 1,249 / not_entailment 1,241
    ("cb", "train", 250, 115),  # entailment 115 / contradiction 119 / neutral 16
    ("mrpc", "train", 3668, 1194),  # 0: 1,194 / 1: 2,474
    ("mrpc", "dev", 408, 129),
    ("mrpc", "test", 1725, 578),
    ("sst2", "dev", 872, 428),
    ("qnli", "train", 8999, 4523),
    ("qnli", "valid", 1000, 504),
    ("qnli", "dev", 5463, 2702),
])
def test_real_sentence_counts(shared, name, split, rows, first_label_count):
    examples = real(shared, name, split)
    assert len(examples) == rows and sum(e.label == 0 for e in examples) == first_label_count


@pytest.mark.integration
@pytest.mark.parametrize("name, split, sentences, tokens, entity, count", [
    ("conll2003", "train", 14041, 203621, "B-PER", 6600),
    ("conll2003", "dev", 3250, 51362, "B-LOC", 1837),
    ("conll2003", "test", 3453, 46435, "B-ORG", 1661),
    ("conll2004", "train", 910, 26804, "B-Peop", 1145),
    ("conll2004", "dev", 243, 6975, "B-Org", 190),
    ("msra", "test", 3442, 172601, "B-PER", 1973),
])
def test_real_token_counts(shared, name, split, sentences, tokens, entity, count):
    examples = real(shared, name, split)
    tag = get_task(name).labels.index(entity)
    assert len(examples) == sentences and sum(len(e.text) for e in examples) == tokens
    assert all(len(e.text) == len(e.label) for e in examples)
    assert sum(e.label.count(tag) for e in examples) == count


@pytest.mark.integration
@pytest.mark.parametrize("name, missing", [("rte", "dev.tsv"), ("cb", "val.jsonl"), ("conll2004", "test.txt")])
def test_real_held_out_fallbacks(shared, name, missing):
    real(shared, name, "train")
    data = load_task(name, shared)
    task = data.task
    if (shared / task.folder / task.files[task.eval_split]).is_file():  # an evaluation machine has it
        assert data.eval_source == task.eval_split
    else:
        assert data.eval is data.valid and data.eval_source == f"valid ({missing} is absent: held out)"
    assert data.root == str(shared) and data.valid_source == ("dev" if name == "conll2004" else "10% of train (seed 0)")


@pytest.mark.integration
def test_real_carve_and_low_data_sample(shared):
    real(shared, "rte", "train")
    data = load_task("rte", shared, train_size=128, sample_seed=1)
    assert (len(data.train), len(data.valid)) == (128, 249)
    assert not {(e.text, e.text_pair) for e in data.train} & {(e.text, e.text_pair) for e in data.valid}
