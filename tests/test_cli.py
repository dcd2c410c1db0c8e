"""`memtune params`: counts from configs alone, next to the paper's Table II, and clean errors."""
import json

import pytest

from memtune.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_params_bert_base_matches_the_equations(capsys):
    code, out, _ = run(capsys, "params", "--model", "bert-base", "--method", "mt-f,prefix,mt-mf", "--json")
    assert code == 0
    rows = {r["method"]: r for r in json.loads(out)}
    d, L, s, k, l = 768, 12, 32, 50, 32
    assert rows["mt-f"]["backbone"] == 109_482_240  # embeddings + 12 layers + pooler
    assert rows["mt-f"]["tuned"] == rows["mt-f"]["stored"] == (2 * s * d + 2 * s * s + k * s) * L  # Eq. (8) counted
    assert rows["mt-f"]["paper_formula"]["tuned_value"] == (2 * s * d + 3 * s * s + k * s) * L  # Table II as printed
    prefix_network = l * d + (d * d + d) + (d * 2 * L * d + 2 * L * d)
    assert rows["prefix"]["tuned"] == prefix_network and rows["prefix"]["stored"] == 2 * l * d * L
    assert round(rows["prefix"]["stored_pct"], 2) == 0.54  # the paper's Table IV: 0.54%
    assert round(rows["mt-f"]["tuned_pct"], 2) == 0.58  # the paper prints 0.59% (its 3s^2)
    half = 16
    assert rows["mt-mf"]["stored"] == 2 * half * d * L + (2 * half * d + 2 * half * half + k * half) * L


def test_params_table_is_readable(capsys):
    code, out, _ = run(capsys, "params", "--model", "bert-large", "--method", "mt-mf")
    assert code == 0
    assert "Table II #tuned = (2sd + 3s^2 + ks + 2md + 2d)L + ld" in out
    assert "mt-mf = prefix" in out and "335,141,888" in out


def test_params_budget_scales_the_recipe(capsys):
    _, out, _ = run(capsys, "params", "--model", "bert-base", "--method", "mt-f", "--budget", "8", "--json")
    assert json.loads(out)[0]["tuned"] == (2 * 8 * 768 + 2 * 64 + 50 * 8) * 12


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--method", "lora-x"], "unknown recipe 'lora-x'; known recipes"),
        (["--budget", "0"], "budget must be a positive integer"),
        (["--method", ""], "--method needs at least one name, got ''"),
    ],
)
def test_params_bad_input_exits_2_with_a_message(capsys, argv, message):
    code, _, err = run(capsys, "params", "--model", "bert-base", *argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_params_missing_model_path(capsys, tmp_path):
    code, _, err = run(capsys, "params", "--model", str(tmp_path / "nope"))
    assert code == 2 and "it is not a packaged short name (minilm" in err and "(Table II names: bert-base, bert-large)" in err


def test_params_default_is_the_whole_table_ii_for_both_berts(capsys):
    code, out, _ = run(capsys, "params", "--json")
    assert code == 0
    rows = {(r["model"], r["method"]): r for r in json.loads(out)}
    assert {m for _, m in rows} == {"ft", "bitfit", "adapter", "lora", "prefix", "mam", "mt-f", "mt-mf"}
    for model, d, L, V, n in [("bert-base", 768, 12, 30522, 512), ("bert-large", 1024, 24, 30522, 512)]:
        def row(m):
            return rows[(model, m)]

        full = (V + 2 + n) * d + (12 * d * d + 13 * d) * L
        assert row("ft")["paper_formula"]["tuned_value"] == full
        assert row("ft")["tuned"] == full + (d * d + d) + 2 * d  # + pooler + embedding LayerNorm
        assert row("bitfit")["tuned"] == d + 11 * d * L + d  # + pooler bias
        assert row("adapter")["tuned"] == (2 * d * 32 + 32 + d) * L  # 2drL + biases
        assert row("lora")["tuned"] == row("lora")["paper_formula"]["tuned_value"] == 4 * d * 16 * L
        prefix_16 = 16 * d + (d * d + d) + (d * 2 * L * d + 2 * L * d)
        assert row("mam")["tuned"] == prefix_16 + (2 * d * 16 + 16 + d) * L
        assert row("mam")["stored"] == 2 * 16 * d * L + (2 * d * 16 + 16 + d) * L
        for method in ("adapter", "lora", "bitfit"):  # the paper's printed percentages, to 2 decimals (MT-F: its 3s^2)
            assert abs(row(method)["tuned_pct"] - row(method)["paper_printed_pct"][0]) <= 0.011, (model, method)
        for method in ("prefix", "mam", "mt-mf"):
            assert abs(row(method)["stored_pct"] - row(method)["paper_printed_pct"][1]) <= 0.011, (model, method)


def test_help_and_argument_errors_import_neither_torch_nor_transformers():
    """`memtune --help` is instant: the CLI imports the heavy libraries only to run a command."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from memtune.cli import main\n"
        "for argv in (['--help'], ['compare', '--help'], ['compare', '--seeds']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_export_writes_a_folder_peft_loads_with_the_same_outputs(capsys, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, BertConfig, BertModel

    import memtune
    from memtune.models import load_model

    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    BertModel(config).save_pretrained(tmp_path / "base")
    base = lambda: load_model(tmp_path / "base", AutoModelForSequenceClassification, num_labels=3).eval()  # noqa: E731
    model = memtune.attach(base(), memtune.LoraConfig(rank=2))
    with torch.no_grad():
        for p in memtune.methods_of(model)["lora"].parameters():
            p.normal_(0, 0.3)
        model.classifier.weight.normal_()
    memtune.save(model, tmp_path / "ckpt")

    code, out, err = run(capsys, "export", str(tmp_path / "ckpt"), "--model", str(tmp_path / "base"), "--out", str(tmp_path / "peft"))
    assert code == 0, err
    assert "PeftModel.from_pretrained" in out and "new 3-label head" in err  # the label count read from the checkpoint
    theirs = PeftModel.from_pretrained(base(), tmp_path / "peft").eval()
    ids = torch.randint(3, 64, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)

    memtune.save(memtune.attach(base(), memtune.recipe("mt-f", budget=4)), tmp_path / "mtf")
    code, _, err = run(capsys, "export", str(tmp_path / "mtf"), "--model", str(tmp_path / "base"), "--out", str(tmp_path / "no"))
    assert code == 2 and "peft has no memory-tuning" in err and not (tmp_path / "no").exists()
