"""The ``memtune`` command: a thin layer over the library API."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .errors import MemtuneError
from .version import __version__

# BERT dimensions as in the paper's Table II, to count parameters without any download.
PAPER_CONFIGS: dict[str, dict[str, Any]] = {
    "bert-base": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "bert-large": dict(vocab_size=30522, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


def model_config(name: str):
    """A transformers config for a Table II name, a packaged short name, a local path or a hub id."""
    from transformers import AutoConfig, BertConfig

    if name.lower() in PAPER_CONFIGS:
        return BertConfig(**PAPER_CONFIGS[name.lower()])
    from .models import PACKAGED, resolve

    try:
        return AutoConfig.from_pretrained(resolve(name))
    except OSError as e:
        raise MemtuneError(
            f"cannot read a model config for {name!r}: it is not a Table II name ({', '.join(PAPER_CONFIGS)}), "
            f"a packaged short name ({', '.join(PACKAGED)}) or a local model folder, and the hub did not provide "
            f"it ({str(e).splitlines()[0]})"
        ) from None


def meta_model(config, head: str, num_labels: int):
    """The model built on the meta device: every parameter counted, no memory, no weights read."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoModelForTokenClassification

    classes = {"none": AutoModel, "seq": AutoModelForSequenceClassification, "token": AutoModelForTokenClassification, "lm": AutoModelForCausalLM}
    if head in ("seq", "token"):
        config.num_labels = num_labels
    with torch.device("meta"):
        return classes[head].from_config(config)


def params_rows(model_name: str, methods: list[str], budget: int, head: str, num_labels: int) -> list[dict[str, Any]]:
    """One row per method: measured counts and, where the paper has a formula, its value."""
    from . import attach, detach, parameter_report, recipe
    from .arch import arch_for, dims_of
    from .params import TABLE_II, paper_formula_values

    config = model_config(model_name)
    model = meta_model(config, head, num_labels)
    dims = dims_of(model, arch_for(model))
    rows = []
    for name in methods:
        r = recipe(name, budget)
        attach(model, r)
        report = parameter_report(model)
        detach(model)
        formula = paper_formula_values(r.name, dims.hidden, dims.layers, r.configs)
        rows.append(
            {
                "method": r.name,
                "budget": budget,
                **{k: report[k] for k in ("backbone", "tuned", "stored", "head", "tuned_pct", "stored_pct")},
                "per_method": report["methods"],
                "paper_formula": None
                if formula is None
                else {
                    "tuned": TABLE_II[r.name].tuned,
                    "stored": TABLE_II[r.name].stored,
                    "tuned_value": formula[0],
                    "stored_value": formula[1],
                    "note": TABLE_II[r.name].note,
                },
            }
        )
    return rows


def _format_params(model_name: str, rows: list[dict[str, Any]]) -> str:
    lines = [f"memtune params: {model_name}, backbone {rows[0]['backbone']:,} parameters (task head excluded from %)", ""]
    header = f"{'method':<8} {'budget':>6} {'#tuned':>12} {'tuned %':>8} {'#stored':>12} {'stored %':>8} {'Table II #tuned':>16} {'Table II #stored':>17}"
    lines += [header, "-" * len(header)]
    for row in rows:
        f = row["paper_formula"]
        paper = (f"{f['tuned_value']:>16,} {f['stored_value']:>17,}") if f else f"{'-':>16} {'-':>17}"
        lines.append(
            f"{row['method']:<8} {row['budget']:>6} {row['tuned']:>12,} {row['tuned_pct']:>7.2f}% {row['stored']:>12,} "
            f"{row['stored_pct']:>7.2f}% {paper}"
        )
    lines.append("")
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
    rows = params_rows(args.model, [m.strip() for m in args.method.split(",") if m.strip()], args.budget, args.head, args.num_labels)
    print(json.dumps(rows, indent=2) if args.json else _format_params(args.model, rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memtune", description="Memory-tuning and its baselines for Hugging Face transformers.")
    parser.add_argument("--version", action="version", version=f"memtune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("params", help="count tuned / stored parameters of methods on a model, next to the paper's Table II")
    p.add_argument("--model", required=True, help="bert-base | bert-large (dimensions only) | minilm | mpnet-base | smollm2-135m | a local path | a hub id")
    p.add_argument("--method", default="mt-mf", help="recipe name(s), comma separated (default: mt-mf)")
    p.add_argument("--budget", type=int, default=32, help="parameter budget: l, s (and r) of the paper (default: 32)")
    p.add_argument("--head", choices=["none", "seq", "token", "lm"], default="none", help="task head to build (counted apart; default: none)")
    p.add_argument("--num-labels", type=int, default=2, help="labels of a seq/token head (default: 2)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=cmd_params)
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
