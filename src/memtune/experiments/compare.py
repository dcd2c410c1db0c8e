"""``memtune compare``: tasks x methods x seeds (x budgets x training-set sizes), resumable.

Each finished run is appended to ``<out>/results.jsonl`` at once; a killed comparison started again with
the same settings skips the runs already there. Tables are rendered from that file at the end (and by
``memtune table`` at any time), never from memory.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import ConfigError, TrainingDiverged
from ..methods.recipes import RECIPES
from ..version import __version__
from .progress import PlanProgress
from .ownership import FolderClaim
from .results import (RUN_KEY, append_result, check_config, check_records, check_splits, done_keys, is_failed, read_results,
                      run_name)  # fmt: skip
from .tables import main_budget

RESULTS_FILE = "results.jsonl"
# settings of decoding, not of training: override name -> DecodingConfig field
DECODING_OVERRIDES = {"max_new_tokens": "max_new_tokens", "num_beams": "num_beams", "decode_batch_size": "batch_size"}
GENERATIONS_DIR = "generations"  # one JSONL per generation run: input, prediction, references
MODELS_DIR = "models"  # --save-models: one memtune checkpoint per run, with run.json (how to rebuild its base and data)
TASK_HEADS = {"sentence": "seq", "token": "token", "generation": "lm"}  # task kind -> models.HEAD_CLASSES name


@dataclass(frozen=True)
class Comparison:
    """What every run of one comparison shares, fixed once: the model, the training profile and its
    overrides, the decoding overrides (generation tasks), the data root and whether prefixes shift the
    real tokens' positions (P-tuning v2's behaviour)."""

    model: str
    profile: str = "cpu"
    data_dir: str | None = None
    training: tuple[tuple[str, Any], ...] = ()  # TrainSettings overrides, as sorted (name, value) pairs
    decoding: tuple[tuple[str, Any], ...] = ()  # DecodingConfig overrides
    shift_prefix_positions: bool = False

    @classmethod
    def of(cls, model: str, profile: str = "cpu", data_dir: str | None = None, overrides: dict[str, Any] | None = None,
           shift_prefix_positions: bool = False) -> "Comparison":  # fmt: skip
        """From the command's overrides (None values dropped; decoding ones checked here, before any run)."""
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        decoding = {name: overrides[k] for k, name in DECODING_OVERRIDES.items() if k in overrides}
        if decoding:
            _decoding_config(30, decoding)  # bad values fail before any run
        training = {k: v for k, v in overrides.items() if k not in DECODING_OVERRIDES}
        return cls(model, profile, data_dir, tuple(sorted(training.items())), tuple(sorted(decoding.items())),
                   shift_prefix_positions)  # fmt: skip

    def recipe(self, method: str, budget: int) -> Any:
        from .. import recipe

        return recipe(method, budget, shift_prefix_positions=self.shift_prefix_positions)

    def settings(self, task: Any, recipe: Any, large: bool = False) -> Any:
        from ..train import settings_for

        return settings_for(task, recipe, self.profile, large=large, **dict(self.training))

    def record_config(self) -> dict[str, Any]:
        """What each record stores as its ``config`` (and a resumed comparison must match)."""
        inverse = {name: k for k, name in DECODING_OVERRIDES.items()}
        overrides = {**dict(self.training), **{inverse[k]: v for k, v in self.decoding}}
        config = {"model": self.model, "profile": self.profile, "overrides": overrides}
        if self.shift_prefix_positions:  # only when set, so that results files written before the option still match
            config["shift_prefix_positions"] = True
        return config


@dataclass(frozen=True)
class RunSpec:
    task: str
    method: str
    seed: int
    budget: int
    train_size: int | None = None
    recipe: Any = field(default=None, compare=False, hash=False, repr=False)  # the resolved Recipe, when planned with one

    @property
    def key(self) -> tuple:
        return (self.task, self.method, self.seed, self.budget, self.train_size)

    @property
    def name(self) -> str:
        """``<task>-<method>-b<budget>[-n<size>]-s<seed>``: the name of the run's generations, curves and model."""
        return run_name(dict(zip(RUN_KEY, self.key)))

    def __str__(self) -> str:
        size = f", {self.train_size} examples" if self.train_size else ""
        return f"{self.task} {self.method} (budget {self.budget}{size}) seed {self.seed}"


def plan(
    tasks: list[str],
    methods: list[str],
    seeds: list[int],
    budgets: list[int],
    train_sizes: list[int | None],
    budget_free: Iterable[str] = (),
    resolve: Callable[[str, int], Any] | None = None,
) -> list[RunSpec]:
    """Every run, task-major so that each task's table fills up first; each run once.

    Methods in ``budget_free`` (FT, BitFit: the budget changes nothing) run at the main budget only.
    ``resolve(method, budget)`` gives each run its recipe (``Comparison.recipe``), resolved once."""
    budget_free, main = set(budget_free), main_budget(budgets)
    recipes = {(m, b): resolve(m, b) for m in methods for b in budgets} if resolve else {}
    runs = [
        RunSpec(task, method, seed, budget, size, recipes.get((method, budget)))
        for task in tasks
        for size in train_sizes
        for budget in budgets
        for seed in seeds
        for method in methods
        if budget == main or method not in budget_free
    ]
    return list(dict.fromkeys(runs))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def finish_distributed() -> None:
    """Under torchrun, let all processes leave together: a peer exiting first can make gloo abort the rest."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def load_for_task(model_name: str, task: Any) -> tuple[Any, Any]:
    """The model for ``task`` and its tokenizer: a fresh classification head for sentence and token tasks,
    the model's own language-model head for generation tasks."""
    from ..models import auto_class, load_model, load_tokenizer

    tokenizer = load_tokenizer(model_name)
    auto = auto_class(TASK_HEADS[task.kind])
    labels = {} if task.kind == "generation" else {"num_labels": len(task.labels)}
    model = load_model(model_name, auto, **labels)  # says "new N-label head" once
    if tokenizer.pad_token is None:  # decoder-only models: pad with the end-of-sequence token
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def run_one(
    spec: RunSpec,
    comparison: Comparison,
    callbacks: list[Any] = (),
    out: Path | None = None,
    bars: bool = False,
    save_to: Path | None = None,
) -> dict[str, Any]:
    """Train and evaluate one run; the record to append. A generation run also writes its generations to
    ``<out>/generations/`` (input, prediction, references; one JSON object per line), named in the record.

    ``bars``: a bar over the decoding batches (on a terminal; never in a log file).
    ``save_to``: a folder to save the tuned model to (``memtune.save``, best tensors restored) with ``run.json``
    beside it, named in the record's ``saved_model`` (relative to ``out``); a diverged run saves nothing."""
    from transformers import set_seed

    from .. import attach, parameter_report
    from ..tasks import get_task, load_task
    from ..train import train_and_evaluate, validation_examples

    task = get_task(spec.task)
    data = load_task(spec.task, comparison.data_dir, seed=0, train_size=spec.train_size, sample_seed=spec.seed)
    set_seed(spec.seed)  # before the model: the head's and the methods' initialisation follow the seed
    model, tokenizer = load_for_task(comparison.model, task)
    method = spec.recipe or comparison.recipe(spec.method, spec.budget)
    attach(model, method)
    report = parameter_report(model)
    settings = comparison.settings(task, method, large=model.config.hidden_size >= 1024)
    generation = task.kind == "generation"
    decoder = _decoding_config(task.max_new_tokens, dict(comparison.decoding)) if generation else None
    common = {"task": spec.task, "method": spec.method, "seed": spec.seed, "budget": spec.budget, "train_size": spec.train_size,
              "metric": task.metric[0] if generation else task.metric, "eval_source": data.eval_source,
              "valid_source": data.valid_source, **({"decoding": decoder.to_dict()} if generation else {})}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="memtune-trainer-") as scratch:
        try:
            result = train_and_evaluate(model, tokenizer, data, settings, seed=spec.seed, output_dir=scratch, callbacks=callbacks,
                                        decoding=decoder, progress=bars, run=str(spec))  # fmt: skip
        except TrainingDiverged as e:
            return {**common, "status": "failed", "error": str(e), "score": None, "valid": None, "settings": settings.to_dict(),
                    "memtune_version": __version__, "finished": _now()}  # fmt: skip
    extra: dict[str, Any] = {}
    if generation:
        extra = {"scores": {k: round(v, 4) for k, v in result.scores.items()},
                 "valid_metric": "loss", "pairs": result.n_pairs}  # fmt: skip
        if out is not None:
            extra["generations"] = write_generations(Path(out), spec, data, result.predictions)
    if save_to is not None:
        extra["saved_model"] = save_run_model(model, Path(save_to), spec, comparison, out)
    return {
        **common,
        "status": "finished",
        "score": round(result.eval, 4),
        "valid": round(result.valid, 4),
        **extra,
        "n_train": len(data.train),
        "n_valid": len(validation_examples(data, settings)),
        "n_eval": len(data.eval),
        "tuned": report["tuned"],
        "stored": report["stored"],
        "head": report["head"],
        "backbone": report["backbone"],
        "tuned_pct": round(report["tuned_pct"], 4),
        "stored_pct": round(report["stored_pct"], 4),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "train_seconds": result.train_seconds,
        "peak_memory_mb": result.peak_memory_mb,
        "settings": settings.to_dict(),
        "history": result.history,
        "notes": data.notes,
        "memtune_version": __version__,
        "finished": _now(),
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _decoding_config(max_new_tokens: int, overrides: dict[str, Any] | None) -> Any:
    """The DecodingConfig of a run: the task's cap on new tokens, then the command's overrides."""
    from ..decoding import DecodingConfig

    return DecodingConfig(**{"max_new_tokens": max_new_tokens, **(overrides or {})})


def write_generations(out: Path, spec: RunSpec, data: Any, predictions: list[str]) -> str:
    """``<out>/generations/<task>-<method>-b<budget>[-n<size>]-s<seed>.jsonl``, written atomically; its path
    relative to ``out``. Each line: index, category, source, prediction, references."""
    import json

    from ..io import atomic_write

    name = f"{GENERATIONS_DIR}/{spec.name}.jsonl"
    lines = [
        json.dumps({"index": i, "category": getattr(e, "category", None), "source": e.source, "prediction": p,
                    "references": list(e.references)}, ensure_ascii=False)  # fmt: skip
        for i, (e, p) in enumerate(zip(data.eval, predictions))
    ]
    atomic_write(out / name, ("\n".join(lines) + "\n").encode())
    return name


def save_run_model(model: Any, folder: Path, spec: RunSpec, comparison: Comparison, out: Path | None = None) -> str:
    """Save the tuned model to ``folder`` (``memtune.save``) and write ``folder/run.json``: the ``--model`` given,
    the run's task, method, seed, budget and training-set size and the ``--data-dir`` given, all a later tool
    needs to rebuild the base model and the data. Returns the folder as the record names it (relative to ``out``)."""
    import json

    from .. import save
    from ..io import atomic_write

    save(model, folder)
    run = {"model": _absolute(comparison.model), "task": spec.task, "method": spec.method, "seed": spec.seed,
           "budget": spec.budget, "train_size": spec.train_size, "data_dir": _absolute(comparison.data_dir)}  # fmt: skip
    atomic_write(folder / "run.json", (json.dumps(run, indent=2) + "\n").encode())
    if out is not None and folder.is_relative_to(out):
        return folder.relative_to(out).as_posix()
    return str(folder)


def _absolute(path: str | None) -> str | None:
    """A local path made absolute, so that run.json works from any folder; names (packaged, hub) as given."""
    return str(Path(path).resolve()) if path and os.path.exists(path) else path


def validate(comparison: Comparison, runs: list[RunSpec]) -> dict[str, tuple[str, str]]:
    """Fail before any training on bad settings, a model that cannot be found, missing data or a
    training-set size the data cannot give. Returns each task's (scored split, validation split)."""
    from ..models import load_config
    from ..tasks import get_task, load_task
    from ..tasks.data import sample

    tasks = list(dict.fromkeys(run.task for run in runs))
    task_specs = [get_task(task) for task in tasks]
    for task in task_specs:
        if task.kind == "generation":
            from ..metrics import check_generation_metrics

            check_generation_metrics(tuple(task.metric), task=task.name)  # no training that could not be scored
    recipes = list({(run.method, run.budget): run.recipe or comparison.recipe(run.method, run.budget) for run in runs}.values())
    settings = [(task, r, comparison.settings(task, r)) for task in task_specs for r in recipes]
    config = load_config(comparison.model)
    _check_lengths(config, comparison.model, settings, comparison.shift_prefix_positions)
    splits = {}
    for task in tasks:
        data = load_task(task, comparison.data_dir, seed=0)
        for size in dict.fromkeys(run.train_size for run in runs if run.task == task):
            if size is not None:
                sample(data.train, size, seed=0)  # refuses a size the training set cannot give
        splits[task] = (data.eval_source, data.valid_source)
    return splits


def _check_lengths(config: Any, model_name: str, settings: list[tuple[Any, Any, Any]], shift: bool) -> None:
    """Every input must fit the model's table of absolute positions, and with shifted prefix positions its
    prefix too (rotary models have no table to run past). Checked on the meta device: shapes, no weights."""
    import torch
    from transformers import AutoModel

    from .. import PrefixConfig
    from ..arch import arch_for
    from ..methods.prefix import position_module, table_length

    with torch.device("meta"):
        model = AutoModel.from_config(config)
    arch = arch_for(model)
    if not arch.positions and not shift:
        return
    limit = table_length(position_module(model, arch))  # with shift and no known position module: its message
    if limit is None:
        return
    for task, r, run_settings in settings:  # (task, recipe, its training settings)
        length = run_settings.max_length
        if length > limit:
            raise ConfigError(
                f"--max-length {length} ({task.name}) is more than the {limit} token positions {model_name} has; "
                f"use --max-length {limit} or less"
            )
        for c in r if shift else ():
            if isinstance(c, PrefixConfig) and length + c.prefix_length > limit:
                raise ConfigError(
                    f"--shift-prefix-positions: {task.name} inputs of up to {length} tokens behind the {r.name} "
                    f"prefix of l = {c.prefix_length} need {length + c.prefix_length} positions, and {model_name} "
                    f"has {limit}; use --max-length {limit - c.prefix_length} or leave out --shift-prefix-positions"
                )


def check_out(out: Path) -> None:
    """The results folder must exist (or be creatable) and take files before any run trains: a bad --out
    found after the first run would lose that run."""
    problem = None
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except (FileExistsError, NotADirectoryError):
        problem = "is a file or lies under a file"
    except OSError as e:  # PermissionError, a read-only file system, ...
        problem = f"cannot be written ({e.strerror or e})"
    if problem:
        raise ConfigError(f"--out {out} {problem}; give a folder memtune can write to")


def compare(
    model_name: str,
    tasks: list[str],
    methods: list[str],
    seeds: list[int],
    *,
    out: str | os.PathLike,
    budgets: list[int] = (32,),
    train_sizes: list[int | None] = (None,),
    profile: str = "cpu",
    data_dir: str | None = None,
    overrides: dict[str, Any] | None = None,
    shift_prefix_positions: bool = False,
    progress: bool = True,
    retry_failed: bool = False,
    save_models: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run every missing run of the plan, appending each record to ``<out>/results.jsonl``; returns all records.

    ``shift_prefix_positions``: prefixes give the real tokens positions l, l+1, ... (P-tuning v2's behaviour).
    A run whose training diverges is recorded as failed (``status``, ``error``; no score) and not tried again
    on resume unless ``retry_failed``. Processes with the same settings may share ``out`` and split the plan
    (``experiments.ownership``); one with other settings is refused while another is live there.

    ``save_models``: each run this process trains and finishes saves its tuned model to ``<out>/models/<run name>/``
    (under torchrun: rank 0). It is not part of the records' ``config``: the comparison is the same with or without."""
    from .. import recipe

    tasks = list(dict.fromkeys(tasks))
    methods = list(dict.fromkeys(recipe(m).name for m in methods))  # canonical names: one key per run
    comparison = Comparison.of(model_name, profile, data_dir, overrides, shift_prefix_positions)
    budget_free = [m for m in methods if not RECIPES[m].uses_budget]
    runs = plan(tasks, methods, seeds, list(budgets), list(train_sizes), budget_free, resolve=comparison.recipe)
    splits = validate(comparison, runs)
    check_out(Path(out))
    config = comparison.record_config()
    path = Path(out) / RESULTS_FILE
    if not is_main_process():  # under torchrun every process trains the runs rank 0 plans; rank 0 owns the folder
        log = lambda message: None  # noqa: E731
    owner = FolderClaim(out, config, alone=_distributed()) if is_main_process() else nullcontext()
    with owner:
        records = read_results(path)
        check_records(records, path)
        check_config(records, config, path)
        for task, (eval_source, valid_source) in splits.items():
            check_splits(records, task, eval_source, valid_source, path)
        done = done_keys(records, retry_failed)
        todo = [r for r in runs if r.key not in done]
        log(f"memtune compare: {len(runs)} runs, {len(runs) - len(todo)} already in {path}, {len(todo)} to do")
        records += _run_plan(todo, comparison, owner, path, config, progress, log, retry_failed, save_models)
    return records


def _distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _run_plan(todo: list[RunSpec], comparison: Comparison, owner: Any, path: Path, config: dict[str, Any], progress: bool,
              log: Callable[[str], None], retry_failed: bool, save_models: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    """Train the runs this process can claim, appending each record as it finishes; the new records."""

    def finished() -> set:  # runs another process sharing the folder has recorded since the plan was made
        return done_keys(read_results(path), retry_failed)

    new, skipped = [], []
    quiet = None if is_main_process() else open(os.devnull, "w")  # noqa: SIM115 - closed below
    display = PlanProgress(todo, bars=None if progress else False, stream=quiet)
    try:
        for n, spec in enumerate(todo, start=1):
            label = f"[{n}/{len(todo)}] {spec}"
            if isinstance(owner, FolderClaim) and not owner.claim(spec.key, finished):
                skipped.append(spec)
                display.skip(spec, f"{label}: taken by another process sharing {path.parent}")
                continue
            try:
                run = display.start(label, spec.method)
                save_to = path.parent / MODELS_DIR / spec.name if save_models and is_main_process() else None
                record = run_one(spec, comparison, [run.callback()], out=path.parent, bars=display.bars, save_to=save_to)
                record["config"] = config
                if is_main_process():
                    append_result(path, record)
            finally:
                if isinstance(owner, FolderClaim):
                    owner.release(spec.key)
            new.append(record)
            display.finish(spec.method, _summary(label, record))
    finally:
        display.close()
        if quiet is not None:
            quiet.close()
    failed = [r for r in new if is_failed(r)]
    if failed:
        log(f"{len(failed)} run(s) failed and are recorded as failed in {path} (rerun with --retry-failed to try again):")
        for r in failed:
            log(f"  - {r['error']}")
    if skipped:
        log(f"{len(skipped)} run(s) were left to other processes sharing {path.parent}; its tables are complete when the last finishes")
    return new


def _summary(label: str, record: dict[str, Any]) -> str:
    if is_failed(record):
        return f"{label}: FAILED: {record['error']}"
    return (f"{label}: {record['metric']} {record['score']:.2f} on {record['eval_source']} (valid {record['valid']:.2f}, "
            f"best epoch {record['best_epoch']}), {record['train_seconds']:.0f} s training")  # fmt: skip
