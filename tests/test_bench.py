"""`memtune bench`: the timing protocol (interleaving, warm-up, the ratio and its interval) and the decode bench."""
from __future__ import annotations

import json

import pytest

from memtune.bench.timing import interleaved, ratio
from memtune.cli import main
from memtune.errors import ConfigError
from fixture_data import fixture_root, tiny_lm_dir  # noqa: F401 - a fixture

FIXTURES = fixture_root()


def test_interleaving_rotates_the_order_and_leaves_the_warm_up_untimed():
    calls, ticks = [], iter(range(1000))
    contenders = {name: (lambda b, name=name: calls.append((name, b))) for name in ("base", "a", "b")}
    times = interleaved(contenders, 4, warmup=1, clock=lambda: float(next(ticks)))
    assert calls[:3] == [("base", 0), ("a", 0), ("b", 0)]  # the warm-up: batch 0 once each, untimed
    timed = calls[3:]
    assert [n for n, _ in timed] == ["base", "a", "b", "a", "b", "base", "b", "base", "a", "base", "a", "b"]
    assert [b for _, b in timed] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert times == {name: [1.0] * 4 for name in contenders}  # each call spans one tick of the fake clock
    with pytest.raises(ConfigError, match="no contenders"):
        interleaved({}, 3)


def test_ratio_is_the_ratio_of_sums_with_a_bootstrap_interval_around_it():
    exact = ratio([1.0, 2.0, 3.0], [1.1, 2.2, 3.3])
    assert exact.value == pytest.approx(110.0) and exact.low == pytest.approx(110.0) and exact.high == pytest.approx(110.0)
    noisy = ratio([1.0, 1.0, 1.0, 1.0], [1.0, 1.2, 1.0, 1.2])
    assert noisy.value == pytest.approx(110.0) and 100.0 <= noisy.low < 110.0 < noisy.high <= 120.0
    assert ratio([1.0, 1.0, 1.0, 1.0], [1.0, 1.2, 1.0, 1.2]) == noisy  # seeded: the same interval every time
    assert str(exact) == "110.0 [110.0, 110.0]"
    with pytest.raises(ConfigError, match="paired timings needed: 2 baseline and 1 contender"):
        ratio([1.0, 1.0], [1.0])


def test_decode_bench_times_every_method_on_the_same_inputs_at_a_fixed_length(tiny_lm_dir, tmp_path):
    from memtune.bench.decode import decode_bench, markdown
    from memtune.bench.timing import write

    result = decode_bench(str(tiny_lm_dir), "e2e", ["mt-mf", "lora"], data_dir=str(FIXTURES), max_new_tokens=3,
                          batch_size=2, progress=False)  # fmt: skip
    n = result["inputs"]  # the fixture's E2E test set
    assert n == 1 and result["split"] == "test" and result["batches"] == 1
    assert list(result["results"]) == ["untuned", "mt-mf", "lora"]
    for name, row in result["results"].items():
        assert row["tokens"] == 3 * n and row["seconds"] > 0  # every contender decoded exactly 3 tokens per input
        if name != "untuned":
            assert row["low"] <= row["ratio"] <= row["high"]
    table = markdown(result)
    assert "| untuned |" in table and "| mt-mf |" in table and "3 new tokens each (fixed length)" in table
    path = write(result, tmp_path)
    assert json.loads(path.read_text())["results"]["mt-mf"]["tokens"] == 3 * n
    natural = decode_bench(str(tiny_lm_dir), "webnlg", ["mt-f"], data_dir=str(FIXTURES), max_new_tokens=3, batch_size=1,
                           natural_length=True, progress=False)  # fmt: skip
    assert natural["inputs"] == natural["batches"] == 1 and natural["split"].startswith("valid")  # WebNLG's test is held out
    assert all(row["tokens"] <= 3 for row in natural["results"].values())


def test_decode_bench_refuses_what_it_cannot_time(capsys, tiny_lm_dir):
    code = main(["bench", "decode", "--model", str(tiny_lm_dir), "--task", "cb", "--data-dir", str(FIXTURES)])
    assert code == 2 and "bench decode needs a generation task; cb is a sentence task" in capsys.readouterr().err
    code = main(["bench", "decode", "--model", str(tiny_lm_dir), "--methods", "mt-z", "--data-dir", str(FIXTURES)])
    assert code == 2 and "mt-z" in capsys.readouterr().err
    code = main(["bench", "decode", "--model", str(tiny_lm_dir), "--limit", "0", "--data-dir", str(FIXTURES)])
    assert code == 2 and "--limit must be a positive number of inputs, got 0" in capsys.readouterr().err


def test_latency_precision_is_the_half_width_of_every_interval():
    from memtune.bench.latency import precise
    from memtune.bench.timing import Ratio

    assert precise({"a": Ratio(101.0, 100.2, 101.8, 0.95), "b": Ratio(99.0, 98.5, 99.5, 0.95)}, 1.0)
    assert not precise({"a": Ratio(101.0, 100.2, 101.8, 0.95), "b": Ratio(99.0, 97.9, 100.1, 0.95)}, 1.0)


def test_latency_bench_repeats_until_precise_and_writes_table_vi(tiny_lm_dir, tmp_path):
    from memtune.bench.latency import MIN_ROUNDS, latency_bench, markdown
    from memtune.bench.timing import write

    result = latency_bench(str(tiny_lm_dir), ["lora", "mt-mf"], batch_size=2, seq_len=8, precision=50.0, progress=False)
    assert result["precision_reached"] and result["rounds"] == MIN_ROUNDS  # loose enough at the first look
    assert set(result["results"]) == {"untuned", "lora", "mt-mf"}
    row = result["results"]["mt-mf"]
    assert row["low"] <= row["ratio"] <= row["high"] and len(row["batch_seconds"]) == MIN_ROUNDS
    table = markdown(result)
    assert "| mt-mf |" in table and "every interval within +-50 points" in table
    assert write(result, tmp_path).name == f"latency-{tiny_lm_dir.name}.json"


def test_latency_bench_stops_at_its_time_limit_and_says_so(tiny_lm_dir):
    import random

    from memtune.bench.latency import ROUNDS_PER_CHECK, latency_bench, markdown

    rng, now = random.Random(0), [0.0]

    def noisy_clock():  # every reading 0.5-1.5 s later: timings too noisy for +-0.001 points
        now[0] += rng.uniform(0.5, 1.5)
        return now[0]

    result = latency_bench(str(tiny_lm_dir), ["bitfit"], batch_size=1, seq_len=4, precision=0.001, max_seconds=30,
                           progress=False, clock=noisy_clock)  # fmt: skip
    assert not result["precision_reached"] and result["rounds"] % ROUNDS_PER_CHECK == 0
    assert "NOT every interval within +-0.001 points: stopped at the 30 s limit" in markdown(result)


def test_latency_bench_refuses_what_it_cannot_time(capsys, tiny_lm_dir):
    from memtune.cli import main

    for argv, message in ((["--seq", "100000"], "--seq 100000 is more than the"), (["--methods", "nope"], "nope"),
                          (["--batch", "0"], "--batch must be a positive integer")):  # fmt: skip
        assert main(["bench", "latency", "--model", str(tiny_lm_dir), "--no-progress", *argv]) == 2
        assert message in capsys.readouterr().err
