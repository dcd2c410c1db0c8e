"""The data-to-text metrics (memtune.metrics, Table VII) against values worked out by hand from each metric's
definition. The E2E cases were also run through the official e2e-metrics script (mteval-v13a-sig.pl, the
COCO toolkit) while this file was written, and agree with it where noted."""
from __future__ import annotations

import math
import shutil
import subprocess
import sys

import pytest

for _package in ("sacrebleu", "nltk", "pycocoevalcap", "anyascii"):
    pytest.importorskip(_package, reason=f"{_package} is missing: pip install 'memtune[generation]'")

from memtune import metrics as M  # noqa: E402
from memtune.errors import ConfigError  # noqa: E402

needs_java = pytest.mark.skipif(shutil.which("java") is None,
                                reason="no `java` on PATH: METEOR and the PTB tokeniser run Java jars")


def nist_length_penalty(ratio: float) -> float:
    """mteval's NIST brevity factor: exp(beta log^2 ratio), beta set so that ratio 2/3 gives 0.5."""
    beta = math.log(0.5) / math.log(1.5) ** 2
    return math.exp(beta * math.log(ratio) ** 2) if ratio < 1 else 1.0


# --- E2E BLEU (sacrebleu as mteval-v13a) -------------------------------------------------------------------


def test_e2e_bleu_by_hand_with_mteval_tokens_and_lowercase():
    # 13a splits off the final period and the script lowercases, so both are 7 tokens:
    # the cat sat on the mat .  /  the cat is on the mat .
    # 1-grams 6/7 (not 'sat'), 2-grams 4/6 (the cat, on the, the mat, mat .), 3-grams 2/5 (on the mat,
    # the mat .), 4-grams 1/4 (on the mat .); equal lengths, so no brevity penalty.
    expected = 100 * (6 / 7 * 4 / 6 * 2 / 5 * 1 / 4) ** (1 / 4)  # 48.89; mteval-v13a-sig.pl: 0.4889
    assert M.e2e_bleu(["The cat sat on the mat."], [["the cat is on the mat."]]) == pytest.approx(expected)


def test_e2e_bleu_smooths_a_precision_without_matches_as_mteval():
    # No period: 5/6, 3/5, 1/4 and no 4-gram match among 3, which mteval's smoothing counts as 1 / (2 * 3).
    expected = 100 * (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** (1 / 4)
    assert M.e2e_bleu(["the cat sat on the mat"], [["the cat is on the mat"]]) == pytest.approx(expected)


def test_e2e_bleu_takes_a_variable_number_of_references_without_empty_ones():
    # Input 0 has two references, input 1 one. Every n-gram matches (1.0 at each order); the reference
    # length is the closest one per input: 4 for 'a b c d', and 6 for 'e f': had the missing second
    # reference of input 1 been padded as an empty string, its length 0 would be the closest to 2.
    predictions = ["a b c d", "e f"]
    references = [["a b c d", "x y"], ["e f g h i j"]]
    expected = 100 * math.exp(1 - (4 + 6) / (4 + 2))  # 51.34; mteval-v13a-sig.pl: 0.5134
    assert M.e2e_bleu(predictions, references) == pytest.approx(expected)


# --- E2E NIST (nltk) -------------------------------------------------------------------------------------


def test_e2e_nist_by_hand_with_one_reference():
    # Reference 'a b a c': info(w) = log2(4 words / count(w)) gives a 1, b 2, c 2; info('a b') =
    # log2(count(a) / count(a b)) = 1. Prediction 'a b c': 1-grams (1 + 2 + 2) / 3, 2-grams ('a b' matches)
    # 1 / 2, the 3-gram does not match; length 3 of 4.
    expected = (5 / 3 + 1 / 2) * nist_length_penalty(3 / 4)  # 1.5285; mteval-v13a-sig.pl: 1.5285
    assert M.e2e_nist(["a b c"], [["a b a c"]]) == pytest.approx(expected)


def test_e2e_nist_with_several_references():
    # Adding 'd e f g' (no overlap) makes 8 reference words: info a = log2(8 / 2) = 2, b = c = 3; the
    # average reference length stays 4, so nltk and mteval agree here.
    expected = ((2 + 3 + 3) / 3 + 1 / 2) * nist_length_penalty(3 / 4)  # 2.2339; mteval-v13a-sig.pl: 2.2339
    assert M.e2e_nist(["a b c"], [["a b a c", "d e f g"]]) == pytest.approx(expected)
    # Where they differ (documented in e2e_nist): 12 distinct reference words, so every unigram carries
    # log2(12) and no longer n-gram carries information; 6 of 6 predicted words match. For the length
    # penalty nltk takes each input's best reference (4 + 6 = 10 words against 6 predicted), mteval the
    # reference words over the references per input (12 / 1.5 = 8): mteval-v13a-sig.pl gives 2.5290.
    predictions, references = ["a b c d", "e f"], [["a b c d", "x y"], ["e f g h i j"]]
    assert M.e2e_nist(predictions, references) == pytest.approx(math.log2(12) * nist_length_penalty(6 / 10))
    assert math.log2(12) * nist_length_penalty(6 / 8) == pytest.approx(2.5290, abs=1e-4)


def test_e2e_nist_of_predictions_shorter_than_five_tokens_or_empty():
    # Orders no prediction reaches add 0, as in mteval (nltk alone would divide by zero).
    assert M.e2e_nist(["a b", ""], [["a b"], ["c d"]]) == pytest.approx(
        (math.log2(4) * 2 / 2 + 0.0) * nist_length_penalty(2 / 4))
    assert M.e2e_nist(["", ""], [["a b"], ["c d"]]) == 0.0


# --- E2E METEOR, ROUGE-L, CIDEr (pycocoevalcap, as the COCO toolkit in the E2E script) ----------------------


@needs_java
def test_meteor_by_hand():
    # METEOR 1.5, English: with every word matched exactly, P = R = Fmean = 1 and the score is
    # 1 - gamma (chunks / matches)^beta with gamma 0.6, beta 0.2. A reordered copy is 2 chunks of 4 words;
    # the other reference shares no word, and METEOR keeps the best reference.
    reordered = 100 * (1 - 0.6 * (2 / 4) ** 0.2)  # 47.77
    assert M.e2e_meteor(["gamma delta alpha beta"],
                        [["zeta eta theta iota", "alpha beta gamma delta"]]) == pytest.approx(reordered)
    # The corpus score pools the statistics: an exact copy counts 0 chunks (that is how it scores 1), so
    # a copy of 6 words and the reordered 4 give 1 - 0.6 ((0 + 2) / (6 + 4))^0.2, not the mean of the two.
    pooled = 100 * (1 - 0.6 * (2 / 10) ** 0.2)  # 56.51
    predictions = ["one two three four five six", "gamma delta alpha beta"]
    references = [["one two three four five six"], ["alpha beta gamma delta"]]
    assert M.webnlg_meteor(predictions, references) == pytest.approx(pooled)


@needs_java
def test_e2e_rouge_l_by_hand():
    # Input 0: LCS 'the cat on the mat' = 5 of 6 either way, F = 5/6. Input 1 (the COCO toolkit's rule):
    # the best precision (4/4, from the long reference) and the best recall (2/2, from the short one) are
    # taken separately, so F = 1. The score is the mean over inputs.
    predictions = ["The cat sat on the mat.", "a b c d"]
    references = [["the cat is on the mat"], ["a b", "a b c d e f g h"]]
    assert M.e2e_rouge_l(predictions, references) == pytest.approx(100 * (5 / 6 + 1) / 2)


@needs_java
def test_e2e_cider_by_hand():
    # Two inputs: every reference n-gram occurs in one of 2 reference sets, so each weight is
    # log 2 - log 1 (an n-gram absent from all references, 'd' or 'c d', gets the same). Input 0 is a copy:
    # cosine 1 for 1- and 2-grams, 0 for the 3- and 4-grams it lacks: 10 * (1 + 1 + 0 + 0) / 4 = 5.
    # Input 1 shares 'c' of 2 unigrams on each side: cosine 1/2, no bigram: 10 * 0.5 / 4 = 1.25.
    assert M.e2e_cider(["a b", "c d"], [["a b"], ["c e"]]) == pytest.approx((5 + 1.25) / 2)
    # With two references the cosines are averaged over them: a copy of one and nothing of the other
    # gives 10 * (1 + 0) / 2 = 5 for input 0; input 1 is a 4-gram copy: 10.
    predictions, references = ["a b c d", "i j k l"], [["a b c d", "e f g h"], ["i j k l"]]
    assert M.e2e_cider(predictions, references) == pytest.approx((5 + 10) / 2)


# --- WebNLG 2017 BLEU and TER (sacrebleu on the challenge's preprocessing) ---------------------------------


def test_webnlg_bleu_by_hand():
    # the cat sat on the mat today .  /  the cat sat on a mat today .  (8 tokens each)
    # 1-grams 7/8, 2-grams 5/7, 3-grams 3/6, 4-grams 1/5 ('the cat sat on').
    expected = 100 * (7 / 8 * 5 / 7 * 3 / 6 * 1 / 5) ** (1 / 4)
    score = M.webnlg_bleu(["The cat sat on the mat today."], [["The cat sat on a mat today."]])
    assert score == pytest.approx(expected)
    # multi-bleu.perl has no smoothing: no 4-gram match makes BLEU 0.
    assert M.webnlg_bleu(["the cat sat on the mat"], [["the cat is on the mat"]]) == 0.0
    # The preprocessing: lowercase, ASCII transliteration, a split at every non-word character.
    prediction = "São Paulo's airport serves the city of Aarhus, Denmark."
    assert M.webnlg_bleu([prediction], [["sao paulo ' s airport serves the city of aarhus , denmark ."]]) == \
        pytest.approx(100.0)


def test_webnlg_ter_by_hand():
    # One substitution in 4 words; one block shift ('c d' to the end) in 4 words.
    assert M.webnlg_ter(["a b c d", "c d a b"], [["a b e d"], ["a b c d"]]) == pytest.approx(100 * (1 + 1) / (4 + 4))
    # Several references (tercom's rule): the fewest edits to any one (1, to 'a b e d'), over the average
    # reference length (3); input 1 has a single reference and needs no edit.
    assert M.webnlg_ter(["a b c d"], [["a b e d", "x y"]]) == pytest.approx(100 * 1 / 3)
    assert M.webnlg_ter(["a b c d", "p q"], [["a b e d", "x y"], ["p q"]]) == pytest.approx(100 * 1 / (3 + 2))


# --- all metrics -----------------------------------------------------------------------------------------

PREDICTIONS = ["The Eagle is a cheap coffee shop near Burger King.",
               "Alimentum serves Italian food in the city centre."]


@needs_java
def test_a_copy_of_the_reference_scores_the_maximum():
    scores = M.generation_scores(PREDICTIONS, [[p] for p in PREDICTIONS], M.E2E_METRICS + M.WEBNLG_METRICS)
    for name in ("e2e_bleu", "e2e_meteor", "e2e_rouge_l", "webnlg_bleu", "webnlg_meteor"):
        assert scores[name] == pytest.approx(100.0), name
    assert scores["e2e_cider"] == pytest.approx(10.0)
    assert scores["webnlg_ter"] == 0.0
    assert scores["e2e_nist"] > 0  # NIST has no fixed maximum: it sums the information of the matches


@needs_java
def test_every_reference_counts_however_many_an_input_has():
    # The copy is each input's last reference, after up to three unrelated ones: none is dropped.
    references = [["Nothing like it.", "Another text.", "A third one.", PREDICTIONS[0]], ["Text.", PREDICTIONS[1]]]
    scores = M.generation_scores(PREDICTIONS, references, ("bleu", "meteor", "ter"), task="webnlg")
    assert scores == {"bleu": pytest.approx(100.0), "meteor": pytest.approx(100.0), "ter": 0.0}
    scores = M.generation_scores(PREDICTIONS, references, ("bleu", "meteor", "rouge_l"), task="e2e")
    assert scores == {"bleu": pytest.approx(100.0), "meteor": pytest.approx(100.0), "rouge_l": pytest.approx(100.0)}


@needs_java
def test_generation_scores_names_and_equals_the_single_metrics():
    predictions, references = ["the cat sat on the mat", "a b c d"], [["the cat is on the mat"], ["a b", "a b c"]]
    scores = M.generation_scores(predictions, references, ("cider", "nist", "webnlg_bleu"))  # no task needed
    assert list(scores) == ["cider", "nist", "webnlg_bleu"]
    assert scores["cider"] == pytest.approx(M.e2e_cider(predictions, references))
    assert scores["nist"] == pytest.approx(M.e2e_nist(predictions, references))
    assert scores["webnlg_bleu"] == pytest.approx(M.webnlg_bleu(predictions, references))


@pytest.mark.parametrize("predictions, references, message", [
    (["a", "b", "c"], [["a"], [], ["c"]], "input 1 has no references"),
    (["a"], ["a"], r"references\[0\] is a string"),
    (["a", "b"], [["a"], ["b", " "]], "reference 1 of input 1 is ' '"),
    (["a"], [["a"], ["b"]], "1 predictions for 2 inputs' references"),
    ([], [], "no predictions to score"),
    ([None], [["a"]], "prediction 0 is a NoneType"),
])
def test_bad_references_are_refused_naming_the_input(predictions, references, message):
    for score in (M.e2e_bleu, M.webnlg_ter):
        with pytest.raises(ConfigError, match=message):
            score(predictions, references)
    with pytest.raises(ConfigError, match=message):
        M.generation_scores(predictions, references, ("ter",))


@pytest.mark.parametrize("metrics, task, message", [
    (("bleu",), None, "metric 'bleu' is computed differently for e2e and webnlg: pass task='e2e'"),
    (("meteor",), None, "'e2e_meteor' or 'webnlg_meteor'"),
    (("rouge",), "e2e", "unknown generation metric 'rouge'"),
    (("ter",), "e2e", "metric 'ter' is not a e2e metric"),
    (("nist",), "webnlg", "metric 'nist' is not a webnlg metric"),
    (("bleu",), "dart", "unknown generation task 'dart'"),
    (("ter", "ter"), None, "repeat"),
])
def test_metric_names_are_checked(metrics, task, message):
    with pytest.raises(ConfigError, match=message):
        M.generation_scores(["a"], [["a"]], metrics, task=task)


def test_importing_the_metrics_imports_no_metric_package():
    packages = {"sacrebleu", "nltk", "pycocoevalcap", "anyascii"}
    code = f"import sys, memtune.metrics; print(sorted({{m.split('.')[0] for m in sys.modules}} & {packages!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(M.__file__).rsplit("/memtune/", 1)[0], "PATH": ""})
    assert out.stdout.strip() == "[]"


def test_missing_java_or_packages_are_refused_before_any_training(monkeypatch):
    import importlib.util

    from memtune import metrics
    from memtune.errors import MemtuneError

    metrics.check_generation_metrics(("bleu", "ter"), task="webnlg")  # both run in Python
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    metrics.check_generation_metrics(("bleu", "nist"), task="e2e")  # no Java needed
    with pytest.raises(MemtuneError, match=r"e2e's meteor, cider runs a Java jar .* needs `java` on PATH"):
        metrics.check_generation_metrics(("bleu", "meteor", "cider"), task="e2e")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pycocoevalcap" else real(name, *a))
    with pytest.raises(MemtuneError, match=r"need pycocoevalcap: pip install 'memtune\[generation\]'"):
        metrics.check_generation_metrics(("bleu",), task="e2e")
