"""The append-only results file of a comparison: one JSON line per finished run.

Every record carries the comparison's ``config`` (model, profile, training overrides). A file holding
records of another config is refused instead of being mixed in, and so is a run whose task would be
scored on other splits than the same task's runs already in the file (a held-out split that turned up,
a data root laid out differently; two copies of the same files are not told apart). Lines are appended, flushed
and fsynced one at a time, so a killed run loses at most the line it was writing; such a truncated
last line is skipped with a warning, cut before the next append, and its run is redone.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterable

from ..errors import ConfigError

RUN_KEY = ("task", "method", "seed", "budget", "train_size")


def run_key(record: dict[str, Any]) -> tuple:
    return tuple(record.get(k) for k in RUN_KEY)


def run_name(record: dict[str, Any]) -> str:
    """``<task>-<method>-b<budget>[-n<size>]-s<seed>``: the name of a run's files (generations, curves, saved model)."""
    size = f"-n{record['train_size']}" if record.get("train_size") else ""
    return f"{record['task']}-{record['method']}-b{record['budget']}{size}-s{record['seed']}"


def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All run records of a results file ([] if it does not exist)."""
    file = Path(path)
    if not file.exists():
        return []
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{file} is not UTF-8 text (byte {e.start}); it is not a memtune results file") from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):  # the last line has no newline: a write that was cut off
                warnings.warn(f"{file}: line {number} is incomplete (an interrupted write); its run will be redone")
                continue
            raise ConfigError(f"{file}: line {number} is not valid JSON ({e.msg}); fix or remove that line") from None
        if not isinstance(record, dict) or any(k not in record for k in RUN_KEY + ("config",)):
            raise ConfigError(f"{file}: line {number} is not a memtune run record (needs {', '.join(RUN_KEY)}, config)")
        records.append(record)
    return records


def check_config(records: Iterable[dict[str, Any]], config: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse to mix runs of another configuration into ``path``."""
    for record in records:
        if record["config"] != config:
            raise ConfigError(
                f"{path} holds runs of another configuration ({config_differences(record['config'], config)}). "
                f"Write to another --out folder, or repeat the original settings to resume it."
            )


def config_differences(theirs: Any, ours: dict[str, Any]) -> str:
    """The settings two comparison configs differ in, for a message."""
    theirs = theirs if isinstance(theirs, dict) else {}
    differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    return "; ".join(f"{k}: file has {theirs.get(k)!r}, this run {ours.get(k)!r}" for k in differ)


def check_records(records: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Refuse a results file that mixes configurations or holds one run twice (e.g. written by hand or by
    an older memtune): a table would silently pick one of them. A failed run may be followed by a retry."""
    if records:
        check_config(records, records[0]["config"], path)
    seen: dict[tuple, int] = {}
    for number, record in enumerate(records):
        key = run_key(record)
        if key in seen and not is_failed(records[seen[key]]):
            raise ConfigError(
                f"{path} holds the run {dict(zip(RUN_KEY, key))} twice (records {seen[key] + 1} and {number + 1}); "
                f"remove one of the two lines"
            )
        seen[key] = number


def done_keys(records: Iterable[dict[str, Any]], retry_failed: bool = False) -> set[tuple]:
    """The run keys a resume skips: every recorded run, failed ones too unless they are to be retried."""
    return {run_key(r) for r in records if not (retry_failed and is_failed(r))}


def is_failed(record: dict[str, Any]) -> bool:
    """A run that stopped without a score (e.g. its training diverged); its record says why."""
    return record.get("status") == "failed"


def check_splits(records: Iterable[dict[str, Any]], task: str, eval_source: str, valid_source: str, path: str | os.PathLike) -> None:
    """Refuse runs of ``task`` scored on other splits than its runs already in ``path``."""
    for record in records:
        if record["task"] == task and (record.get("eval_source"), record.get("valid_source")) != (eval_source, valid_source):
            raise ConfigError(
                f"{path} holds {task} runs scored on {record.get('eval_source')!r} (validated on "
                f"{record.get('valid_source')!r}); this run would score on {eval_source!r} (validated on "
                f"{valid_source!r}). The data changed (--data-dir, $MEMTUNE_DATA or a held-out split); write to "
                f"another --out folder."
            )


def append_result(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one record as a line; flushed and fsynced before returning.

    An exclusive lock on the file makes appends from several ``compare`` processes sharing one results
    file (e.g. different tasks in parallel, same settings) follow each other whole."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(file, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            _drop_incomplete_last_line(f)
            f.write((json.dumps(finite_json(record), sort_keys=True, allow_nan=False) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _drop_incomplete_last_line(f) -> None:
    """Before an append: end a whole last record that lacks its newline, or cut a fragment left by an
    interrupted write (bytes after the last newline that are not a record)."""
    f.seek(0)
    data = f.read()
    if not data or data.endswith(b"\n"):
        return
    fragment = data[data.rfind(b"\n") + 1 :]
    if _is_record(fragment):
        f.write(b"\n")  # "a+b": writes go to the end
    else:
        f.truncate(data.rfind(b"\n") + 1)
    f.flush()
    os.fsync(f.fileno())


def _is_record(line: bytes) -> bool:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(record, dict) and all(k in record for k in RUN_KEY + ("config",))


def finite_json(value: Any, where: str = "", found: list[str] | None = None) -> Any:
    """``value`` with every NaN or infinity replaced by null (standard JSON has neither); a record that
    held any lists their places under ``non_finite``, so that nothing is dropped without a trace."""
    top = found is None
    found = [] if top else found
    if isinstance(value, float) and not math.isfinite(value):
        found.append(where or "(value)")
        return None
    if isinstance(value, dict):
        value = {k: finite_json(v, f"{where}.{k}" if where else str(k), found) for k, v in value.items()}
    elif isinstance(value, (list, tuple)):
        value = [finite_json(v, f"{where}[{i}]", found) for i, v in enumerate(value)]
    if top and found and isinstance(value, dict):
        value["non_finite"] = found
    return value
