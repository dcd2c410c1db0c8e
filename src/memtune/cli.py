"""The ``memtune`` command: a thin layer over the library API."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .errors import MemtuneError
from .models import HEAD_CLASSES, auto_class
from .settings import MAX_COUNT
from .settings import flags as training_flags
from .version import __version__

TABLE_II_METHODS = "ft,bitfit,adapter,lora,prefix,mam,mt-f,mt-mf"


def _format_params(model_name: str, rows: list[dict[str, Any]]) -> str:
    lines = [f"memtune params: {model_name}, backbone {rows[0]['backbone']:,} parameters (task head excluded from %)", ""]
    header = (
        f"{'method':<8} {'budget':>6} | {'#tuned':>11} {'%':>6} {'#stored':>11} {'%':>6} | "
        f"{'formula #tuned':>14} {'%':>6} {'formula #stored':>15} {'%':>6} | {'paper %':>13}"
    )
    lines += [header, "-" * len(header)]
    for row in rows:
        f = row["paper_formula"]
        formula = (
            f"{f['tuned_value']:>14,} {f['tuned_pct']:>5.2f}% {f['stored_value']:>15,} {f['stored_pct']:>5.2f}%"
            if f
            else f"{'-':>14} {'-':>6} {'-':>15} {'-':>6}"
        )
        printed = row["paper_printed_pct"]
        paper = f"{printed[0]:>5.2f} / {printed[1]:<5.2f}" if printed else "-"
        lines.append(
            f"{row['method']:<8} {row['budget']:>6} | {row['tuned']:>11,} {row['tuned_pct']:>5.2f}% {row['stored']:>11,} "
            f"{row['stored_pct']:>5.2f}% | {formula} | {paper:>13}"
        )
    lines.append("")
    lines.append("paper %: #Tuned / #Stored as printed in the paper's Table IV (BERT-base) or III (BERT-large)")
    for row in rows:
        f = row["paper_formula"]
        if f:
            lines.append(f"{row['method']}: Table II #tuned = {f['tuned']}, #stored = {f['stored']}")
            lines.append(f"  difference: {f['note']}")
        if len(row["per_method"]) > 1:
            parts = ", ".join(f"{k} {v['tuned']:,} tuned / {v['stored']:,} stored" for k, v in row["per_method"].items())
            lines.append(f"  {row['method']} = {parts}")
    return "\n".join(lines)


def cmd_params(args: argparse.Namespace) -> int:
    models = _names(args.model, "--model")
    methods = _names(args.method, "--method")
    from .params import params_rows

    tables = [params_rows(model, methods, args.budget, args.head, args.num_labels) for model in models]
    if args.json:
        print(json.dumps([row for rows in tables for row in rows], indent=2))
    else:
        print("\n\n".join(_format_params(model, rows) for model, rows in zip(models, tables)))
    return 0


def _names(text: str, what: str | None = None) -> list[str]:
    """Comma-separated names; with ``what``, at least one is required."""
    names = [t.strip() for t in text.split(",")] if text.strip() else []
    if what and not any(names):
        raise MemtuneError(f"{what} needs at least one name, got {text!r}")
    if not all(names):
        raise MemtuneError(f"{what or 'the list'} has an empty item between commas: {text!r}; remove the extra comma")
    return names




def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",")]  # int() takes surrounding spaces; '' and '1,,2' fail
    except ValueError:
        raise MemtuneError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise MemtuneError(f"{what} must be positive integers, got {text!r}")
    if any(v > MAX_COUNT for v in values):
        raise MemtuneError(f"{what} values must be at most {MAX_COUNT:,}, got {text!r}")
    return values


def _seeds(text: str) -> list[int]:
    """'3' means seeds 0, 1, 2; '0,5,7' lists them."""
    if "," not in text:
        return list(range(_ints(text, "--seeds")[0]))
    try:
        seeds = [int(t) for t in text.split(",")]
    except ValueError:
        seeds = [-1]
    if any(s < 0 or s >= 2**32 for s in seeds) or len(set(seeds)) != len(seeds):
        raise MemtuneError(f"--seeds must be a count or distinct non-negative integers, got {text!r}")
    return seeds


DEFAULT_METHODS = "ft,bitfit,adapter,lora,prefix,mam,mt-f,mt-mf"


def cmd_compare(args: argparse.Namespace) -> int:
    from .experiments import compare, write_reports

    overrides = {name: getattr(args, name) for name, _, _, _ in training_flags()}
    overrides.update(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, decode_batch_size=args.decode_batch_size)
    compare(
        args.model,
        _names(args.tasks, "--tasks"),
        _names(args.methods, "--methods"),
        _seeds(args.seeds),
        out=args.out,
        budgets=_ints(args.budgets, "--budgets"),
        train_sizes=_ints(args.train_size, "--train-size") if args.train_size else [None],
        profile=args.profile,
        data_dir=args.data_dir,
        overrides=overrides,
        shift_prefix_positions=args.shift_prefix_positions,
        progress=not args.no_progress,
        retry_failed=args.retry_failed,
        save_models=args.save_models,
    )
    from .experiments.compare import finish_distributed, is_main_process

    finish_distributed()
    if is_main_process():
        _render_tables(args.out)
        table = Path(args.out) / "table3.md"
        if table.exists():
            print(table.read_text())
    return 0


def _render_tables(out: str) -> None:
    """Write the tables from ``<out>/results.jsonl`` as it is now (other processes sharing it included)."""
    from .experiments import read_results, write_reports
    from .experiments.compare import RESULTS_FILE
    from .experiments.results import check_records

    records = read_results(Path(out) / RESULTS_FILE)
    check_records(records, Path(out) / RESULTS_FILE)
    if not records:
        raise MemtuneError(f"{Path(out) / RESULTS_FILE} holds no runs; run memtune compare --out {out} first")
    for path in write_reports(records, out):
        print(f"wrote {path}")


def cmd_visualize(args: argparse.Namespace) -> int:
    from .visualize import visualize

    run = _run_info(args.checkpoint)  # a model saved by compare --save-models knows its model, task and data
    model, task = args.model or run.get("model"), args.task or run.get("task")
    if not model or not task:
        raise MemtuneError(f"{args.checkpoint} does not say which base model and task it was tuned on (no run.json); "
                           f"pass --model and --task")  # fmt: skip
    visualize(args.checkpoint, model, task, args.out, layer=args.layer, data_dir=args.data_dir or run.get("data_dir"),
              max_examples=args.max_examples, max_length=args.max_length, seed=args.seed)  # fmt: skip
    return 0


def _run_info(checkpoint: str) -> dict:
    """``run.json`` of a checkpoint saved by ``compare --save-models`` ({} when absent or unreadable)."""
    try:
        info = json.loads((Path(checkpoint) / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def cmd_table(args: argparse.Namespace) -> int:
    _render_tables(args.out)
    return 0


def _saved_labels(checkpoint: str) -> int | None:
    """The number of labels of the classification head a memtune checkpoint holds (rows of its last head weight)."""
    from safetensors import safe_open

    from .io import read_config

    config = read_config(checkpoint)
    with safe_open(str(Path(checkpoint) / config["weights"]["file"]), framework="pt") as f:
        heads = [k for k in f.keys() if k.startswith("head.") and k.endswith(".weight")]
        return f.get_slice(heads[-1]).get_shape()[0] if heads else None


def cmd_export(args: argparse.Namespace) -> int:
    from . import load
    from .models import load_model
    from .peft_format import export_peft

    kwargs = {}
    if args.head in ("seq", "token"):
        labels = args.num_labels or _saved_labels(args.checkpoint)
        if labels is None:
            raise MemtuneError(f"{args.checkpoint} holds no trained head to read the label count from; pass --num-labels")
        kwargs["num_labels"] = labels
    model = load(load_model(args.model, auto_class(args.head), **kwargs), args.checkpoint)
    folder = export_peft(model, args.out)
    print(f"wrote {folder} (peft's adapter_config.json + adapter_model.safetensors); load it with "
          f"peft.PeftModel.from_pretrained(base_model, {str(folder)!r})")
    return 0


def cmd_bench_decode(args: argparse.Namespace) -> int:
    from .bench.decode import decode_bench, markdown
    from .bench.timing import write

    result = decode_bench(
        args.model, args.task, _names(args.methods, "--methods"), data_dir=args.data_dir, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, limit=args.limit, natural_length=args.natural_length, threads=args.threads,
        progress=not args.no_progress,
    )  # fmt: skip
    print(markdown(result))
    if args.out:
        print(f"wrote {write(result, args.out)}")
    return 0


def cmd_bench_latency(args: argparse.Namespace) -> int:
    from .bench.latency import latency_bench, markdown
    from .bench.timing import write

    result = latency_bench(args.model, _names(args.methods, "--methods"), batch_size=args.batch, seq_len=args.seq,
                           precision=args.precision, max_seconds=args.max_seconds, threads=args.threads,
                           progress=not args.no_progress)  # fmt: skip
    print(markdown(result))
    if args.out:
        print(f"wrote {write(result, args.out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memtune", description="Memory-tuning and its baselines for Hugging Face transformers.")
    parser.add_argument("--version", action="version", version=f"memtune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("params", help="count tuned / stored parameters of methods on a model, next to the paper's Table II")
    p.add_argument(
        "--model",
        default="bert-base,bert-large",
        help="comma-separated: bert-base | bert-large (dimensions only) | minilm | mpnet-base | smollm2-135m | a local "
        "path | a hub id (default: bert-base,bert-large, the paper's Table II)",
    )
    p.add_argument("--method", default=TABLE_II_METHODS, help=f"recipe name(s), comma separated (default: {TABLE_II_METHODS})")
    p.add_argument("--budget", type=int, default=32, help="parameter budget: l, s (and r) of the paper (default: 32)")
    p.add_argument("--head", choices=["none", "seq", "token", "lm"], default="none", help="task head to build (counted apart; default: none)")
    p.add_argument("--num-labels", type=int, default=2, help="labels of a seq/token head (default: 2)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=cmd_params)

    c = sub.add_parser("compare", help="train and evaluate methods on tasks over seeds; writes results.jsonl and Table III")
    c.add_argument("--model", default="minilm", help="packaged short name, local path or hub id (default: minilm)")
    c.add_argument("--tasks", default="rte,cb,conll2004", help="comma-separated tasks (default: rte,cb,conll2004)")
    c.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated recipes (default: {DEFAULT_METHODS})")
    c.add_argument("--seeds", default="3", help="a count (3 = seeds 0,1,2) or a comma-separated list (default: 3)")
    c.add_argument("--budgets", default="32", help="comma-separated parameter budgets; several give the Fig. 2 sweep (default: 32)")
    c.add_argument("--train-size", default=None, help="comma-separated training-set sizes for the low-data Table V")
    c.add_argument("--profile", default="cpu", choices=["cpu", "paper"], help="training settings (default: cpu; paper = Table I)")
    c.add_argument("--out", default="results/compare", help="folder of results.jsonl and the tables (default: results/compare)")
    c.add_argument("--data-dir", default=None, help="data root holding the task folders (default: $MEMTUNE_DATA, then ../shared/data)")
    for name, flag, kind, text in training_flags():  # every TrainSettings field, as an override of the profile
        c.add_argument(flag, dest=name, metavar=flag[2:].upper().replace("-", "_"), type=kind, default=None, help=text)
    c.add_argument("--max-new-tokens", type=int, default=None, help="generation tasks: tokens to generate at most (default: the task's, 30)")
    c.add_argument("--num-beams", type=int, default=None, help="generation tasks: beam search width (default: 1, greedy)")
    c.add_argument("--decode-batch-size", type=int, default=None,
                   help="generation tasks: inputs decoded together, left-padded (default: 16)")
    c.add_argument(
        "--shift-prefix-positions",
        action="store_true",
        help="prefixes (of prefix, mt-m, mam, mt-mf, unipelt) give the real tokens positions l, l+1, ..., as P-tuning v2 and the paper's code do",
    )
    c.add_argument("--retry-failed", action="store_true",
                   help="train again the runs recorded as failed (diverged) in --out; by default a resume keeps them as failed")
    c.add_argument("--save-models", action="store_true",
                   help="save each finished run's tuned model to --out/models/<run>/ (memtune.save, with run.json); "
                        "not part of the comparison's settings")  # fmt: skip
    c.add_argument("--no-progress", action="store_true", help="no progress bars (summary lines only)")
    c.set_defaults(run=cmd_compare)

    e = sub.add_parser("export", help="write a memtune checkpoint in another library's format (peft: LoRA, shifted prefixes)")
    e.add_argument("checkpoint", help="folder written by memtune.save")
    e.add_argument("--model", required=True, help="the base model it was trained on: packaged short name, local path or hub id")
    e.add_argument("--head", choices=list(HEAD_CLASSES), default="seq", help="the model's head (default: seq)")
    e.add_argument("--num-labels", type=int, default=None, help="labels of a seq/token head (default: read from the checkpoint)")
    e.add_argument("--format", choices=["peft"], default="peft", help="output format (default: peft)")
    e.add_argument("--out", required=True, help="folder to write")
    e.set_defaults(run=cmd_export)

    b = sub.add_parser("bench", help="speed measurements: methods relative to the untuned model, interleaved, with 95%% intervals")
    bench = b.add_subparsers(dest="bench", required=True)
    d = bench.add_parser("decode", help="data-to-text decoding time with the KV cache, each method vs the untuned model (= 100)")
    d.add_argument("--model", default="smollm2-135m", help="a causal LM: packaged short name, local path or hub id (default: smollm2-135m)")
    d.add_argument("--task", default="e2e", help="generation task whose evaluation inputs are decoded (default: e2e, its 630 test inputs)")
    d.add_argument("--methods", default="mt-mf", help="comma-separated recipes, each attached to its own copy (default: mt-mf)")
    d.add_argument("--batch-size", type=int, default=32, help="inputs decoded together, left-padded (default: 32)")
    d.add_argument("--max-new-tokens", type=int, default=None, help="tokens generated per input (default: the task's, 30)")
    d.add_argument("--natural-length", action="store_true",
                   help="let each contender stop at its end-of-sequence token (default: all decode exactly --max-new-tokens)")
    d.add_argument("--limit", type=int, default=None, help="decode only the first N inputs (default: all)")
    d.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    d.add_argument("--data-dir", default=None, help="data root holding the task folders (default: as memtune compare)")
    d.add_argument("--out", default=None, help="folder for the JSON result (default: print only)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.set_defaults(run=cmd_bench_decode)
    lat = bench.add_parser("latency", help="Table VI: forward time of each method vs the untuned model (= 100), until the intervals are tight")
    lat.add_argument("--model", default="minilm", help="packaged short name, local path or hub id (default: minilm)")
    lat.add_argument("--methods", default="ft,bitfit,adapter,lora,prefix,mam,mt-f,mt-mf",
                     help="comma-separated recipes, each attached to its own copy (default: the paper's eight)")
    lat.add_argument("--batch", type=int, default=32, help="inputs per batch (default: 32)")
    lat.add_argument("--seq", type=int, default=128, help="tokens per input (default: 128)")
    lat.add_argument("--precision", type=float, default=1.0,
                     help="repeat until every ratio's 95%% interval is within +- this many points (default: 1)")
    lat.add_argument("--max-seconds", type=float, default=600.0, help="stop after this long even if not that precise (default: 600)")
    lat.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    lat.add_argument("--out", default=None, help="folder for the JSON result (default: print only)")
    lat.add_argument("--no-progress", action="store_true", help="no progress bar")
    lat.set_defaults(run=cmd_bench_latency)

    v = sub.add_parser("visualize", help="draw the attention over a tuned model's external memories (the paper's Figs. 3-4), "
                                         "with cluster numbers against an untrained memory")
    v.add_argument("checkpoint", help="folder written by memtune.save (or compare --save-models: its run.json names model and task)")
    v.add_argument("--model", default=None, help="the base model it was tuned on (default: from run.json)")
    v.add_argument("--task", default=None, help="a sentence or token task of the registry (default: from run.json)")
    v.add_argument("--layer", type=int, default=-1, help="the layer whose memories are drawn; negative counts from the last (default: -1)")
    v.add_argument("--out", default="results/visualize", help="folder for the PNG, the points (CSV) and the numbers (JSON)")
    v.add_argument("--data-dir", default=None, help="root of the task folders (default: as memtune compare)")
    v.add_argument("--max-examples", type=int, default=1000, help="evaluation inputs run (a fixed sample beyond; default: 1000)")
    v.add_argument("--max-length", type=int, default=128, help="input length in tokens (default: 128)")
    v.add_argument("--seed", type=int, default=0, help="seed of t-SNE, of the point sample and of the untrained memories (default: 0)")
    v.set_defaults(run=cmd_visualize)

    t = sub.add_parser("table", help="render the tables of a results folder again, without training")
    t.add_argument("--out", default="results/compare", help="folder holding results.jsonl (default: results/compare)")
    t.set_defaults(run=cmd_table)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except MemtuneError as e:
        print(f"memtune: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
