"""Finding a task's data and splitting it into train / valid / eval, the way the paper evaluates.

Data roots, in order: ``data_dir`` (``--data-dir``), ``$MEMTUNE_DATA``, then the project's shared
``shared/data`` folder; the first that holds the task's train file is used. Without one, the Hugging
Face hub is tried when ``datasets`` is installed. A missing (held-out) eval split falls back to the
validation set, and the fallback is stated in ``eval_source`` and ``notes``. A split's path may be a
file or a folder (WebNLG's train/ and dev/ are folders of XML files).

Generation tasks read into ``GenerationExample``s, one per distinct input with all its references, so
carving a validation set and ``train_size`` sampling pick inputs (never splitting one input's
references); ``pairs`` flattens them into (source, reference) training pairs, and ``category_splits``
gives WebNLG's seen / unseen / all subsets.
"""
from __future__ import annotations

import os
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

from ..errors import ConfigError
from .readers import READERS, Example, GenerationExample
from .registry import HUB_SPLITS, Task, get_task

ENV_VAR = "MEMTUNE_DATA"
AnyExample = Union[Example, GenerationExample]
Source = Callable[[str], "list[AnyExample] | None"]  # split -> examples, None when the split is absent


@dataclass
class TaskData:
    """A task's examples, split for training, early stopping and the reported evaluation."""

    task: Task
    train: list[AnyExample]  # Example for sentence / token tasks, GenerationExample for generation tasks
    valid: list[AnyExample]
    eval: list[AnyExample]
    eval_source: str  # "dev" / "test", or "valid (<file> is absent: held out)"
    valid_source: str  # "dev", or "10% of train (seed 0)"
    root: str  # data root used ("hub:glue/rte" when loaded from the hub)
    notes: list[str] = field(default_factory=list)


# --- where the data is -------------------------------------------------------------------------------


def shared_data_dir() -> Path | None:
    """The nearest ``shared/data`` folder above this package (``/work/shared/data`` for ``/work/main``)."""
    for folder in Path(__file__).resolve().parents:
        if (folder / "shared" / "data").is_dir():
            return folder / "shared" / "data"
    return None


def _candidates(data_dir: str | os.PathLike | None) -> list[tuple[str, Path | None, str]]:
    """(name, root or None, why None) for each place a data root may come from, in order."""
    env = os.environ.get(ENV_VAR)
    for label, given in (("--data-dir", data_dir), (f"${ENV_VAR}", env)):
        if given and not Path(given).is_dir():  # a typo must not fall back to other data
            what = "is a file" if Path(given).exists() else "does not exist"
            raise ConfigError(f"{label} {given} {what}; give the folder that holds the task folders (e.g. ../shared/data)")
    return [
        ("--data-dir", Path(data_dir) if data_dir else None, "not given"),
        (f"${ENV_VAR}", Path(env) if env else None, "not set"),
        ("the shared data folder", shared_data_dir(), "none found above the package"),
    ]


def data_root(task: Task, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first data root holding ``<task.folder>/<train file or folder>``, or None."""
    for _, root, _ in _candidates(data_dir):
        if root is not None and (root / task.folder / task.files["train"]).exists():
            return root
    return None


def _skipped(task: Task, data_dir: str | os.PathLike | None, root: Path) -> list[str]:
    """Notes for the roots that were given but lacked the task, ahead of the one used."""
    notes = []
    for label, candidate, _ in _candidates(data_dir):
        if candidate is None:
            continue
        if candidate == root:
            break
        notes.append(f"{task.name}: {label} {candidate} has no {task.folder}/{task.files['train']}; using {root}")
    return notes


def _not_found(task: Task, data_dir: str | os.PathLike | None, hub_problem: str) -> ConfigError:
    wanted = f"{task.folder}/{task.files['train']}"
    places = []
    for label, root, unset in _candidates(data_dir):
        if root is None:
            places.append(f"{label} ({unset})")
        else:
            places.append(f"{label} {root} ({'no such folder' if not root.is_dir() else f'no {wanted} there'})")
    return ConfigError(
        f"no data for task {task.name!r}: looked for {wanted} under {'; '.join(places)}; {hub_problem}. "
        f"Fix: pass --data-dir DIR (or set {ENV_VAR}=DIR) where DIR/{wanted} exists."
    )


# --- sources: split name -> examples ------------------------------------------------------------------


def _local_source(task: Task, root: Path) -> Source:
    def read(split: str) -> list[AnyExample] | None:
        path = root / task.folder / task.files[split]
        return READERS[task.reader_for(split)](path, task) if path.exists() else None

    return read


def _load_dataset():
    """``datasets.load_dataset``, or None when the package is not installed."""
    try:
        from datasets import load_dataset
    except ImportError:
        return None
    return load_dataset


def _hub_source(task: Task, data_dir: str | os.PathLike | None) -> Source:
    load_dataset = _load_dataset()
    if task.hub is None or load_dataset is None:
        problem = "the task has no hub copy" if task.hub is None else "the `datasets` package is not installed"
        raise _not_found(task, data_dir, f"the hub was not tried ({problem})")
    try:
        dataset = load_dataset(*task.hub)
    except Exception as e:  # offline, renamed dataset, ...: say both what was looked for and why the hub failed
        raise _not_found(task, data_dir, f"loading {task.hub} from the hub failed ({type(e).__name__}: {e})") from e

    def read(split: str) -> list[AnyExample] | None:
        name = HUB_SPLITS.get(split)
        if name not in dataset:
            return None
        return _hub_examples(task, dataset[name], f"hub {'/'.join(task.hub)} {name}")

    return read


def _hub_examples(task: Task, rows, where: str) -> list[Example]:
    """Examples from a hub split; its label ids are mapped to ours through the label names."""
    text_key, pair_key, label_key = task.hub_fields
    feature = rows.features[label_key]
    names = feature.feature.names if task.kind == "token" else feature.names
    unknown = [n for n in names if n not in task.labels]
    if unknown:
        raise ConfigError(f"{where}: labels {unknown} are not in the task's labels {task.labels}")
    ours = [task.labels.index(n) for n in names]
    examples = []
    for i, row in enumerate(rows):
        label = row[label_key]
        if task.kind == "token":
            examples.append(Example(list(row[text_key]), None, [ours[t] for t in label]))
        elif label < 0:
            raise ConfigError(f"{where}, row {i}: no label (hidden test labels)")
        else:
            examples.append(Example(row[text_key], row[pair_key] if pair_key else None, ours[label]))
    return examples


# --- splitting ---------------------------------------------------------------------------------------


def carve(examples: list[AnyExample], fraction: float, seed: int) -> tuple[list[AnyExample], list[AnyExample]]:
    """(rest, carved): a seeded ``fraction`` of the examples (at least one), stratified by label for
    sentence tasks (token and generation examples form one stratum); both keep the file order."""
    if not 0 < fraction < 1:
        raise ConfigError(f"valid_fraction must be between 0 and 1, got {fraction}")
    if len(examples) < 2:
        raise ConfigError(f"cannot carve a validation set out of {len(examples)} training example(s)")
    groups: dict[object, list[int]] = defaultdict(list)
    for i, example in enumerate(examples):
        label = getattr(example, "label", None)  # GenerationExample has none
        groups[label if isinstance(label, int) else None].append(i)
    rng, ranked = random.Random(seed), []
    for key in sorted(groups, key=str):  # spread each label's shuffled examples evenly over [0, 1)
        indices = groups[key]
        rng.shuffle(indices)
        ranked += [((j + rng.random()) / len(indices), i) for j, i in enumerate(indices)]
    count = min(len(examples) - 1, max(1, round(len(examples) * fraction)))
    picked = {i for _, i in sorted(ranked)[:count]}
    return [e for i, e in enumerate(examples) if i not in picked], [examples[i] for i in sorted(picked)]


def sample(examples: list, size: int, seed: int, unit: str = "training examples") -> list:
    """``size`` examples drawn without replacement with ``seed``, in their original order."""
    if not 0 < size <= len(examples):
        raise ConfigError(f"train_size must be between 1 and the {len(examples)} {unit}, got {size}")
    return [examples[i] for i in sorted(random.Random(seed).sample(range(len(examples)), size))]


def pairs(examples: list[GenerationExample]) -> list[tuple[str, str]]:
    """(source, reference) training pairs: one per reference, in example then reference order."""
    return [(example.source, reference) for example in examples for reference in example.references]


def category_splits(
    examples: list[GenerationExample], seen: tuple[str, ...] | list[str]
) -> dict[str, list[GenerationExample]]:
    """``{"seen": ..., "unseen": ..., "all": ...}``: the examples whose category is / is not in ``seen``
    (e.g. ``task.seen_categories``), and all of them; each keeps the input order."""
    missing = sum(example.category is None for example in examples)
    if missing:
        raise ConfigError(f"category_splits needs a category on every example; {missing} of {len(examples)} have none")
    seen = set(seen)
    return {
        "seen": [e for e in examples if e.category in seen],
        "unseen": [e for e in examples if e.category not in seen],
        "all": list(examples),
    }


def _unit(task: Task) -> str:
    """What one training example is, for messages."""
    return "inputs, each with all its references" if task.kind == "generation" else "examples"


def _split_valid(task: Task, read: Source, train: list[AnyExample], fraction: float, seed: int):
    """(train, valid, valid_source, notes)."""
    valid = read(task.valid_split) if task.valid_split else None
    if valid is not None:
        return train, valid, task.valid_split, []
    train, valid = carve(train, fraction, seed)
    source = f"{fraction * 100:g}% of train (seed {seed})"
    notes = [f"{task.name}: {task.files[task.valid_split]} is absent; validating on {source}"] if task.valid_split else []
    return train, valid, source, notes


def _split_eval(task: Task, read: Source, valid: list[AnyExample], valid_source: str):
    """(eval, eval_source, notes): the paper's split, else the validation set."""
    evaluation = read(task.eval_split)
    if evaluation is not None:
        return evaluation, task.eval_split, []
    missing = task.files[task.eval_split]
    note = (f"{task.name}: {missing}, the paper's {task.eval_split} split, is absent (held out); the reported "
            f"numbers are on the validation set instead ({valid_source}), not comparable to the paper's")
    return valid, f"valid ({missing} is absent: held out)", [note]


def load_task(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    valid_fraction: float = 0.1,
    train_size: int | None = None,
    sample_seed: int = 0,
) -> TaskData:
    """Read a task's train / valid / eval examples (see the module docstring for the rules)."""
    task = get_task(name)
    root = data_root(task, data_dir)
    if root is not None:
        read, root_name, notes = _local_source(task, root), str(root), _skipped(task, data_dir, root)
    else:
        read, root_name, notes = _hub_source(task, data_dir), "hub:" + "/".join(task.hub or ()), []
    train = read("train")
    if train is None:
        raise ConfigError(f"task {task.name!r}: {root_name} has no train split")
    train, valid, valid_source, valid_notes = _split_valid(task, read, train, valid_fraction, seed)
    evaluation, eval_source, eval_notes = _split_eval(task, read, valid, valid_source)
    notes = ([task.notes] if task.notes else []) + notes + valid_notes + eval_notes
    if train_size is not None:
        notes.append(f"{task.name}: training on {train_size} of {len(train)} {_unit(task)} (sample seed {sample_seed})")
        train = sample(train, train_size, sample_seed, f"training {_unit(task)}")
    return TaskData(task, train, valid, evaluation, eval_source, valid_source, root_name, notes)
