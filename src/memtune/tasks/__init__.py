"""The paper's eight NLU tasks: a declarative registry (``TASKS``) and readers for their real files.

    from memtune.tasks import load_task
    data = load_task("rte")            # train / valid / eval examples, with where each came from
    data.eval_source, data.notes       # e.g. "valid (dev.tsv is absent: held out)"
"""
from .data import TaskData, carve, data_root, load_task, sample, shared_data_dir
from .readers import READERS, Example
from .registry import TASKS, Task, get_task

__all__ = [
    "READERS",
    "TASKS",
    "Example",
    "Task",
    "TaskData",
    "carve",
    "data_root",
    "get_task",
    "load_task",
    "sample",
    "shared_data_dir",
]
