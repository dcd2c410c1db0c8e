"""The paper's tasks: a declarative registry (``TASKS``) and readers for their real files.

    from memtune.tasks import load_task
    data = load_task("rte")            # train / valid / eval examples, with where each came from
    data.eval_source, data.notes       # e.g. "valid (dev.tsv is absent: held out)"

Eight NLU tasks (kinds "sentence" and "token": ``Example``s with label ids) and two data-to-text tasks
(kind "generation": ``GenerationExample``s, one per distinct input with all its references):

    data = load_task("webnlg")
    pairs(data.train)                                   # [(source, reference), ...] to train on
    category_splits(data.eval, data.task.seen_categories)  # {"seen": [...], "unseen": [...], "all": [...]}
"""
from .data import TaskData, carve, category_splits, data_root, load_task, pairs, sample, shared_data_dir
from .readers import READERS, Example, GenerationExample, linearise_triples
from .registry import GENERATION_METRICS, KINDS, TASKS, Task, get_task

__all__ = [
    "GENERATION_METRICS",
    "KINDS",
    "READERS",
    "TASKS",
    "Example",
    "GenerationExample",
    "Task",
    "TaskData",
    "carve",
    "category_splits",
    "data_root",
    "get_task",
    "linearise_triples",
    "load_task",
    "pairs",
    "sample",
    "shared_data_dir",
]
