"""`memtune compare` end to end on a tiny saved model and the fixture data: records, resume, refusal, tables."""
from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

import memtune
from memtune.cli import main
from fixture_data import fixture_root, tiny_lm_dir  # noqa: F401 - a fixture

FIXTURES = fixture_root()  # the hand-written fixture files, in a temporary folder


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A random 2-layer BERT and a word-level tokenizer saved like any hub model."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    words = {w for f in FIXTURES.rglob("*") if f.is_file() for w in f.read_text(errors="ignore").split()}
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *sorted(words)[:400]])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=512)  # fmt: skip
    BertModel(config).save_pretrained(folder)
    return folder


def compare(capsys, model, out, *extra, data=FIXTURES):
    code = main(["compare", "--model", str(model), "--data-dir", str(data), "--out", str(out), "--epochs", "1",
                 "--max-steps", "2", "--no-progress", *extra])  # fmt: skip
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_compare_writes_records_resumes_and_renders_tables(capsys, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    code, text, err = compare(capsys, tiny_model_dir, out, "--tasks", "cb,conll2004", "--methods", "lora,mt-mf", "--seeds", "1")
    assert code == 0, err
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["task"], r["method"], r["seed"]) for r in records] == [
        ("cb", "lora", 0), ("cb", "mt-mf", 0), ("conll2004", "lora", 0), ("conll2004", "mt-mf", 0)
    ]  # fmt: skip
    first = records[0]
    assert first["metric"] == "accuracy" and records[2]["metric"] == "entity_f1"
    assert "held out" in first["eval_source"] and first["settings"]["max_train_steps"] == 2
    assert first["tuned"] > 0 and first["train_seconds"] >= 0 and first["peak_memory_mb"] > 0
    assert "| Method | #Tuned | #Stored | CB | CN4 | Avg. score | Avg. rank |" in (out / "table3.md").read_text()
    assert "4 runs, 0 already" in text
    # --no-progress: one plain line per run start, epoch and run end, labelled; no raw Trainer log dicts
    assert "[1/4] cb lora (budget 32) seed 0: started" in err and "[4/4] conll2004 mt-mf (budget 32) seed 0: started" in err
    assert "[1/4] cb lora (budget 32) seed 0: epoch 1, loss " in err  # --max-steps: no epoch count and ", valid " in err
    assert "[1/4] cb lora (budget 32) seed 0: accuracy " in err and "; ETA " in err
    assert "{'loss'" not in text + err and "\r" not in err

    # a second seed: the four finished runs are not redone, four new ones are appended
    code, text, _ = compare(capsys, tiny_model_dir, out, "--tasks", "cb,conll2004", "--methods", "lora,mt-mf", "--seeds", "2")
    assert code == 0 and "8 runs, 4 already" in text
    assert len((out / "results.jsonl").read_text().splitlines()) == 8

    # other settings into the same folder are refused, nothing is written
    code, _, err = compare(capsys, tiny_model_dir, out, "--tasks", "cb", "--methods", "lora", "--seeds", "1", "--lr", "0.1")
    assert code == 2 and "holds runs of another configuration" in err and "overrides" in err
    code, _, err = compare(capsys, tiny_model_dir, out, "--tasks", "cb", "--methods", "mt-mf", "--seeds", "1",
                           "--shift-prefix-positions")  # fmt: skip
    assert code == 2 and "shift_prefix_positions" in err
    assert len((out / "results.jsonl").read_text().splitlines()) == 8

    # tables can be rendered again from the file alone
    (out / "table3.md").unlink()
    assert main(["table", "--out", str(out)]) == 0 and (out / "table3.md").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tasks", "cola"], "unknown task 'cola'; known tasks: sst2, mrpc"),
        (["--methods", "lorra"], "unknown recipe 'lorra'; known recipes"),
        (["--seeds", "0,0"], "--seeds must be a count or distinct non-negative integers"),
        (["--seeds", "99999999999999999999"], "--seeds values must be at most 1,000,000,000"),
        (["--seeds", "1,99999999999999999999"], "--seeds must be a count or distinct non-negative integers"),
        (["--methods", ","], "--methods needs at least one name, got ','"),
        (["--tasks", " , "], "--tasks needs at least one name"),
        (["--budgets", "8,x"], "--budgets must be comma-separated integers"),
        (["--model", "/no/such/model"], "cannot read a model config for '/no/such/model'"),
        (["--tasks", "cb", "--train-size", "100000"], "train_size must be between 1 and the"),
        (["--warmup-ratio", "1.5"], "warmup_ratio must be in [0, 1)"),
        (["--optimizer", "adamx"], "optimizer 'adamx' is not one of"),
        (["--max-steps", "0"], "max_train_steps must be a positive integer"),
        (["--tasks", "cb", "--shift-prefix-positions", "--max-length", "500"], "need 532 positions, and minilm has 512"),
        (["--tasks", "cb", "--max-length", "100000"], "--max-length 100000 (cb) is more than the 512 token positions minilm has"),
    ],
)
def test_compare_bad_input_exits_2_before_training(capsys, tmp_path, argv, message):
    code, _, err = compare(capsys, "minilm", tmp_path / "out", *argv)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_a_bad_out_folder_is_refused_before_any_run_trains(capsys, tiny_model_dir, tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("x")
    for out in (tmp_path / "a-file", tmp_path / "a-file" / "under"):
        code, _, err = compare(capsys, tiny_model_dir, out, "--tasks", "cb", "--methods", "lora", "--seeds", "1")
        assert code == 2 and "is a file or lies under a file" in err and "Traceback" not in err
    import tempfile

    def unwritable(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", unwritable)  # root ignores chmod, so the refusal is simulated
    code, _, err = compare(capsys, tiny_model_dir, tmp_path / "ro", "--tasks", "cb", "--methods", "lora", "--seeds", "1")
    assert code == 2 and "cannot be written (Permission denied)" in err and not (tmp_path / "ro" / "results.jsonl").exists()


@pytest.mark.slow
def test_budget_sweep_and_low_data_give_fig2_and_table5(capsys, tiny_model_dir, tmp_path):
    out = tmp_path / "sweep"
    code, _, err = compare(capsys, tiny_model_dir, out, "--tasks", "conll2004", "--methods", "lora,mt-mf", "--seeds", "1",
                           "--budgets", "4,8")  # fmt: skip
    assert code == 0, err
    rows = (out / "budget_sweep.csv").read_text().splitlines()
    assert rows[0] == "task,method,budget,mean,std,runs" and len(rows) == 1 + 4
    assert (out / "budget_sweep.png").read_bytes()[:4] == b"\x89PNG"
    low = tmp_path / "low"
    code, _, err = compare(capsys, tiny_model_dir, low, "--tasks", "conll2004", "--methods", "lora", "--seeds", "2",
                           "--train-size", "2,3")  # fmt: skip
    assert code == 0, err
    records = [json.loads(line) for line in (low / "results.jsonl").read_text().splitlines()]
    assert sorted((r["train_size"], r["seed"], r["n_train"]) for r in records) == [(2, 0, 2), (2, 1, 2), (3, 0, 3), (3, 1, 3)]
    assert "conll2004 (2)" in (low / "table5.md").read_text()


def test_shift_prefix_positions_reaches_the_prefix_and_the_record(capsys, tiny_model_dir, tmp_path, monkeypatch):
    attached = []
    real_attach = memtune.attach

    def spy(model, configs, **kwargs):
        attached.append(list(configs))
        return real_attach(model, configs, **kwargs)

    monkeypatch.setattr(memtune, "attach", spy)  # compare's run_one imports it from memtune at each run
    out = tmp_path / "shifted"
    code, _, err = compare(capsys, tiny_model_dir, out, "--tasks", "cb", "--methods", "mt-mf", "--seeds", "1",
                           "--shift-prefix-positions")  # fmt: skip
    assert code == 0, err
    record = json.loads((out / "results.jsonl").read_text())
    assert record["config"]["shift_prefix_positions"] is True
    assert [type(c).__name__ for c in attached[0]] == ["PrefixConfig", "MemoryConfig"] and attached[0][0].shift_positions


def test_a_held_out_split_that_turns_up_is_not_mixed_with_runs_scored_without_it(capsys, tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(FIXTURES / "cb", data / "cb")
    out = tmp_path / "run"
    args = ("--tasks", "cb", "--methods", "LoRA", "--seeds", "1")
    code, _, err = compare(capsys, tiny_model_dir, out, *args, data=data)
    assert code == 0, err
    (record,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert record["method"] == "lora" and "held out" in record["eval_source"]  # the name is canonical
    shutil.copy(data / "cb" / "train.jsonl", data / "cb" / "val.jsonl")  # the dev split is now present
    code, _, err = compare(capsys, tiny_model_dir, out, "--tasks", "cb", "--methods", "lora", "--seeds", "2", data=data)
    assert code == 2 and "holds cb runs scored on" in err and "another --out folder" in err
    assert len((out / "results.jsonl").read_text().splitlines()) == 1



def test_valid_size_on_a_classification_task_scores_the_sample_it_predicts(capsys, tiny_model_dir, tmp_path):
    """--valid-size on a sentence task: early stopping scores the sampled examples (it once compared them
    with the whole validation set and failed)."""
    data = tmp_path / "data"
    (data / "cb").mkdir(parents=True)
    lines = (FIXTURES / "cb" / "train.jsonl").read_text().splitlines()
    (data / "cb" / "train.jsonl").write_text("\n".join(lines * 12) + "\n")  # 48 examples: a carve of 5
    out = tmp_path / "sample"
    code, _, err = compare(capsys, tiny_model_dir, out, "--tasks", "cb", "--methods", "lora", "--seeds", "1", "--valid-size", "3",
                           data=data)  # fmt: skip
    assert code == 0, err
    (record,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert record["settings"]["valid_size"] == 3 and record["n_valid"] == 3
    assert record["history"] and all(round(h["valid"] * 3) == h["valid"] * 3 for h in record["history"])  # k of 3 right


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="no `java` on PATH: E2E's METEOR/ROUGE-L/CIDEr and WebNLG's METEOR need it")
def test_generation_runs_train_on_targets_decode_score_every_metric_and_render_table7(capsys, tiny_lm_dir, tmp_path):
    out = tmp_path / "gen"
    code, text, err = compare(capsys, tiny_lm_dir, out, "--tasks", "e2e,webnlg", "--methods", "lora,mt-mf", "--seeds", "1",
                              "--max-new-tokens", "4", "--decode-batch-size", "3", "--valid-size", "1")  # fmt: skip
    assert code == 0, err
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["task"], r["method"]) for r in records] == [("e2e", "lora"), ("e2e", "mt-mf"), ("webnlg", "lora"), ("webnlg", "mt-mf")]
    e2e, webnlg = records[0], records[2]
    assert set(e2e["scores"]) == {"bleu", "nist", "meteor", "rouge_l", "cider"} and set(webnlg["scores"]) == {"bleu", "meteor", "ter"}
    assert e2e["metric"] == "bleu" and e2e["score"] == e2e["scores"]["bleu"] and e2e["valid_metric"] == "loss"
    assert e2e["decoding"] == {"max_new_tokens": 4, "num_beams": 1, "batch_size": 3, "min_new_tokens": 0}
    assert e2e["settings"]["valid_size"] == 1 and e2e["n_valid"] == 1
    assert e2e["eval_source"] == "test" and "held out" in webnlg["eval_source"]  # WebNLG's test split is held out
    lines = [json.loads(line) for line in (out / e2e["generations"]).read_text().splitlines()]
    assert len(lines) == e2e["n_eval"] and set(lines[0]) == {"index", "category", "source", "prediction", "references"}
    assert all(line["references"] for line in lines) and len(lines[0]["prediction"].split()) <= 4
    table7 = (out / "table7.md").read_text()
    assert "| Method | #Tuned | #Stored | E2E BLEU | E2E NIST | E2E METEOR | E2E ROUGE-L | E2E CIDEr | WebNLG BLEU |" in table7
    assert not (out / "table3.md").exists()  # no classification runs, no Table III
    assert "valid loss" in err  # progress lines name the validation loss that early stopping uses
    assert "e2e: decoding" not in err  # no decoding bar off a terminal or with --no-progress


def test_a_generation_task_whose_pairs_all_exceed_max_length_is_refused_before_training(capsys, tiny_lm_dir, tmp_path):
    code, text, err = compare(capsys, tiny_lm_dir, tmp_path / "gen", "--tasks", "e2e", "--methods", "lora", "--seeds", "1",
                              "--max-length", "5")  # fmt: skip
    assert code == 2 and "e2e: no (table, reference) pair of the training set fits in 5 tokens; raise --max-length" in err
    assert not (tmp_path / "gen" / "results.jsonl").exists()


@pytest.mark.slow
def test_a_diverging_run_is_recorded_as_failed_not_scored_and_kept_on_resume(capsys, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    code, text, err = compare(capsys, tiny_model_dir, out, "--tasks", "cb", "--methods", "mt-f", "--seeds", "1", "--lr", "1e30")
    assert code == 0, err
    (record,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert record["status"] == "failed" and record["score"] is None and record["valid"] is None
    assert record["error"].startswith("cb mt-f (budget 32) seed 0: ") and "step" in record["error"]
    assert "finite" in record["error"] and "lower --lr" in record["error"] and "1 run(s) failed" in text
    json.loads((out / "results.jsonl").read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert not (out / "table3.md").exists()  # no scored run: no table at all; the failure is in the log and the record
    code, text, err = compare(capsys, tiny_model_dir, out, "--tasks", "cb", "--methods", "mt-f,lora", "--seeds", "1", "--lr", "1e30")
    assert code == 0 and "1 already in" in text  # the failed run is not redone; lora runs (and fails too, or scores)
    code, text, err = compare(capsys, tiny_model_dir, out, "--tasks", "cb", "--methods", "mt-f,lora", "--seeds", "1", "--lr", "1e30",
                              "--retry-failed")  # fmt: skip
    assert code == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sum(r["method"] == "mt-f" for r in records) == 2  # retried: a second record of the same run
    assert memtune.experiments.results.check_records(records, out) is None


PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_curves_bars_and_saved_models_and_a_resume_that_adds_save_models(capsys, tiny_model_dir, tmp_path, monkeypatch):
    import torch

    compare_module = importlib.import_module("memtune.experiments.compare")  # the module, not the function
    from memtune.experiments.compare import load_for_task
    from memtune.tasks import get_task

    inputs = {"input_ids": torch.tensor([[2, 5, 6, 7, 8, 3]]), "attention_mask": torch.ones(1, 6, dtype=torch.long)}
    trained = {}  # run name -> the logits of the run's model, as it was saved
    real_save = compare_module.save_run_model

    def spy(model, folder, spec, comparison, out=None):
        with torch.no_grad():
            trained[spec.name] = model.eval()(**inputs).logits.clone()
        return real_save(model, folder, spec, comparison, out)

    monkeypatch.setattr(compare_module, "save_run_model", spy)
    out = tmp_path / "run"
    args = ("--tasks", "cb", "--methods", "lora,mt-f", "--max-steps", "3", "--epochs", "3")
    code, text, err = compare(capsys, tiny_model_dir, out, *args, "--seeds", "1")  # without --save-models
    assert code == 0, err
    assert not (out / "models").exists() and not trained
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    for r in records:  # a curve per run, one CSV row per evaluation in its history
        name = f"{r['task']}-{r['method']}-b{r['budget']}-s{r['seed']}"
        rows = (out / "curves" / f"{name}.csv").read_text().splitlines()
        assert rows[0] == "epoch,train_loss,valid" and len(rows) == 1 + len(r["history"]) >= 2
        assert [float(row.split(",")[2]) for row in rows[1:]] == [h["valid"] for h in r["history"]]
        png = (out / "curves" / f"{name}.png").read_bytes()
        assert png.startswith(PNG) and len(png) > 5000
    bars = (out / "table3_bars.png").read_bytes()
    assert bars.startswith(PNG) and len(bars) > 5000
    assert f"wrote {out / 'curves'}" in text

    # the same comparison with --save-models and a second seed: accepted, seed 1's runs save their models
    code, text, err = compare(capsys, tiny_model_dir, out, *args, "--seeds", "2", "--save-models")
    assert code == 0, err
    assert "4 runs, 2 already" in text
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len({json.dumps(r["config"], sort_keys=True) for r in records}) == 1  # --save-models is not in the config
    assert [r.get("saved_model") for r in records] == [None, None, "models/cb-lora-b32-s1", "models/cb-mt-f-b32-s1"]
    assert sorted(p.name for p in (out / "models").iterdir()) == ["cb-lora-b32-s1", "cb-mt-f-b32-s1"]
    assert set(trained) == {"cb-lora-b32-s1", "cb-mt-f-b32-s1"}
    for r in records[2:]:
        folder = out / r["saved_model"]
        assert json.loads((folder / "run.json").read_text()) == {
            "model": str(tiny_model_dir), "task": "cb", "method": r["method"], "seed": 1, "budget": 32, "train_size": None,
            "data_dir": str(FIXTURES)}  # fmt: skip
        fresh, _ = load_for_task(str(tiny_model_dir), get_task("cb"))  # a new random head: load replaces it
        memtune.load(fresh, folder)
        with torch.no_grad():
            assert torch.equal(fresh.eval()(**inputs).logits, trained[folder.name])


def test_save_models_saves_on_rank_0_only(capsys, tiny_model_dir, tmp_path, monkeypatch):
    compare_module = importlib.import_module("memtune.experiments.compare")  # the module, not the function

    given = []

    def fake_run_one(spec, comparison, callbacks=(), out=None, bars=False, save_to=None):
        given.append(save_to)
        return {"task": spec.task, "method": spec.method, "seed": spec.seed, "budget": spec.budget, "train_size": None,
                "status": "failed", "error": "not trained here", "score": None}  # fmt: skip

    monkeypatch.setattr(compare_module, "run_one", fake_run_one)
    args = ("--tasks", "cb", "--methods", "lora", "--seeds", "1", "--save-models")
    code, _, err = compare(capsys, tiny_model_dir, tmp_path / "rank0", *args)
    assert code == 0, err
    assert given == [tmp_path / "rank0" / "models" / "cb-lora-b32-s0"]
    monkeypatch.setattr(compare_module, "is_main_process", lambda: False)  # a torchrun process of rank 1 or more
    compare_module.compare(str(tiny_model_dir), ["cb"], ["lora"], [0], out=tmp_path / "rank1", data_dir=str(FIXTURES),
                           overrides={"max_train_steps": 2}, progress=False, save_models=True)  # fmt: skip
    assert given[1:] == [None]


def test_a_diverged_run_saves_no_model_and_draws_no_curve(capsys, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    code, _, err = compare(capsys, tiny_model_dir, out, "--tasks", "cb", "--methods", "mt-f", "--seeds", "1", "--lr", "1e30",
                           "--save-models")  # fmt: skip
    assert code == 0, err
    (record,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert record["status"] == "failed" and "saved_model" not in record
    assert not (out / "models").exists() and not (out / "curves").exists()


VOLATILE = ("train_seconds", "peak_memory_mb", "finished")  # wall-clock facts: the only fields that may differ


@pytest.mark.slow
def test_the_same_command_and_seed_give_bit_identical_records(capsys, tiny_model_dir, tmp_path):
    argv = ("--tasks", "cb,conll2004", "--methods", "lora,mt-mf,adapter", "--seeds", "1", "--max-steps", "3")
    runs = []
    for name in ("first", "second"):
        code, _, err = compare(capsys, tiny_model_dir, tmp_path / name, *argv)
        assert code == 0, err
        runs.append([{k: v for k, v in json.loads(line).items() if k not in VOLATILE}
                     for line in (tmp_path / name / "results.jsonl").read_text().splitlines()])  # fmt: skip
    assert len(runs[0]) == 6 and runs[0] == runs[1]
    losses = [h["train_loss"] for r in runs[0] for h in r["history"]]  # the scores of 3 steps are all 0 on the fixtures
    assert len(losses) >= 6 and len(set(losses)) >= 6  # so equal losses, to the last bit, are the evidence


@pytest.mark.slow
def test_compare_killed_at_20_random_moments_finishes_each_plan_exactly_once(tiny_model_dir, tmp_path):
    import subprocess
    import sys

    harness = Path(__file__).with_name("kill_harness.py")
    src = Path(__file__).resolve().parents[1] / "src"
    argv = ["compare", "--model", str(tiny_model_dir), "--data-dir", str(FIXTURES), "--epochs", "1", "--max-steps", "2",
            "--no-progress", "--tasks", "cb", "--methods", "lora,mt-f,bitfit", "--seeds", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "PYTHONWARNINGS": "ignore"}
    kills = int(os.environ.get("MEMTUNE_KILLS", "20"))  # more for a campaign (docs/reliability.md)
    done = subprocess.run([sys.executable, str(harness), str(tmp_path), str(kills), "0", "--", *argv], capture_output=True,
                          text=True, env=env, timeout=900 + 30 * kills)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(summary))  # pytest -s: the kill points
    assert summary["kills"] >= kills and summary["runs"] == 3
