"""Data-to-text tasks (E2E, WebNLG) in the task registry: hand-written fixtures in the real formats, plus the
real data when present."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

import memtune.tasks.data as task_data
from memtune.errors import ConfigError
from memtune.tasks import (
    GENERATION_METRICS,
    READERS,
    TASKS,
    GenerationExample,
    category_splits,
    get_task,
    linearise_triples,
    load_task,
    pairs,
    shared_data_dir,
)
from fixture_data import fixture_root, isolated, read, real, shared  # noqa: F401 - isolated, shared: fixtures

FIXTURES = fixture_root()  # the hand-written fixture files, in a temporary folder
SEEN = ("Airport", "Astronaut", "Building", "City", "ComicsCharacter", "Food", "Monument", "SportsTeam",
        "University", "WrittenWork")  # webnlg2017/PROVENANCE.md


def copy_task(task_name: str, root: Path) -> Path:
    """The task's fixture folder copied under ``root``; returns the copy."""
    folder = get_task(task_name).folder
    return Path(shutil.copytree(FIXTURES / folder, root / folder))


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def entry(eid: str = "Id1", category: str = "Airport", triples: tuple[str, ...] = ("A_b | p | C",),
          lexes: tuple[str, ...] = ("A b p C.",)) -> str:
    cat = f' category="{category}"' if category else ""
    return (f'<entry{cat} eid="{eid}" size="{len(triples)}"><modifiedtripleset>'
            + "".join(f"<mtriple>{t}</mtriple>" for t in triples) + "</modifiedtripleset>"
            + "".join(f'<lex comment="good" lid="Id{i}">{x}</lex>' for i, x in enumerate(lexes, 1)) + "</entry>")


def benchmark(*entries: str) -> str:
    return "<benchmark>\n<entries>\n" + "\n".join(entries) + "\n</entries>\n</benchmark>\n"


def with_webnlg_test_file(root: Path) -> None:
    """The WebNLG fixture copied under ``root`` with a test file: two seen categories, one unseen (Artist)."""
    copy_task("webnlg", root)
    write(root / "webnlg2017" / "test" / "testdata_with_lex.xml", benchmark(
        entry("Id1", "Food", ("Rice | country | Peru",), ("Rice is from Peru.", "Peru grows rice.")),
        entry("Id2", "Artist", ("Bo | genre | Jazz",), ("Bo plays jazz music.",)),
        entry("Id3", "Airport", ("Acme_Field | runwayLength | 2000.0",), ("Acme Field has a 2000 m runway.",)),
    ))


# --- registry ----------------------------------------------------------------------------------------


def test_registry_has_e2e_and_webnlg_with_the_paper_settings():
    generation = {name for name, task in TASKS.items() if task.kind == "generation"}
    assert generation == {"e2e", "webnlg"}
    for name in generation:
        task = get_task(name)
        assert task.labels == () and task.label_strings is None and task.max_new_tokens == 30
        assert (task.epochs, task.max_length, task.batch_size, task.batch_size_large) == (5, 256, 10, 5)
        assert (task.valid_split, task.eval_split) == ("dev", "test") and task.hub is None
        assert set(task.metric) <= set(GENERATION_METRICS) and task.notes
    e2e, webnlg = get_task("e2e"), get_task("webnlg")
    assert e2e.metric == ("bleu", "nist", "meteor", "rouge_l", "cider") and e2e.seen_categories == ()
    assert e2e.files == {"train": "trainset.csv", "dev": "devset.csv", "test": "testset_w_refs.csv"}
    assert webnlg.metric == ("bleu", "meteor", "ter") and webnlg.seen_categories == SEEN
    assert webnlg.files == {"train": "train", "dev": "dev", "test": "test/testdata_with_lex.xml"}
    assert (e2e.reader, webnlg.reader) == ("e2e_csv", "webnlg_xml")
    assert all(t.max_new_tokens is None for t in TASKS.values() if t.kind != "generation")


@pytest.mark.parametrize("base, changes, problem", [
    ("e2e", dict(labels=("good", "bad")), "a generation task has no labels, got ('good', 'bad')"),
    ("e2e", dict(label_strings=("0",)), "a generation task has no label_strings"),
    ("e2e", dict(metric="bleu"), "a generation task's metric must be a non-empty tuple of names from"),
    ("e2e", dict(metric=()), "a generation task's metric must be a non-empty tuple"),
    ("e2e", dict(metric=("bleu", "rouge")), "metric 'rouge' is not one of ('bleu', 'nist'"),
    ("e2e", dict(metric=("bleu", "bleu")), "metric names ('bleu', 'bleu') repeat"),
    ("e2e", dict(max_new_tokens=None), "a generation task needs max_new_tokens, a positive integer, got None"),
    ("e2e", dict(max_new_tokens=0), "a generation task needs max_new_tokens, a positive integer, got 0"),
    ("webnlg", dict(seen_categories=("Food", "Food")), "seen_categories repeat"),
    ("rte", dict(max_new_tokens=30), "max_new_tokens is for generation tasks only, not a sentence task"),
    ("rte", dict(metric=("bleu",)), "metric ('bleu',) is not one of ('accuracy', 'f1', 'entity_f1')"),
    ("rte", dict(labels=()), "a sentence task needs labels"),
    ("conll2003", dict(seen_categories=("Food",)), "seen_categories is for generation tasks only, not a token task"),
    ("e2e", dict(kind="table"), "kind 'table' is not one of ('sentence', 'token', 'generation')"),
])
def test_task_fields_are_validated_per_kind(base, changes, problem):
    with pytest.raises(ConfigError) as err:
        dataclasses.replace(get_task(base), **changes)
    assert str(err.value).startswith(f"task {base!r}: ") and problem in str(err.value)


# --- E2E reader --------------------------------------------------------------------------------------


def test_e2e_rows_are_grouped_by_mr_in_first_seen_order():
    examples = read("e2e", "train")
    assert all(isinstance(e, GenerationExample) and e.category is None for e in examples)
    assert [e.source for e in examples] == [  # verbatim MR strings, £ and é included
        "name[The Mill], eatType[pub], priceRange[more than £30]",
        "name[Blue Spice], area[riverside]",
        "name[Café Rouge], near[Café Sicilia]",
        "name[Zizzi], food[Italian]",
    ]
    assert examples[0].references == ["The Mill is a pub where meals cost more than £30.",
                                      "Expensive, at over £30: The Mill pub."]
    assert examples[1].references == ["Blue Spice, by the river, serves food.",  # a quoted comma
                                      "Blue Spice is on the riverside."]
    assert examples[2].references == ["Café Rouge is near Café Sicilia. It is small."]  # a record over two lines


def test_e2e_quoted_header_and_lf_line_ends():
    examples = read("e2e", "test")
    assert len(examples) == 1 and examples[0].source == "name[The Punter], area[city centre]"
    assert examples[0].references == ["The Punter is in the city centre.", "In the city centre, there is The Punter."]


_HEADER = "mr,ref\r\n"
_ROW = '"name[A], food[B]",A serves B.\r\n'
_TWO_LINE_ROW = '"name[A], food[B]","A serves B.\r\nIt is nice."\r\n'


@pytest.mark.parametrize("content, problem", [
    (_HEADER + _ROW + '"name[A], food[B]",A serves B.,extra\r\n',
     "line 3: expected 2 comma-separated fields (mr, ref), found 3"),
    (_HEADER + _ROW + '"name[A], food[B]"\r\n', "line 3: expected 2 comma-separated fields (mr, ref), found 1"),
    (_HEADER + _TWO_LINE_ROW + _ROW + '"name[C]", \r\n', "line 5: empty ref field"),  # records span lines: line 5
    (_HEADER + ' ,A serves B.\r\n', "line 2: empty mr field"),
    (_HEADER + _ROW + '"name[A], food[B]",A "serves" B.\r\n' + '"name[C]","unclosed\r\n', "line 4: malformed CSV"),
    ("meaning,text\r\n" + _ROW, "line 1: expected the header `mr,ref`, found 'meaning,text'"),
    ("MR\r\n" + '"name[A]"\r\n', "line 1: expected the header `mr,ref`, found 'MR'"),  # testset.csv has no references
    (_HEADER + '"name[A], food[B]"x,A serves B.\r\n', "line 2: malformed CSV"),
    ((_HEADER + _ROW).encode() + b"\xa3\x30,broken\r\n", "line 3: expected UTF-8 text"),  # a Latin-1 pound sign
])
def test_bad_e2e_rows_name_the_file_and_the_line(tmp_path, content, problem):
    path = write(tmp_path / "e2e_nlg" / "trainset.csv", content)
    with pytest.raises(ConfigError) as err:
        load_task("e2e", tmp_path)
    assert str(err.value).startswith(f"{path}, ") and problem in str(err.value)


@pytest.mark.parametrize("content, problem", [("", "is empty"), ("mr,ref\r\n\r\n", "holds no examples")])
def test_empty_e2e_files_are_named(tmp_path, content, problem):
    path = write(tmp_path / "e2e_nlg" / "trainset.csv", content)
    with pytest.raises(ConfigError, match="expected a `mr,ref` header") as err:
        load_task("e2e", tmp_path)
    assert str(err.value).startswith(f"{path} {problem}")


# --- WebNLG reader -----------------------------------------------------------------------------------


def test_webnlg_reads_modified_triples_every_lex_and_the_category():
    examples = read("webnlg", "train")  # 1triples/ then 2triples/
    assert [(e.source, e.category) for e in examples] == [
        ('Acme_Field : cityServed : "Springfield, Ohio"', "Airport"),  # modified triple, not the original one
        ("Bean_Stew : country : Narnia", "Food"),
        ("Ann_Lee : birthPlace : Lima | Ann_Lee : occupation : Test_pilot", "Astronaut"),
    ]
    assert examples[0].references == ["Acme Field serves Springfield, Ohio.",
                                      "Springfield & its airport, Acme Field."]  # a 'toFix' lex counts too
    assert [len(e.references) for e in examples] == [2, 1, 1]


def test_linearisation_keeps_names_verbatim():
    triples = [("Aarhus_Airport", "cityServed", '"Aarhus, Denmark"'), ("Aarhus", "leader", "Jacob_B")]
    assert linearise_triples(triples) == 'Aarhus_Airport : cityServed : "Aarhus, Denmark" | Aarhus : leader : Jacob_B'


def test_webnlg_reads_a_single_file_too(tmp_path):
    path = write(tmp_path / "one.xml", benchmark(entry("Id7", "Artist", ("X | genre | Jazz",), ("X plays jazz.",))))
    examples = READERS["webnlg_xml"](path, get_task("webnlg"))
    assert examples == [GenerationExample("X : genre : Jazz", ["X plays jazz."], "Artist")]


@pytest.mark.parametrize("content, problem", [
    (benchmark(entry("Id1"), entry("Id2").replace("</lex>", "</lax>")), "line 4, column "),  # the second entry's line
    (benchmark(entry("Id1"), entry("Id2", triples=())),
     "entry eid='Id2': the entry has no triples (<modifiedtripleset>/<mtriple>)"),
    (benchmark(entry("Id1"), entry("Id2", lexes=())), "entry eid='Id2': the entry has no references (<lex>)"),
    (benchmark(entry("Id3", lexes=("fine", "  "))), "entry eid='Id3': reference 2 (<lex>) is empty"),
    (benchmark(entry("Id4", triples=("A | only_two",))),
     "entry eid='Id4': expected a triple `subject | predicate | object`, found 'A | only_two'"),
    (benchmark(entry("Id5", category="")), "entry eid='Id5': the entry has no category attribute"),
    ("<benchmark><entries></entries></benchmark>", "found no <entry>"),
])
def test_bad_webnlg_xml_names_the_file_and_the_entry(tmp_path, content, problem):
    copy_task("webnlg", tmp_path)
    path = write(tmp_path / "webnlg2017" / "train" / "3triples" / "bad.xml", content)
    with pytest.raises(ConfigError) as err:
        load_task("webnlg", tmp_path)
    assert str(err.value).startswith(str(path)) and problem in str(err.value)
    if "</lax>" in content:
        assert "malformed XML (mismatched tag)" in str(err.value)


def test_webnlg_folder_without_xml_is_named(tmp_path):
    (tmp_path / "webnlg2017" / "train" / "1triples").mkdir(parents=True)
    with pytest.raises(ConfigError, match="train holds no XML files: expected WebNLG XML files"):
        load_task("webnlg", tmp_path)


def test_webnlg_xml_entities_are_not_expanded_from_outside(tmp_path):
    """ElementTree never fetches external entities: an undefined one is a parse error, named by line."""
    doc = ('<?xml version="1.0"?>\n<!DOCTYPE b [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
           + benchmark(entry(lexes=("&x;",))))
    path = write(tmp_path / "x.xml", doc)
    with pytest.raises(ConfigError, match=r"x\.xml, line \d+, column \d+: malformed XML"):
        READERS["webnlg_xml"](path, get_task("webnlg"))


# --- loading, splitting, helpers ---------------------------------------------------------------------


def test_e2e_loads_train_dev_and_test():
    data = load_task("e2e", FIXTURES)
    assert (len(data.train), len(data.valid), len(data.eval)) == (4, 2, 1)
    assert (data.valid_source, data.eval_source) == ("dev", "test") and data.notes == [get_task("e2e").notes]
    assert data.valid[1].source == "name[Loch Fyne], food[French], priceRange[£20-25]"


def test_webnlg_scores_on_dev_when_the_test_file_is_held_out():
    data = load_task("webnlg", FIXTURES)
    assert data.eval is data.valid and data.valid_source == "dev"
    assert data.eval_source == "valid (test/testdata_with_lex.xml is absent: held out)"
    assert any("test/testdata_with_lex.xml" in n and "held out" in n for n in data.notes)
    assert [e.source for e in data.valid] == ["Oslo : country : Norway"]


def test_webnlg_test_file_is_used_when_present_and_splits_by_category(tmp_path):
    with_webnlg_test_file(tmp_path)
    data = load_task("webnlg", tmp_path)
    assert data.eval_source == "test" and not any("held out" in n for n in data.notes)
    splits = category_splits(data.eval, data.task.seen_categories)
    assert [e.category for e in splits["seen"]] == ["Food", "Airport"]
    assert [e.category for e in splits["unseen"]] == ["Artist"]
    assert splits["all"] == data.eval and splits["all"] is not data.eval
    assert splits["seen"][0].references == ["Rice is from Peru.", "Peru grows rice."]


def test_category_splits_needs_categories():
    with pytest.raises(ConfigError, match="needs a category on every example; 4 of 4 have none"):
        category_splits(read("e2e", "train"), SEEN)


def test_pairs_flatten_every_reference():
    examples = read("e2e", "train")
    flat = pairs(examples)
    assert len(flat) == 6 == sum(len(e.references) for e in examples)
    mill = "name[The Mill], eatType[pub], priceRange[more than £30]"
    assert flat[:3] == [
        (mill, "The Mill is a pub where meals cost more than £30."),
        (mill, "Expensive, at over £30: The Mill pub."),
        ("name[Blue Spice], area[riverside]", "Blue Spice, by the river, serves food."),
    ]
    assert pairs([]) == []


def test_validation_is_carved_by_input_when_dev_is_absent(tmp_path):
    folder = copy_task("e2e", tmp_path)
    (folder / "devset.csv").unlink()
    data = load_task("e2e", tmp_path, valid_fraction=0.25, seed=1)
    assert data.valid_source == "25% of train (seed 1)" and len(data.valid) == 1 and len(data.train) == 3
    assert any("devset.csv is absent; validating on 25% of train (seed 1)" in n for n in data.notes)
    assert not {e.source for e in data.valid} & {e.source for e in data.train}  # an input's references stay together
    assert sum(len(e.references) for e in data.train + data.valid) == 6
    again = load_task("e2e", tmp_path, valid_fraction=0.25, seed=1)
    assert [e.source for e in again.valid] == [e.source for e in data.valid]


def test_a_generation_task_without_a_dev_split_carves_and_falls_back(monkeypatch):
    carved = dataclasses.replace(get_task("webnlg"), name="webnlg_carved", valid_split=None)
    monkeypatch.setitem(TASKS, "webnlg_carved", carved)
    data = load_task("webnlg_carved", FIXTURES, valid_fraction=0.34)
    assert data.valid_source == "34% of train (seed 0)" and (len(data.train), len(data.valid)) == (2, 1)
    assert data.eval is data.valid and "held out" in data.eval_source


def test_train_size_samples_distinct_inputs():
    first = load_task("e2e", FIXTURES, train_size=2, sample_seed=3)
    again = load_task("e2e", FIXTURES, train_size=2, sample_seed=3)
    assert len(first.train) == 2 and [e.source for e in first.train] == [e.source for e in again.train]
    assert len({e.source for e in first.train}) == 2
    assert any("training on 2 of 4 inputs, each with all its references (sample seed 3)" in n for n in first.notes)
    too_many = "train_size must be between 1 and the 4 training inputs, each with all its references, got 5"
    with pytest.raises(ConfigError, match=too_many):
        load_task("e2e", FIXTURES, train_size=5)


def test_missing_generation_data_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(task_data, "shared_data_dir", lambda: None)
    with pytest.raises(ConfigError, match=r"no data for task 'webnlg': looked for webnlg2017/train under"):
        load_task("webnlg", tmp_path)


# --- the real data (../shared/data) ------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("name, split, inputs, references", [
    ("e2e", "train", 4862, 42061),  # e2e_nlg/PROVENANCE.md: unique MRs / rows
    ("e2e", "dev", 547, 4672),
    ("e2e", "test", 630, 4693),
    ("webnlg", "train", 6940, 18102),  # webnlg2017/PROVENANCE.md: entries / lex
    ("webnlg", "dev", 872, 2268),
    ("webnlg", "test", 1862, 4928),  # held out here: skips
])
def test_real_generation_counts(shared, name, split, inputs, references):
    examples = real(shared, name, split)
    assert len(examples) == inputs and sum(len(e.references) for e in examples) == references
    assert all(e.source and e.references and all(e.references) for e in examples)
    if name == "webnlg":
        seen = category_splits(examples, get_task("webnlg").seen_categories)
        assert len(seen["seen"]) == (971 if split == "test" else inputs)
    else:
        assert len({e.source for e in examples}) == inputs


@pytest.mark.integration
def test_real_e2e_and_webnlg_first_examples(shared):
    e2e = real(shared, "e2e", "train")
    assert e2e[0].source == ("name[The Vaults], eatType[pub], priceRange[more than £30], customer rating[5 out of 5], "
                             "near[Café Adriatic]")
    webnlg = real(shared, "webnlg", "train")
    assert (webnlg[0].source, webnlg[0].category) == ('Aarhus_Airport : cityServed : "Aarhus, Denmark"', "Airport")


@pytest.mark.integration
def test_real_generation_tasks_load_end_to_end(shared):
    real(shared, "e2e", "train")
    e2e = load_task("e2e", shared, train_size=500, sample_seed=1)
    assert (len(e2e.train), len(e2e.valid), len(e2e.eval)) == (500, 547, 630) and e2e.eval_source == "test"
    real(shared, "webnlg", "train")
    webnlg = load_task("webnlg", shared)
    test_file = shared / "webnlg2017" / "test" / "testdata_with_lex.xml"
    assert (len(webnlg.train), len(webnlg.valid)) == (6940, 872)
    if test_file.is_file():  # an evaluation machine has it
        assert webnlg.eval_source == "test" and len(webnlg.eval) == 1862
    else:
        assert webnlg.eval is webnlg.valid and "held out" in webnlg.eval_source


def test_webnlg_test_split_is_scored_seen_unseen_and_all(tmp_path):
    from memtune.metrics import generation_scores
    from memtune.train import category_scores

    with_webnlg_test_file(tmp_path)
    data = load_task("webnlg", tmp_path)
    predictions = ["Rice is from Peru.", "Bo plays rock.", "Acme Field has a long runway."]
    scores = category_scores(data.task, data.eval, predictions)
    assert set(scores) == {f"{m}/{p}" for m in ("bleu", "meteor", "ter") for p in ("seen", "unseen")}
    seen = generation_scores([predictions[0], predictions[2]], [data.eval[0].references, data.eval[2].references],
                             ("bleu", "ter"), task="webnlg")  # fmt: skip
    assert scores["bleu/seen"] == seen["bleu"] and scores["ter/seen"] == seen["ter"]
    unseen = generation_scores([predictions[1]], [data.eval[1].references], ("bleu",), task="webnlg")
    assert scores["bleu/unseen"] == unseen["bleu"] and scores["bleu/unseen"] != scores["bleu/seen"]
    dev = load_task("webnlg", FIXTURES)  # dev: seen categories only, so no split of the score
    assert category_scores(dev.task, dev.eval, ["Oslo is in Norway."]) == {}
    e2e = load_task("e2e", FIXTURES)  # no categories
    assert category_scores(e2e.task, e2e.eval, [""] * len(e2e.eval)) == {}
