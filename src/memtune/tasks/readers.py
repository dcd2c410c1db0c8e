"""Readers: one function per file format, each ``(path, task) -> list[Example]`` (classification tasks)
or ``(path, task) -> list[GenerationExample]`` (generation tasks).

Which columns or keys hold the text and the label, and how labels are spelled, come from the task.
Bad data raises ConfigError naming the file, the 1-based line (or JSON entry, or XML entry) and what
was expected.
"""
from __future__ import annotations

import csv
import io
import json
import re
import xml.etree.ElementTree as ET
from xml.parsers.expat import ErrorString
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, NoReturn

from ..errors import ConfigError

if TYPE_CHECKING:
    from .registry import Task


@dataclass
class Example:
    """A sentence (or pair) with a class id, or the tokens of a sentence with one tag id each."""

    text: str | list[str]
    text_pair: str | None
    label: int | list[int]


@dataclass
class GenerationExample:
    """One input of a data-to-text task with every human reference written for it.

    ``source`` is the linearised table (E2E: the MR string; WebNLG: see ``linearise_triples``), and
    ``references`` holds all its references in file order, for multi-reference evaluation. Training
    uses one (source, reference) pair per reference: ``memtune.tasks.pairs(examples)``.
    ``category`` is the WebNLG DBpedia category (None for E2E), for seen / unseen reporting.
    """

    source: str
    references: list[str]
    category: str | None = None


def _fail(where: str, problem: str) -> NoReturn:
    raise ConfigError(f"{where}: {problem}")


def _text(path: Path) -> str:
    """A UTF-8 file's text, a BOM dropped; bad bytes are named by line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}, line {line}: expected UTF-8 text ({e.reason})") from None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its ending) of a UTF-8 file; a BOM is dropped."""
    text = _text(path)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return enumerate(text.split("\n"), 1)


def _nonempty(examples: list, path: Path, expected: str) -> list:
    if not examples:
        empty = "is empty" if path.is_file() and path.stat().st_size == 0 else "holds no examples"
        raise ConfigError(f"{path} {empty}: expected {expected}")
    return examples


def _label_id(index: dict[str, int], value: Any, where: str) -> int:
    value = str(value).strip()
    if value not in index:
        _fail(where, f"unknown label {value!r}; expected one of: {', '.join(index)}")
    return index[value]


def _cells(line: str, sep: str | None, task: Task, where: str) -> list[str]:
    """``line`` split into the task's number of columns."""
    parts = line.split(sep)
    used = [c for c in (task.text_col, task.pair_col, task.label_col) if c is not None and c >= 0]
    if len(parts) != (task.columns or len(parts)) or len(parts) <= max(used, default=0):
        kind = "tab" if sep == "\t" else "whitespace"
        wanted = task.columns or f"at least {max(used, default=0) + 1}"
        _fail(where, f"expected {wanted} {kind}-separated columns, found {len(parts)}")
    return parts


def _sentence(row: Any, keys: tuple, index: dict[str, int], where: str) -> Example:
    """An Example from a row (list or dict) and its (text, pair or None, label) keys."""
    text_key, pair_key, label_key = keys
    wanted = [k for k in keys if k is not None]
    if isinstance(row, dict) and any(k not in row for k in wanted):
        _fail(where, f"expected keys {', '.join(wanted)}; found {', '.join(map(str, row)) or 'none'}")
    text, pair = row[text_key], None if pair_key is None else row[pair_key]
    if not isinstance(text, str) or not isinstance(pair, (str, type(None))):
        _fail(where, f"expected text strings in {text_key!r}" + (f" and {pair_key!r}" if pair_key is not None else ""))
    return Example(text.strip(), None if pair is None else pair.strip(), _label_id(index, row[label_key], where))


# --- sentence-level formats --------------------------------------------------------------------------


def read_tsv(path: Path, task: Task) -> list[Example]:
    """GLUE TSV: a header line (skipped: SST-2's is wrong), then columns by position (text/pair/label_col)."""
    index, examples = task.label_index(), []
    keys = (task.text_col, task.pair_col, task.label_col)
    for n, line in _lines(path):
        if n > 1 and line.strip():
            where = f"{path}, line {n}"
            examples.append(_sentence(_cells(line, "\t", task, where), keys, index, where))
    return _nonempty(examples, path, f"a header line, then lines of {task.columns} tab-separated columns")


def read_tsv_header(path: Path, task: Task) -> list[Example]:
    """TSV whose header names the columns in ``task.fields`` (GLUE MRPC; its test.tsv has an extra column)."""
    index, examples, header, keys = task.label_index(), [], None, ()
    for n, line in _lines(path):
        if not line.strip():
            continue
        where, parts = f"{path}, line {n}", line.split("\t")
        if header is None:
            header = parts
            missing = [f for f in task.fields if f is not None and f not in header]
            if missing:
                _fail(where, f"expected a header with columns {', '.join(missing)}; found {', '.join(header)}")
            keys = tuple(None if f is None else header.index(f) for f in task.fields)
        elif len(parts) != len(header):
            _fail(where, f"expected {len(header)} tab-separated columns (as in the header), found {len(parts)}")
        else:
            examples.append(_sentence(parts, keys, index, where))
    return _nonempty(examples, path, f"a header line naming {', '.join(f for f in task.fields if f)}, then rows")


def read_jsonl(path: Path, task: Task) -> list[Example]:
    """JSON lines, one object per line with the keys in ``task.fields`` (SuperGLUE CB)."""
    index, examples = task.label_index(), []
    for n, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: expected one JSON object per line ({e.msg})") from None
        if not isinstance(row, dict):
            _fail(where, f"expected a JSON object, found {type(row).__name__}")
        examples.append(_sentence(row, task.fields, index, where))
    return _nonempty(examples, path, f"JSON lines with keys {', '.join(f for f in task.fields if f)}")


def read_json_dict(path: Path, task: Task) -> list[Example]:
    """One JSON object mapping ids to objects with the keys in ``task.fields`` (QNLI's PowerfulPromptFT subset)."""
    expected = f"a JSON object mapping ids to objects with keys {', '.join(f for f in task.fields if f)}"
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise ConfigError(f"{path} is empty: expected {expected}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}, line {e.lineno}: expected {expected} ({e.msg})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"{path}: expected {expected}")
    index = task.label_index()
    examples = [_sentence(row, task.fields, index, f"{path}, entry {key!r}") for key, row in data.items()]
    return _nonempty(examples, path, expected)


# --- token-level formats -----------------------------------------------------------------------------


def _token_sentences(path: Path, task: Task, sep: str | None, boundary: str | None, expected: str) -> list[Example]:
    """Sentences of a one-token-per-line file; blank lines and lines starting with ``boundary`` end one."""
    index, examples, tokens, tags = task.label_index(), [], [], []
    for n, line in _lines(path):
        if not line.strip() or (boundary is not None and line.startswith(boundary)):
            if tokens:
                examples.append(Example(tokens, None, tags))
                tokens, tags = [], []
            continue
        parts = line.split(sep)
        if len(parts) != task.columns:
            parts = _cells(line, sep, task, f"{path}, line {n}")
        tag = parts[task.label_col]
        tags.append(index[tag] if tag in index else _label_id(index, tag, f"{path}, line {n}"))
        tokens.append(parts[task.text_col])
    if tokens:
        examples.append(Example(tokens, None, tags))
    return _nonempty(examples, path, expected)


def read_conll(path: Path, task: Task) -> list[Example]:
    """CoNLL-2003: ``token POS chunk tag`` lines, blank lines between sentences, -DOCSTART- lines skipped."""
    return _token_sentences(path, task, None, "-DOCSTART-", "lines of `token POS chunk tag`, blank lines between sentences")


def read_conll04(path: Path, task: Task) -> list[Example]:
    """CoNLL-2004 (Bekoulis et al.): a ``#doc <id>`` line starts each sentence, then ``idx token tag rels heads``."""
    expected = "`#doc <id>` lines, each followed by lines of `index<TAB>token<TAB>tag<TAB>relations<TAB>heads`"
    return _token_sentences(path, task, "\t", "#doc", expected)


def read_bio_chars(path: Path, task: Task) -> list[Example]:
    """MSRA: ``character<TAB>tag`` lines, blank lines between sentences."""
    return _token_sentences(path, task, "\t", None, "lines of `character<TAB>tag`, blank lines between sentences")


# --- data-to-text formats (generation tasks) ---------------------------------------------------------

E2E_HEADER = ["mr", "ref"]
_LINE_BREAK = re.compile(r"\s*[\r\n]+\s*")


def read_e2e_csv(path: Path, task: Task) -> list[GenerationExample]:
    """E2E NLG CSV: a ``mr,ref`` header, then one (MR, reference) row per reference, standard CSV quoting.

    Rows are grouped by MR (stripped, otherwise verbatim) in first-seen order: one example per distinct
    MR holding all its references in file order. A record may span lines (two train references hold a
    line break, which becomes one space); errors name the line the record starts on.
    """
    expected = "a `mr,ref` header, then rows of a quoted MR and a reference"
    groups: dict[str, GenerationExample] = {}
    rows = csv.reader(io.StringIO(_text(path), newline=""), strict=True)
    start, header = 1, None  # start: the line the next record starts on
    try:
        for row in rows:
            where, start = f"{path}, line {start}", rows.line_num + 1
            if not row:  # a blank line
                continue
            if header is None:
                header = [cell.strip().lower() for cell in row]
                if header != E2E_HEADER:
                    _fail(where, f"expected the header `mr,ref`, found {','.join(row)!r}")
                continue
            if len(row) != 2:
                _fail(where, f"expected 2 comma-separated fields (mr, ref), found {len(row)}")
            mr, ref = _one_line(row[0]), _one_line(row[1])
            if not mr or not ref:
                _fail(where, f"empty {'mr' if not mr else 'ref'} field")
            groups.setdefault(mr, GenerationExample(mr, [])).references.append(ref)
    except csv.Error as e:
        _fail(f"{path}, line {start}", f"malformed CSV ({e}); expected standard double-quote quoting")
    return _nonempty(list(groups.values()), path, expected)


def _one_line(text: str) -> str:
    """``text`` stripped, with each line break (and the spaces around it) made one space; nothing else changes."""
    text = text.strip()
    return _LINE_BREAK.sub(" ", text) if "\n" in text or "\r" in text else text


def linearise_triples(triples: list[tuple[str, str, str]]) -> str:
    """WebNLG triples as Li & Liang's prefix-tuning WebNLG loader writes them: each triple
    ``subject : predicate : object``, triples joined by `` | ``, in file order; DBpedia names are kept
    verbatim (underscores and quotes as in the data)."""
    return " | ".join(f"{s} : {p} : {o}" for s, p, o in triples)


def _xml_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.rglob("*.xml"))
        if not files:
            raise ConfigError(f"{path} holds no XML files: expected WebNLG XML files (e.g. 1triples/*.xml)")
        return files
    return [path]


def read_webnlg_xml(path: Path, task: Task) -> list[GenerationExample]:
    """WebNLG 2017 challenge XML: a file, or a folder whose ``*.xml`` files (any depth) are read in path order.

    One example per ``<entry>``: its ``<modifiedtripleset>/<mtriple>`` triples (``subject | predicate |
    object``) linearised by ``linearise_triples``, every ``<lex>`` as a reference, and the entry's
    ``category``. Every split read here must have references: an entry without ``<lex>`` is an error.
    """
    examples = []
    for file in _xml_files(path):
        try:
            root = ET.parse(file).getroot()
        except ET.ParseError as e:
            line, column = e.position
            where = f"{file}, line {line}, column {column + 1}"
            raise ConfigError(f"{where}: malformed XML ({ErrorString(e.code)})") from None
        entries = list(root.iter("entry"))
        if not entries:
            _fail(str(file), "expected WebNLG XML (<benchmark><entries><entry ...>), found no <entry>")
        for entry in entries:
            where = f"{file}, entry eid={entry.get('eid')!r}"
            category = entry.get("category")
            if not category:
                _fail(where, "the entry has no category attribute")
            texts = [(m.text or "").strip() for m in entry.findall("modifiedtripleset/mtriple")]
            if not texts:
                _fail(where, "the entry has no triples (<modifiedtripleset>/<mtriple>)")
            triples = []
            for text in texts:
                parts = tuple(p.strip() for p in text.split(" | "))
                if len(parts) != 3 or not all(parts):
                    _fail(where, f"expected a triple `subject | predicate | object`, found {text!r}")
                triples.append(parts)
            references = [(lex.text or "").strip() for lex in entry.findall("lex")]
            if not references:
                _fail(where, "the entry has no references (<lex>)")
            if not all(references):
                _fail(where, f"reference {references.index('') + 1} (<lex>) is empty")
            examples.append(GenerationExample(linearise_triples(triples), references, category))
    return _nonempty(examples, path, "WebNLG XML entries")


READERS: dict[str, Callable[[Path, "Task"], list]] = {
    "tsv": read_tsv,
    "tsv_header": read_tsv_header,
    "jsonl": read_jsonl,
    "json_dict": read_json_dict,
    "conll": read_conll,
    "conll04": read_conll04,
    "bio_chars": read_bio_chars,
    "e2e_csv": read_e2e_csv,
    "webnlg_xml": read_webnlg_xml,
}
