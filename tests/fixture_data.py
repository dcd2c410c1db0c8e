"""Hand-written fixture data in the formats of ../shared/data (each folder's PROVENANCE.md describes them).

The texts live here and are written to a temporary folder, laid out like the shared data, when the tests
ask for it: no committed file carries a benchmark file's name, and none is a copy of benchmark data.
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from pathlib import Path

import pytest

FILES: dict[str, str] = {
    'cb/train.jsonl': (
        '{"premise": "I think it will rain. The clouds are dark.", "hypothesis": "it will rain", "label": "entailment", "idx": 0}\n'
        '{"premise": "I doubt he came. Nobody saw him.", "hypothesis": "he came", "label": "contradiction", "idx": 1}\n'
        '{"premise": "Maybe she knew. Who can tell?", "hypothesis": "she knew", "label": "neutral", "idx": 2}\n'
        '{"premise": "He said the door was open. We walked in.", "hypothesis": "the door was open", "label": "entailment", "idx": 3}\n'
        '{"premise": "I don\'t believe it is true. It sounds odd.", "hypothesis": "it is true", "label": "contradiction", "idx": 4}\n'
    ),
    'conll2003/test.txt': (
        '-DOCSTART- -X- -X- O\n'
        '\n'
        'Peru NNP B-NP B-LOC\n'
        'wins VBZ B-VP O\n'
        '. . O O\n'
    ),
    'conll2003/train.txt': (
        '-DOCSTART- -X- -X- O\n'
        '\n'
        'Acme NNP B-NP B-ORG\n'
        'hires VBZ B-VP O\n'
        'Dutch JJ B-NP B-MISC\n'
        'engineers NNS I-NP O\n'
        '. . O O\n'
        '\n'
        'Maria NNP B-NP B-PER\n'
        'Lopez NNP I-NP I-PER\n'
        '\n'
        '-DOCSTART- -X- -X- O\n'
        '\n'
        'OSLO NNP B-NP B-LOC\n'
        '2001-01-01 CD I-NP O\n'
        '\n'
    ),
    'conll2003/valid.txt': (
        '-DOCSTART- -X- -X- O\n'
        '\n'
        'TENNIS NNP B-NP O\n'
        'GLOBEX NNP B-NP B-ORG\n'
        '\n'
    ),
    'conll2004/dev.txt': (
        '#doc 7\n'
        "0\tLima\tB-Loc\t['N']\t[0]\n"
        "1\tis\tO\t['N']\t[1]\n"
        "2\tbig\tO\t['N']\t[2]\n"
    ),
    'conll2004/train.txt': (
        '#doc 1\n'
        "0\tGov.\tO\t['N']\t[0]\n"
        "1\tAnna\tB-Peop\t['N']\t[1]\n"
        "2\tSmith\tI-Peop\t['Live_In']\t[4]\n"
        "3\tof\tO\t['N']\t[3]\n"
        "4\tOhio\tB-Loc\t['N']\t[4]\n"
        '#doc 2\n'
        "0\tGlobex\tB-Org\t['N']\t[0]\n"
        "1\tsaid\tO\t['N']\t[1]\n"
        '#doc 3\n'
        "0\tThe\tO\t['N']\t[0]\n"
        "1\tGold\tB-Other\t['N']\t[1]\n"
        "2\tCup\tI-Other\t['N']\t[2]\n"
    ),
    # E2E NLG: `mr,ref` CSV with CRLF line ends like the real files; shared MRs, £ and é, a quoted comma,
    # and a reference that spans two lines.
    'e2e_nlg/devset.csv': (
        'mr,ref\r\n'
        '"name[Aromi], eatType[coffee shop]",Aromi is a coffee shop.\r\n'
        '"name[Aromi], eatType[coffee shop]",There is a coffee shop called Aromi.\r\n'
        '"name[Loch Fyne], food[French], priceRange[£20-25]",Loch Fyne serves French food for £20-25.\r\n'
    ),
    'e2e_nlg/testset_w_refs.csv': (
        '"mr","ref"\n'
        '"name[The Punter], area[city centre]","The Punter is in the city centre."\n'
        '"name[The Punter], area[city centre]","In the city centre, there is The Punter."\n'
    ),
    'e2e_nlg/trainset.csv': (
        'mr,ref\r\n'
        '"name[The Mill], eatType[pub], priceRange[more than £30]",The Mill is a pub where meals cost more than £30.\r\n'
        '"name[Blue Spice], area[riverside]","Blue Spice, by the river, serves food."\r\n'
        '"name[The Mill], eatType[pub], priceRange[more than £30]","Expensive, at over £30: The Mill pub."\r\n'
        '"name[Café Rouge], near[Café Sicilia]","Café Rouge is near Café Sicilia.\r\n  It is small."\r\n'
        '"name[Blue Spice], area[riverside]",Blue Spice is on the riverside.\r\n'
        '"name[Zizzi], food[Italian]",Zizzi serves Italian food.\r\n'
    ),
    'mrpc/dev.tsv': (
        '\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n'
        '1\t201\t202\tThe talks ended .\tThe negotiations finished .\n'
        '0\t203\t204\tIt rained .\tPrices fell .\n'
    ),
    'mrpc/test.tsv': (
        'index\tQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n'
        '0\t1\t301\t302\tThey won .\tThey were victorious .\n'
    ),
    'mrpc/train.tsv': (
        '\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n'
        '1\t101\t102\tThe cat sat on the mat .\tA cat was sitting on the mat .\n'
        '0\t103\t104\tStocks rose " sharply " today .\tThe weather was cold .\n'
        '1\t105\t106\tHe left at noon .\tHe departed at midday .\n'
        '0\t107\t108\tShe bought a car .\tShe sold her house .\n'
    ),
    'msra_ner/msra_test_bio': (
        '上\tB-LOC\n'
        '海\tI-LOC\n'
        '\n'
        '李\tB-PER\n'
        '四\tI-PER\n'
        '\n'
    ),
    'msra_ner/msra_train_bio': (
        '当\tO\n'
        '北\tB-LOC\n'
        '京\tI-LOC\n'
        '\n'
        '张\tB-PER\n'
        '三\tI-PER\n'
        '说\tO\n'
        '\n'
        '新\tB-ORG\n'
        '华\tI-ORG\n'
        '社\tI-ORG\n'
        '\n'
        '好\tO\n'
        '\n'
    ),
    'qnli/dev.tsv': (
        'index\tquestion\tsentence\tlabel\n'
        '0\tWhere is the river?\tThe river runs through the valley.\tentailment\n'
        '1\tWho won?\tThe match was postponed.\tnot_entailment\n'
    ),
    'qnli/train_subset_powerfulpromptft/dev.json': (
        '{\n'
        '    "0": {\n'
        '        "text_a": "How tall is the tower?",\n'
        '        "text_b": "Its colour is grey.",\n'
        '        "label": "not_entailment"\n'
        '    }\n'
        '}\n'
    ),
    'qnli/train_subset_powerfulpromptft/train.json': (
        '{\n'
        '    "0": {\n'
        '        "text_a": "Who wrote the play?",\n'
        '        "text_b": "The play was written by a young poet.",\n'
        '        "label": "entailment"\n'
        '    },\n'
        '    "1": {\n'
        '        "text_a": "When did the war end?",\n'
        '        "text_b": "The city is known for its bridges.",\n'
        '        "label": "not_entailment"\n'
        '    },\n'
        '    "2": {\n'
        '        "text_a": "What is the capital?",\n'
        '        "text_b": "The capital is a port city.",\n'
        '        "label": "entailment"\n'
        '    }\n'
        '}\n'
    ),
    'rte/train.tsv': (
        'index\tsentence1\tsentence2\tlabel\n'
        '0\tA man is playing a guitar.\tA man plays music.\tentailment\n'
        '1\tThe sun rose early.\tIt was night all day.\tnot_entailment\n'
        '2\tShe won the race.\tShe took part in a race.\tentailment\n'
        '3\tThe shop is closed.\tThe shop sells bread at midnight.\tnot_entailment\n'
        '4\tBirds can fly.\tSome animals fly.\tentailment\n'
        '5\tHe is asleep.\tHe is running a marathon.\tnot_entailment\n'
    ),
    'sst2/dev.tsv': (
        'text\tlabel\n'
        'the best film of the year \t1\n'
        'boring from start to end \t0\n'
    ),
    'sst2/test.tsv': (
        'text\tlabel\n'
        '0\tan unlabelled test sentence \n'
    ),
    'sst2/train.tsv': (
        'text\tlabel\n'
        'a gentle , moving film \t1\n'
        'a dull , lifeless mess \t0\n'
        'warm and witty \t1\n'
        'it never finds its footing \t0\n'
        'beautifully acted \t1\n'
        'tedious and flat \t0\n'
    ),
    # WebNLG 2017 XML: train and dev are folders of XML files (any names); the test file is held out.
    'webnlg2017/dev/1triples/dev_fixture.xml': (
        '<benchmark>\n'
        '  <entries>\n'
        '    <entry category="City" eid="Id1" size="1">\n'
        '      <originaltripleset>\n'
        '        <otriple>Oslo | country | Norway</otriple>\n'
        '      </originaltripleset>\n'
        '      <modifiedtripleset>\n'
        '        <mtriple>Oslo | country | Norway</mtriple>\n'
        '      </modifiedtripleset>\n'
        '      <lex comment="good" lid="Id1">Oslo is in Norway.</lex>\n'
        '    </entry>\n'
        '  </entries>\n'
        '</benchmark>\n'
    ),
    'webnlg2017/train/1triples/train_fixture_1.xml': (
        '<benchmark>\n'
        '  <entries>\n'
        '    <entry category="Airport" eid="Id1" size="1">\n'
        '      <originaltripleset>\n'
        '        <otriple>Acme_Field | city | Springfield</otriple>\n'
        '      </originaltripleset>\n'
        '      <modifiedtripleset>\n'
        '        <mtriple>Acme_Field | cityServed | "Springfield, Ohio"</mtriple>\n'
        '      </modifiedtripleset>\n'
        '      <lex comment="good" lid="Id1">Acme Field serves Springfield, Ohio.</lex>\n'
        '      <lex comment="toFix" lid="Id2">Springfield &amp; its airport, Acme Field.</lex>\n'
        '    </entry>\n'
        '    <entry category="Food" eid="Id2" size="1">\n'
        '      <modifiedtripleset>\n'
        '        <mtriple>Bean_Stew | country | Narnia</mtriple>\n'
        '      </modifiedtripleset>\n'
        '      <lex comment="good" lid="Id1">Bean stew comes from Narnia.</lex>\n'
        '    </entry>\n'
        '  </entries>\n'
        '</benchmark>\n'
    ),
    'webnlg2017/train/2triples/train_fixture_2.xml': (
        '<benchmark>\n'
        '  <entries>\n'
        '    <entry category="Astronaut" eid="Id1" size="2">\n'
        '      <originaltripleset>\n'
        '        <otriple>Ann_Lee | birthPlace | Lima</otriple>\n'
        '        <otriple>Ann_Lee | job | Pilot</otriple>\n'
        '      </originaltripleset>\n'
        '      <modifiedtripleset>\n'
        '        <mtriple>Ann_Lee | birthPlace | Lima</mtriple>\n'
        '        <mtriple>Ann_Lee | occupation | Test_pilot</mtriple>\n'
        '      </modifiedtripleset>\n'
        '      <lex comment="good" lid="Id1">Ann Lee, born in Lima, is a test pilot.</lex>\n'
        '    </entry>\n'
        '  </entries>\n'
        '</benchmark>\n'
    ),
}


@cache
def fixture_root() -> Path:
    """The folder holding FILES (written once per test session, removed at exit)."""
    root = Path(tempfile.mkdtemp(prefix="memtune-fixtures-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    for name, text in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


# --- reading the fixtures -------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def isolated(monkeypatch):
    """No $MEMTUNE_DATA and no hub unless a test sets them (autouse in every module that imports it)."""
    import memtune.tasks.data as task_data

    monkeypatch.delenv("MEMTUNE_DATA", raising=False)
    monkeypatch.setattr(task_data, "_load_dataset", lambda: None)


def read(task_name: str, split: str, root: Path | None = None):
    """The examples of one split of a task, read by the task's reader from the fixtures (or ``root``)."""
    from memtune.tasks import READERS, get_task

    task = get_task(task_name)
    path = (root or fixture_root()) / task.folder / task.files[split]
    return READERS[task.reader_for(split)](path, task)


# --- the real data (../shared/data), for integration tests -------------------------------------------


@pytest.fixture(scope="module")
def shared():
    """The shared data root; the test is skipped when the real benchmark files are not beside the clone."""
    from memtune.tasks import shared_data_dir

    root = shared_data_dir()
    if root is None:
        pytest.skip("no shared/data folder above the package (the real benchmark files are not here)")
    return root


def real(root: Path, task_name: str, split: str):
    """The examples of one split of a task's real data (a file or a folder), or a skip when it is absent (held out)."""
    from memtune.tasks import get_task

    task = get_task(task_name)
    path = root / task.folder / task.files[split]
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return read(task_name, split, root)


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """A random 2-layer GPT-2 and a word-level tokenizer over the fixture words, with an end-of-sequence
    token, saved like a hub model (for the data-to-text runner and bench)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    words = {w for f in fixture_root().rglob("*") if f.is_file() for w in f.read_text(errors="ignore").split()}
    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "[UNK]", *sorted(words)[:300]])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="[UNK]")
    tokenizer.save_pretrained(folder)
    config = GPT2Config(vocab_size=len(vocab), n_positions=256, n_embd=32, n_layer=2, n_head=4, n_inner=48,
                        bos_token_id=1, eos_token_id=1, pad_token_id=0)  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder
