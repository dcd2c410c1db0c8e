"""The Memory-Tuning paper's tasks, one declarative entry each: the eight NLU tasks of Table I and the
two data-to-text generation tasks (E2E, WebNLG) for causal LMs.

Everything task-specific lives here: where the files are, which reader parses them, which columns or
fields hold the text and the label, how labels are spelled, the splits used for early stopping and
for reporting, and the paper's hyperparameters. A new GLUE-style, CoNLL-style or table-to-text task
is one entry.

Kinds: "sentence" and "token" tasks are classification (``labels``, one ``metric`` name) and read
into ``Example``s; "generation" tasks have no labels, a tuple of metric names and ``max_new_tokens``,
and read into ``GenerationExample``s (one per distinct input, with all its references).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from .readers import READERS

KINDS = ("sentence", "token", "generation")
METRICS = ("accuracy", "f1", "entity_f1")  # classification tasks: one of these
GENERATION_METRICS = ("bleu", "nist", "meteor", "rouge_l", "cider", "ter")  # generation tasks: a tuple of these
HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}  # our split name -> datasets' name


@dataclass(frozen=True, kw_only=True)
class Task:
    """One task: its data layout, labels, metric, evaluation protocol and Table I settings."""

    name: str
    kind: str  # "sentence", "token" or "generation"
    folder: str  # folder under a data root
    files: dict[str, str]  # split -> path relative to the folder (a file, or a folder of files for webnlg_xml;
    # present or held out)
    reader: str  # key into READERS (for every split not in split_readers)
    labels: tuple[str, ...] = ()  # label names in id order (NER: the BIO tag set, "O" first); generation: none
    metric: str | tuple[str, ...]  # "accuracy", "f1" (positive class = id 1) or "entity_f1"; generation: a tuple
    # of GENERATION_METRICS names in reporting order (computed by memtune.metrics)
    valid_split: str | None  # split for early stopping; None = carve from train
    eval_split: str  # split the paper reports
    epochs: int
    max_length: int  # tokens per input (generation: prompt + reference)
    batch_size: int  # BERT-base (generation: GPT-2 Medium)
    batch_size_large: int  # BERT-large (generation: GPT-2 Large)
    max_new_tokens: int | None = None  # generation only: the cap on generated tokens when decoding
    seen_categories: tuple[str, ...] = ()  # generation only: categories seen in training (WebNLG's S/U/A report)
    hub: tuple[str, ...] | None = None  # args for datasets.load_dataset
    notes: str = ""  # data caveats to print with results
    title: str = ""  # display name, e.g. "CoNLL-2003"
    label_strings: tuple[str, ...] | None = None  # how the files spell the labels, in id order, if not `labels`
    columns: int | None = None  # exact column count of a data line (column readers)
    text_col: int = 0  # column of the text / token
    pair_col: int | None = None  # column of the second sentence
    label_col: int = -1  # column of the label / tag
    fields: tuple[str | None, ...] = ()  # (text, pair or None, label) names for keyed formats (json, tsv header)
    hub_fields: tuple[str | None, ...] = ()  # (text, pair or None, label) in the hub dataset
    split_readers: dict[str, str] = field(default_factory=dict)  # split -> reader, where a split's format differs

    def __post_init__(self) -> None:
        problems = [
            f"kind {self.kind!r} is not one of {KINDS}" if self.kind not in KINDS else "",
            *(f"reader {r!r} is not one of {tuple(READERS)}" for r in {self.reader, *self.split_readers.values()}
              if r not in READERS),
            *(f"split_readers names split {s!r}, which is not in files" for s in self.split_readers if s not in self.files),
            "files has no 'train' entry" if "train" not in self.files else "",
            f"eval_split {self.eval_split!r} is not in files" if self.eval_split not in self.files else "",
            f"valid_split {self.valid_split!r} is not in files"
            if self.valid_split is not None and self.valid_split not in self.files else "",
            "valid_split must not be 'test' (a test split is never used for early stopping)"
            if self.valid_split == "test" else "",
            "valid_split and eval_split must differ" if self.valid_split == self.eval_split else "",
            *(self._generation_problems() if self.kind == "generation" else self._classification_problems()),
        ]
        problems = [p for p in problems if p]
        if problems:
            raise ConfigError(f"task {self.name!r}: " + "; ".join(problems))

    def _classification_problems(self) -> list[str]:
        return [
            f"a {self.kind} task needs labels" if not self.labels else "",
            f"metric {self.metric!r} is not one of {METRICS}" if self.metric not in METRICS else "",
            f"label_strings has {len(self.label_strings)} entries for {len(self.labels)} labels"
            if self.label_strings is not None and len(self.label_strings) != len(self.labels) else "",
            "a token task's labels must start with 'O'" if self.kind == "token" and self.labels[:1] != ("O",) else "",
            f"max_new_tokens is for generation tasks only, not a {self.kind} task (got {self.max_new_tokens})"
            if self.max_new_tokens is not None else "",
            f"seen_categories is for generation tasks only, not a {self.kind} task" if self.seen_categories else "",
        ]

    def _generation_problems(self) -> list[str]:
        metrics = self.metric if isinstance(self.metric, tuple) else ()
        tokens = self.max_new_tokens
        return [
            f"a generation task has no labels, got {self.labels}" if self.labels else "",
            "a generation task has no label_strings" if self.label_strings is not None else "",
            f"a generation task's metric must be a non-empty tuple of names from {GENERATION_METRICS}, "
            f"got {self.metric!r}" if not metrics else "",
            *(f"metric {m!r} is not one of {GENERATION_METRICS}" for m in metrics if m not in GENERATION_METRICS),
            f"metric names {metrics} repeat" if len(set(metrics)) != len(metrics) else "",
            f"a generation task needs max_new_tokens, a positive integer, got {tokens!r}"
            if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1 else "",
            f"seen_categories repeat: {self.seen_categories}"
            if len(set(self.seen_categories)) != len(self.seen_categories) else "",
        ]

    def __hash__(self) -> int:
        return hash(self.name)

    def reader_for(self, split: str) -> str:
        """The READERS key that parses ``split``'s file."""
        return self.split_readers.get(split, self.reader)

    def label_index(self) -> dict[str, int]:
        """Label as spelled in the files -> label id."""
        return {s: i for i, s in enumerate(self.label_strings or self.labels)}


def _bio(*types: str) -> tuple[str, ...]:
    return ("O",) + tuple(f"{p}-{t}" for t in types for p in ("B", "I"))


_GLUE_FILES = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
_SENTENCE = dict(kind="sentence", valid_split=None, eval_split="dev", epochs=50, max_length=100)
_TOKEN = dict(kind="token", metric="entity_f1", eval_split="test", epochs=30)
_NLI = ("entailment", "not_entailment")
# Data-to-text on GPT-2 Medium / Large: 5 epochs and batch 10 as in Li & Liang's prefix-tuning scripts
# (gpt2/train_e2e.py defaults), batch 5 for GPT-2 Large, at most 30 new tokens when decoding (the paper's).
# max_length = 256 tokens for prompt + reference is our cap, not a number from their scripts (those leave
# --block_size unset, i.e. the model's 1,024).
# Measured with SmolLM2-135M's BPE tokenizer (GPT-2's is not installed here) and decoding.PROMPT: the
# longest E2E train pair is 128 tokens; on WebNLG train 18 of the 18,102 pairs exceed 256 (longest 273).
_GENERATION = dict(kind="generation", valid_split="dev", eval_split="test", epochs=5, max_length=256,
                   batch_size=10, batch_size_large=5, max_new_tokens=30)
WEBNLG_SEEN = ("Airport", "Astronaut", "Building", "City", "ComicsCharacter", "Food", "Monument", "SportsTeam",
               "University", "WrittenWork")  # the 10 train/dev categories; the test set adds 5 unseen ones

_ALL = (
    Task(
        name="sst2", title="SST-2", folder="sst2", files=dict(_GLUE_FILES), reader="tsv",
        columns=2, text_col=0, label_col=1,  # header reads `text\tlabel`: go by position
        labels=("negative", "positive"), label_strings=("0", "1"), metric="accuracy",
        batch_size=128, batch_size_large=64,
        hub=("glue", "sst2"), hub_fields=("sentence", None, "label"), **_SENTENCE,
    ),
    Task(
        name="mrpc", title="MRPC", folder="mrpc", files=dict(_GLUE_FILES), reader="tsv_header",
        fields=("#1 String", "#2 String", "Quality"),  # test.tsv has an extra index column: go by name
        labels=("not_equivalent", "equivalent"), label_strings=("0", "1"), metric="f1",
        batch_size=16, batch_size_large=16,
        hub=("glue", "mrpc"), hub_fields=("sentence1", "sentence2", "label"), **_SENTENCE,
    ),
    Task(
        name="qnli", title="QNLI", folder="qnli", reader="tsv",
        files={"train": "train_subset_powerfulpromptft/train.json",
               "valid": "train_subset_powerfulpromptft/dev.json",  # also drawn from GLUE train, not GLUE dev
               "dev": "dev.tsv", "test": "test.tsv"},
        split_readers={"train": "json_dict", "valid": "json_dict"}, fields=("text_a", "text_b", "label"),
        columns=4, text_col=1, pair_col=2, label_col=3, labels=_NLI, metric="accuracy",
        batch_size=128, batch_size_large=64,
        hub=("glue", "qnli"), hub_fields=("question", "sentence", "label"),
        **{**_SENTENCE, "valid_split": "valid"},
        notes="QNLI: the local copy trains on an 8,999-example subset of GLUE QNLI train (the full 104,743 "
              "are not available here) and validates on 1,000 more train examples; numbers are not "
              "comparable to full-data results.",
    ),
    Task(
        name="rte", title="RTE", folder="rte", files=dict(_GLUE_FILES), reader="tsv",
        columns=4, text_col=1, pair_col=2, label_col=3,
        labels=_NLI, metric="accuracy", batch_size=16, batch_size_large=16,
        hub=("glue", "rte"), hub_fields=("sentence1", "sentence2", "label"), **_SENTENCE,
    ),
    Task(
        name="cb", title="CB", folder="cb", reader="jsonl",
        files={"train": "train.jsonl", "dev": "val.jsonl", "test": "test.jsonl"},
        fields=("premise", "hypothesis", "label"),
        labels=("entailment", "contradiction", "neutral"), metric="accuracy",
        batch_size=16, batch_size_large=16,
        hub=("super_glue", "cb"), hub_fields=("premise", "hypothesis", "label"),
        **{**_SENTENCE, "max_length": 300},
    ),
    Task(
        name="conll2003", title="CoNLL-2003", folder="conll2003", reader="conll",
        files={"train": "train.txt", "dev": "valid.txt", "test": "test.txt"},
        columns=4, text_col=0, label_col=3,
        labels=_bio("PER", "ORG", "LOC", "MISC"), valid_split="dev",
        max_length=100, batch_size=128, batch_size_large=64,
        hub=("conll2003",), hub_fields=("tokens", None, "ner_tags"), **_TOKEN,
    ),
    Task(
        name="conll2004", title="CoNLL-2004", folder="conll2004", reader="conll04",
        files={"train": "train.txt", "dev": "dev.txt", "test": "test.txt"},
        columns=5, text_col=1, label_col=2,
        labels=_bio("Loc", "Peop", "Org", "Other"), valid_split="dev",
        max_length=100, batch_size=8, batch_size_large=8, **_TOKEN,
        notes="CoNLL-2004: the Bekoulis et al. split (train 910 / dev 243 / test 288 sentences); the "
              "paper's exact split is undocumented.",
    ),
    Task(
        name="msra", title="MSRA", folder="msra_ner", reader="bio_chars",
        files={"train": "msra_train_bio", "test": "msra_test_bio"},
        columns=2, text_col=0, label_col=1,
        labels=_bio("PER", "ORG", "LOC"), valid_split=None,
        max_length=60, batch_size=128, batch_size_large=64,
        hub=("msra_ner",), hub_fields=("tokens", None, "ner_tags"), **_TOKEN,
        notes="MSRA: Chinese, one token per character; the 45,000 / 3,442-sentence BIO version "
              "(no dev split: validation is carved from train).",
    ),
    Task(
        name="e2e", title="E2E", folder="e2e_nlg", reader="e2e_csv",
        files={"train": "trainset.csv", "dev": "devset.csv", "test": "testset_w_refs.csv"},
        metric=("bleu", "nist", "meteor", "rouge_l", "cider"), **_GENERATION,
        notes="E2E: the original (uncleaned) E2E NLG data; one example per distinct MR with all its "
              "references (train 4,862 / dev 547 / test 630 MRs); the source is the MR string verbatim.",
    ),
    Task(
        name="webnlg", title="WebNLG", folder="webnlg2017", reader="webnlg_xml",
        files={"train": "train", "dev": "dev", "test": "test/testdata_with_lex.xml"},  # folders of XML, and a file
        metric=("bleu", "meteor", "ter"), seen_categories=WEBNLG_SEEN, **_GENERATION,
        notes="WebNLG: the 2017 challenge XML; one example per entry with all its <lex> references (the "
              "'toFix' ones too); the source is the modified triples, each `subject : predicate : object` "
              "with DBpedia names verbatim (underscores kept), joined by ' | ' (Li & Liang's prefix-tuning "
              "format); seen / unseen / all = categories in / not in the 10 training categories.",
    ),
)

TASKS: dict[str, Task] = {t.name: t for t in _ALL}


def get_task(name: str) -> Task:
    """The registered task called ``name``."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]
