"""The comparison's results file and tables: pure functions over run records (no training)."""
from __future__ import annotations

import json

import pytest

from memtune.errors import ConfigError
from memtune.experiments.compare import plan
from memtune.experiments.report import write_reports
from memtune.experiments.results import append_result, check_config, check_splits, read_results
from memtune.experiments.tables import csv_table, markdown_table, summarize, sweep_rows

CONFIG = {"model": "minilm", "profile": "cpu", "overrides": {}}


def record(task, method, seed, score, budget=32, train_size=None, tuned=1.0, stored=0.5):
    return {
        "task": task, "method": method, "seed": seed, "budget": budget, "train_size": train_size, "score": score,
        "metric": "accuracy", "tuned_pct": tuned, "stored_pct": stored, "config": CONFIG, "eval_source": "dev",
        "valid_source": "10% of train", "n_train": 100, "notes": [],
    }  # fmt: skip


RECORDS = [
    record("rte", "ft", 0, 60.0), record("rte", "ft", 1, 62.0),
    record("rte", "lora", 0, 58.0), record("rte", "lora", 1, 64.0),
    record("cb", "ft", 0, 80.0), record("cb", "ft", 1, 70.0),
    record("cb", "lora", 0, 90.0), record("cb", "lora", 1, 90.0),
]  # fmt: skip


def test_summary_means_stds_averages_and_ranks_over_seeds():
    s = summarize(RECORDS)
    assert s["methods"] == ["ft", "lora"] and s["columns"] == ["rte", "cb"]
    assert s["cells"][("ft", "rte")] == pytest.approx((61.0, 1.41421356))
    # averages per seed over tasks: ft (70, 66) -> 68 +- 2.83; lora (74, 77) -> 75.5 +- 2.12
    assert s["average"]["ft"] == pytest.approx((68.0, 2.8284271))
    assert s["average"]["lora"] == pytest.approx((75.5, 2.1213203))
    # ranks: seed 0 rte ft 1 lora 2, cb ft 2 lora 1 -> 1.5 each; seed 1: rte lora 1, cb lora 1 -> lora 1, ft 2
    assert s["rank"]["lora"] == pytest.approx((1.25, 0.35355339))
    assert s["rank"]["ft"] == pytest.approx((1.75, 0.35355339))


def test_markdown_marks_best_bold_and_second_underlined():
    text = markdown_table(summarize(RECORDS), {"rte": "RTE", "cb": "CB"})
    lora = next(line for line in text.splitlines() if line.startswith("| LoRA"))
    ft = next(line for line in text.splitlines() if line.startswith("| FT"))
    assert "**90.0 ± 0.0**" in lora and "<u>75.0 ± 7.1</u>" in ft  # CB column
    assert "**1.2 ± 0.4**" in lora and "<u>1.8 ± 0.4</u>" in ft  # rank: lower is better
    assert "| Method | #Tuned | #Stored | RTE | CB | Avg. score | Avg. rank |" in text


def test_missing_runs_show_a_dash_and_leave_averages_to_complete_seeds():
    partial = RECORDS[:-1]  # lora, cb, seed 1 missing
    s = summarize(partial)
    assert s["complete_seeds"] == [0]
    assert s["average"]["lora"] == pytest.approx((74.0, 0.0))
    assert "**90.0 ± 0.0** (n=1)" in markdown_table(s)  # a cell with fewer seeds says so
    assert "CB" in csv_table(s, {"cb": "CB"}).splitlines()[0].replace("cb", "CB")


def test_ties_share_their_rank():
    tied = [record("rte", m, 0, 50.0) for m in ("ft", "lora", "adapter")]
    assert summarize(tied)["rank"]["ft"] == pytest.approx((2.0, 0.0))


def test_results_file_appends_resumes_and_refuses_another_config(tmp_path):
    path = tmp_path / "results.jsonl"
    for r in RECORDS[:3]:
        append_result(path, r)
    with open(path, "a") as f:
        f.write('{"task": "cb", "meth')  # a write cut off by a kill
    with pytest.warns(UserWarning, match="line 4 is incomplete"):
        assert len(read_results(path)) == 3
    append_result(path, RECORDS[3])  # the fragment is cut first, nothing else is lost
    assert [r["score"] for r in read_results(path)] == [60.0, 62.0, 58.0, 64.0]
    check_config(read_results(path), CONFIG, path)
    with pytest.raises(ConfigError, match="profile: file has 'cpu', this run 'paper'"):
        check_config(read_results(path), {**CONFIG, "profile": "paper"}, path)


def test_a_whole_last_record_without_its_newline_is_kept(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps(RECORDS[1]))  # e.g. cut just before "\n"
    assert len(read_results(path)) == 2
    append_result(path, RECORDS[2])
    assert [r["score"] for r in read_results(path)] == [60.0, 62.0, 58.0]


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(b"\xff\xfe binary")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        read_results(path)


def test_runs_scored_on_other_splits_are_refused():
    check_splits(RECORDS, "rte", "dev", "10% of train", "results.jsonl")  # the same splits: fine
    check_splits(RECORDS, "sst2", "test", "dev", "results.jsonl")  # a task not in the file yet: fine
    with pytest.raises(ConfigError, match="holds rte runs scored on 'dev'.*would score on 'valid'"):
        check_splits(RECORDS, "rte", "valid", "10% of train", "results.jsonl")


def test_corrupt_middle_line_names_the_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\nnot json\n" + json.dumps(RECORDS[1]) + "\n")
    with pytest.raises(ConfigError, match="line 2 is not valid JSON"):
        read_results(path)


def test_plan_is_task_major_and_complete():
    runs = plan(["rte", "cb"], ["ft", "lora"], [0, 1], [32], [None])
    assert len(runs) == 8 and runs[0].task == "rte" and runs[-1].task == "cb"
    assert len({r.key for r in runs}) == 8
    assert plan(["rte"], ["lora", "lora"], [0], [32, 32], [None]) == plan(["rte"], ["lora"], [0], [32], [None])


def test_plan_runs_budget_free_methods_once_at_the_main_budget():
    runs = plan(["rte"], ["ft", "lora"], [0], [8, 32, 64], [None], budget_free=["ft"])
    assert [(r.method, r.budget) for r in runs] == [("lora", 8), ("ft", 32), ("lora", 32), ("lora", 64)]


def test_a_comparison_resolves_each_recipe_once_and_records_its_config_as_before():
    from memtune.experiments import Comparison

    comparison = Comparison.of("minilm", "cpu", None, {"epochs": 2, "lr": None, "decode_batch_size": 4},
                               shift_prefix_positions=True)  # fmt: skip
    assert comparison.training == (("epochs", 2),) and comparison.decoding == (("batch_size", 4),)
    assert comparison.record_config() == {"model": "minilm", "profile": "cpu", "overrides": {"epochs": 2, "decode_batch_size": 4},
                                          "shift_prefix_positions": True}  # fmt: skip
    runs = plan(["rte", "cb"], ["mt-mf"], [0, 1], [32], [None], resolve=comparison.recipe)
    assert len({id(r.recipe) for r in runs}) == 1  # one Recipe object shared by the four runs
    assert runs[0].recipe.configs[0].shift_positions is True and runs == plan(["rte", "cb"], ["mt-mf"], [0, 1], [32], [None])
    with pytest.raises(ConfigError):
        Comparison.of("minilm", overrides={"num_beams": 0})  # decoding values checked before any run


def test_marks_follow_the_printed_values():
    close = [record("rte", "ft", 0, 85.34), record("rte", "lora", 0, 85.26), record("rte", "adapter", 0, 80.0)]
    text = markdown_table(summarize(close))
    assert "**85.3 ± 0.0**" in next(line for line in text.splitlines() if line.startswith("| FT"))
    assert "**85.3 ± 0.0**" in next(line for line in text.splitlines() if line.startswith("| LoRA"))
    assert "<u>80.0 ± 0.0</u>" in next(line for line in text.splitlines() if line.startswith("| Adapter"))


def test_sweep_counts_a_run_recorded_twice_once():
    twice = [record("rte", "lora", 0, 50.0, budget=8), record("rte", "lora", 0, 50.0, budget=8), record("rte", "lora", 1, 60.0, budget=8)]
    (row,) = sweep_rows(twice)
    assert row["runs"] == 2 and row["mean"] == 55.0


def test_reports_are_written_from_records_alone(tmp_path):
    sweep = [record("rte", m, s, 50.0 + b / 8 + s, budget=b) for m in ("lora", "mt-mf") for s in (0, 1) for b in (8, 32)]
    sweep += [record("rte", "bitfit", s, 52.0, budget=32) for s in (0, 1)]  # budget-free: a reference line
    low = [record("rte", "lora", s, 55.0 + s, train_size=n) for s in (0, 1) for n in (128, 256)]
    written = {p.name for p in write_reports(RECORDS + sweep + low, tmp_path)}
    assert written == {"table3.md", "table3.csv", "table3_bars.png", "table5.md", "table5.csv", "budget_sweep.csv",
                       "budget_sweep.png"}  # no history in these records: no curves  # fmt: skip
    assert (tmp_path / "budget_sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "rte (128)" in (tmp_path / "table5.md").read_text()
    rows = sweep_rows([r for r in sweep])
    got = [(r["method"], r["budget"], r["mean"]) for r in rows]
    assert got[:2] == [("lora", 8, 51.5), ("lora", 32, 54.5)] and ("bitfit", 32, 52.0) in got


def _append_many(path, tag, n):
    for i in range(n):
        append_result(path, {**record("rte", tag, i, float(i)), "padding": "x" * 5000})


def test_appends_from_parallel_processes_stay_whole(tmp_path):
    import multiprocessing

    path = tmp_path / "results.jsonl"
    processes = [multiprocessing.Process(target=_append_many, args=(path, tag, 40)) for tag in ("ft", "lora")]
    for p in processes:
        p.start()
    for p in processes:
        p.join()
    records = read_results(path)
    assert len(records) == 80 and {r["method"] for r in records} == {"ft", "lora"}


def test_a_held_out_evaluation_split_is_said_once_per_task(tmp_path):
    held = dict(eval_source="valid (val.jsonl is absent: held out)", notes=[
        "cb: val.jsonl, the paper's dev split, is absent (held out); the reported numbers are on the validation set",
        "cb: a caveat of the task itself",
    ])  # fmt: skip
    records = [{**r, **held} if r["task"] == "cb" else r for r in RECORDS]
    write_reports(records, tmp_path)
    lines = {line.split(" (")[0]: line for line in (tmp_path / "table3.md").read_text().splitlines() if line.startswith("- ")}
    assert lines["- CB"].count("held out") == 1 and "val.jsonl, the paper's evaluation split" in lines["- CB"]
    assert "a caveat of the task itself" in lines["- CB"]
    assert "held out" not in lines["- RTE"] and "scored on dev; early stopping on 10% of train" in lines["- RTE"]


def _generation_record(method, seed, bleu, ter):
    return {**record("webnlg", method, seed, bleu), "metric": "bleu", "scores": {"bleu": bleu, "ter": ter},
            "decoding": {"max_new_tokens": 30, "num_beams": 1}}  # fmt: skip


def test_table7_has_a_column_per_task_and_metric_and_ter_is_lower_is_better(tmp_path):
    generation = [_generation_record("lora", 0, 40.0, 50.0), _generation_record("lora", 1, 42.0, 48.0),
                  _generation_record("mt-mf", 0, 45.0, 60.0), _generation_record("mt-mf", 1, 45.0, 62.0)]  # fmt: skip
    written = {p.name for p in write_reports(RECORDS + generation, tmp_path)}
    assert {"table3.md", "table7.md", "table7.csv"} <= written
    table3 = (tmp_path / "table3.md").read_text()
    assert "WebNLG" not in table3 and "webnlg" not in table3  # generation runs stay out of Table III
    lines = (tmp_path / "table7.md").read_text().splitlines()
    assert "| Method | #Tuned | #Stored | WebNLG BLEU | WebNLG TER |" in lines
    rows = {line.split(" | ")[0]: line for line in lines if line.startswith("| LoRA") or line.startswith("| MT-MF")}
    assert "**45.0 ± 0.0**" in rows["| MT-MF"] and "<u>41.0 ± 1.4</u>" in rows["| LoRA"]  # BLEU: higher is better
    assert "**49.0 ± 1.4**" in rows["| LoRA"] and "<u>61.0 ± 1.4</u>" in rows["| MT-MF"]  # TER: lower is better
    csv_lines = (tmp_path / "table7.csv").read_text().splitlines()
    assert csv_lines[0] == "method,task,metric,mean,std,runs" and "lora,webnlg,ter,49.0,1.4142,2" in csv_lines


def test_table7_shows_webnlg_seen_unseen_all_and_training_subsets_in_columns_of_their_own(tmp_path):
    full = {**_generation_record("mt-mf", 0, 45.0, 60.0), "scores": {"bleu": 45.0, "bleu/seen": 50.0, "bleu/unseen": 30.0}}
    subset = {**_generation_record("mt-mf", 0, 20.0, 70.0), "train_size": 100,
              "pairs": {"train": 250, "train_left_out": 3}, "settings": {"max_length": 128}}  # fmt: skip
    write_reports([full, subset], tmp_path)
    lines = (tmp_path / "table7.md").read_text().splitlines()
    header = "| Method | #Tuned | #Stored | WebNLG BLEU-S | WebNLG BLEU-U | WebNLG BLEU | WebNLG (100 train inputs) BLEU | WebNLG (100 train inputs) TER |"
    assert header in lines
    row = next(line for line in lines if line.startswith("| MT-MF"))
    assert row.endswith("| **50.0 ± 0.0** | **30.0 ± 0.0** | **45.0 ± 0.0** | **20.0 ± 0.0** | **70.0 ± 0.0** |")
    assert any(line.startswith("- WebNLG (100 train inputs) (bleu):") and "250 pairs, 3 left out as longer than" in line
               for line in lines)  # fmt: skip


def test_table7_prints_nist_and_cider_with_two_decimals_and_names_a_sampled_validation_set(tmp_path):
    rec = {**_generation_record("lora", 0, 40.0, 50.0), "task": "e2e", "scores": {"bleu": 40.04, "nist": 4.771, "cider": 1.163},
           "settings": {"valid_size": 24, "max_length": 128}, "n_valid": 24}  # fmt: skip
    write_reports([rec], tmp_path)
    text = (tmp_path / "table7.md").read_text()
    assert "| **40.0 ± 0.0** | **4.77 ± 0.00** | **1.16 ± 0.00** |" in text
    assert "early stopping on 10% of train (a fixed sample of 24 of its inputs, --valid-size)" in text


def test_validate_accepts_runs_planned_without_their_recipe(tmp_path):
    from memtune.experiments.compare import Comparison, validate
    from fixture_data import fixture_root

    runs = plan(["cb"], ["lora"], [0], [32], [None])  # no resolve: run.recipe is None
    assert runs[0].recipe is None
    splits = validate(Comparison("minilm", data_dir=str(fixture_root())), runs)
    assert set(splits) == {"cb"}


# --- training curves and the Table III bar chart --------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n"


def _with_history(r, valids, losses):
    history = [{"epoch": float(e), "valid": v, **({"train_loss": loss} if loss is not None else {})}
               for e, (v, loss) in enumerate(zip(valids, losses), start=1)]  # fmt: skip
    return {**r, "history": history, "best_epoch": 1 + valids.index(max(valids))}


def test_bar_rows_are_the_summary_means_and_stds_in_the_tables_order(tmp_path):
    from memtune.experiments.tables import bar_rows, bars_plot, score_label

    partial = [r for r in RECORDS if not (r["method"] == "lora" and r["task"] == "cb")]  # lora has no cb runs
    rows = bar_rows(summarize(partial))
    assert [(r["task"], r["method"], r["runs"]) for r in rows] == [("rte", "ft", 2), ("rte", "lora", 2), ("cb", "ft", 2)]
    assert (rows[0]["mean"], rows[0]["std"]) == pytest.approx((61.0, 1.41421356))  # ft rte: 60, 62
    assert (rows[1]["mean"], rows[1]["std"]) == pytest.approx((61.0, 4.24264069))  # lora rte: 58, 64
    assert (rows[2]["mean"], rows[2]["std"]) == pytest.approx((75.0, 7.07106781))  # ft cb: 80, 70
    assert score_label(["accuracy", "entity_f1", "f1"]) == "score (accuracy / F1)"
    png = bars_plot(rows, {"rte": "RTE", "cb": "CB"}, "score (accuracy)")
    assert png.startswith(PNG) and len(png) > 5000
    write_reports(RECORDS, tmp_path)
    assert (tmp_path / "table3_bars.png").read_bytes().startswith(PNG)


def test_the_bar_chart_is_drawn_only_with_table3(tmp_path):
    write_reports([record("rte", "lora", 0, 50.0, train_size=128)], tmp_path)  # low data only: table5, no table3
    assert (tmp_path / "table5.md").exists() and not (tmp_path / "table3.md").exists()
    assert not (tmp_path / "table3_bars.png").exists()


def test_curve_rows_csv_and_best_epoch_from_a_records_history():
    from memtune.experiments.curves import best_row, curve_rows, curves_csv, valid_label

    r = _with_history(RECORDS[0], [50.0, 60.0, 60.0, 55.0], [1.1, 0.9, 0.8, None])
    rows = curve_rows(r)
    assert rows[1] == {"epoch": 2.0, "train_loss": 0.9, "valid": 60.0} and rows[3]["train_loss"] is None
    assert best_row(r, rows) == 1  # the first best: a later equal score does not replace the kept tensors
    assert curves_csv(rows).splitlines() == ["epoch,train_loss,valid", "1.0,1.1,50.0", "2.0,0.9,60.0", "3.0,0.8,60.0",
                                             "4.0,,55.0"]  # fmt: skip
    assert valid_label(r) == "validation accuracy (%)"
    generation = {**_generation_record("lora", 0, 40.0, 50.0), "valid_metric": "loss",
                  "history": [{"epoch": 1.0, "valid": -2.5}, {"epoch": 2.0, "valid": -2.0}]}  # fmt: skip
    rows = curve_rows(generation)  # early stopping kept the loss negated; the curve shows the loss
    assert [row["valid"] for row in rows] == [2.5, 2.0] and best_row(generation, rows) == 1
    assert valid_label(generation) == "validation loss"


def test_reports_write_a_curve_per_scored_run_and_none_for_failed_ones(tmp_path):
    from memtune.experiments.compare import RunSpec, write_generations
    from memtune.experiments.results import run_name

    scored = [_with_history(r, [50.0, 60.0 + i], [1.0, 0.5]) for i, r in enumerate(RECORDS)]
    sized = _with_history(record("rte", "lora", 0, 55.0, train_size=128), [40.0], [2.0])
    failed = {**record("cb", "mt-f", 0, None), "status": "failed", "error": "diverged",
              "history": [{"epoch": 1.0, "valid": 1.0}]}  # fmt: skip
    written = write_reports([*scored, sized, failed], tmp_path)
    assert tmp_path / "curves" in written
    csvs = sorted(p.name for p in (tmp_path / "curves").glob("*.csv"))
    pngs = sorted(p.name for p in (tmp_path / "curves").glob("*.png"))
    assert len(csvs) == len(pngs) == len(RECORDS) + 1 and "rte-lora-b32-n128-s0.csv" in csvs
    assert not any(name.startswith("cb-mt-f") for name in csvs + pngs)  # the failed run: no curve
    first = (tmp_path / "curves" / f"{run_name(scored[0])}.csv").read_text().splitlines()
    assert first == ["epoch,train_loss,valid", "1.0,1.0,50.0", "2.0,0.5,60.0"]
    png = (tmp_path / "curves" / f"{run_name(scored[0])}.png").read_bytes()
    assert png.startswith(PNG) and len(png) > 5000  # matplotlib drew something, not an empty canvas
    # the curves' names are the generations' names: one helper for both
    spec = RunSpec("rte", "lora", 0, 32, 128)
    data = type("Data", (), {"eval": []})()
    assert spec.name == run_name(sized) == "rte-lora-b32-n128-s0"
    assert write_generations(tmp_path, spec, data, []) == f"generations/{spec.name}.jsonl"
