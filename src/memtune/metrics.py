"""The paper's metrics: accuracy, binary F1 (MRPC) and micro entity-level F1 (NER, seqeval), and the
data-to-text metrics of its Table VII (E2E NLG: BLEU, NIST, METEOR, ROUGE-L, CIDEr; WebNLG 2017: BLEU,
METEOR, TER), each a thin wrapper over a maintained implementation, set up as the official scripts run it.

Scales: every bounded score is in percent, like the classification metrics: BLEU, METEOR and ROUGE-L
0-100 (the E2E script prints them as fractions: these / 100), TER 0 and up, lower is better (the WebNLG
challenge prints it as a fraction: this / 100). NIST (0 and up) and CIDEr (0 to 10) keep their own units,
as the E2E script and the papers report them.

Generation metrics take ``predictions[i]`` (one string per input) and ``references[i]`` (all references of
input i, any number, at least one; all are used). Their packages (sacrebleu, nltk, pycocoevalcap, anyascii:
the ``generation`` extra) are imported when a metric is computed, so ``import memtune.metrics`` stays
light. METEOR and the E2E tokeniser run Java jars shipped inside pycocoevalcap: they need ``java``.
"""
from __future__ import annotations

import re
import shutil
from typing import Any, Callable, Sequence

from .errors import ConfigError, MemtuneError


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of exact matches, in percent."""
    _same_length(predictions, labels)
    return 100.0 * sum(int(p == y) for p, y in zip(predictions, labels)) / len(labels)


def binary_f1(predictions: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
    """F1 of the positive class, in percent (GLUE's MRPC metric)."""
    _same_length(predictions, labels)
    tp = sum(1 for p, y in zip(predictions, labels) if p == positive and y == positive)
    predicted = sum(1 for p in predictions if p == positive)
    actual = sum(1 for y in labels if y == positive)
    return 200.0 * tp / (predicted + actual) if predicted + actual else 0.0


def entity_f1(predictions: Sequence[Sequence[str]], labels: Sequence[Sequence[str]]) -> float:
    """Micro-averaged entity-level F1 over BIO tag sequences (seqeval's default mode), in percent."""
    from seqeval.metrics import f1_score

    _same_length(predictions, labels)
    for p, y in zip(predictions, labels):
        if len(p) != len(y):
            raise ValueError(f"a predicted tag sequence has {len(p)} tags for {len(y)} tokens")
    return 100.0 * f1_score([list(y) for y in labels], [list(p) for p in predictions])


def _same_length(predictions: Sequence, labels: Sequence) -> None:
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("no examples to score")


METRICS: dict[str, Callable] = {"accuracy": accuracy, "f1": binary_f1, "entity_f1": entity_f1}


def metric(name: str) -> Callable:
    if name not in METRICS:
        raise ConfigError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
    return METRICS[name]


# ---------------------------------------------------------------------------------------------------------
# Data-to-text generation (Table VII). E2E NLG: the e2e-metrics script (github.com/tuetschek/e2e-metrics,
# measure_scores.py) runs mteval-v13a-sig.pl for BLEU and NIST and the COCO caption toolkit (PTB tokeniser,
# METEOR 1.5, ROUGE-L, CIDEr) for the rest. WebNLG 2017: the challenge's webnlg-automatic-evaluation scripts
# lowercase and split every text at each non-word character, then run multi-bleu.perl, METEOR 1.5 and
# tercom 0.7.25.

E2E_METRICS = ("e2e_bleu", "e2e_nist", "e2e_meteor", "e2e_rouge_l", "e2e_cider")
WEBNLG_METRICS = ("webnlg_bleu", "webnlg_meteor", "webnlg_ter")


def e2e_bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 in percent (0-100) as mteval-v13a computes it in the E2E script, by sacrebleu.

    sacrebleu's ``BLEU(tokenize="13a", lowercase=True, smooth_method="exp")``: the 13a tokeniser is
    mteval-v13a's, the script lowercases (the E2E script does not pass ``-c``), "exp" is mteval's smoothing
    (a zero n-gram match count counts as 1/2^k), n-grams are clipped by their largest count in any one
    reference and the brevity penalty uses the reference length closest to each prediction (ties: the
    shorter). Inputs with fewer references are padded with ``None``, which sacrebleu drops, so a missing
    reference never counts as an empty one. Equal to the E2E script's BLEU x 100 (72.03 on its example),
    but for one corner: when no prediction has n tokens (n <= 4), mteval takes that n-gram precision as 1,
    sacrebleu as 0 (BLEU 0).
    """
    import sacrebleu

    _check_generation(predictions, references)
    bleu = sacrebleu.BLEU(tokenize="13a", lowercase=True, smooth_method="exp")
    return float(bleu.corpus_score(list(predictions), _reference_streams(references)).score)


def e2e_nist(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus NIST-5 (0 and up, not a percentage) by nltk's ``corpus_nist``, on mteval-13a tokens.

    Texts are lowercased and split by sacrebleu's 13a (mteval) tokeniser; information weights come from the
    references' n-gram counts, as in mteval. With one reference per input this is exactly mteval-v13a's
    NIST. With several it is NOT: nltk scores each prediction against its single best reference per n-gram
    order and takes that reference's length for the length penalty, while mteval clips n-gram counts by all
    references together and uses the average reference length. On the e2e-metrics example (10 inputs, 6-39
    references each) nltk gives 6.22 where the E2E script gives 7.82, so E2E NIST from here is not
    comparable with published E2E NIST. No maintained package implements mteval's multi-reference NIST.
    As mteval, n-gram orders that no prediction reaches add 0 (nltk would divide by zero).
    """
    from nltk.translate.nist_score import corpus_nist
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    _check_generation(predictions, references)
    tokenize = Tokenizer13a()
    hyps = [tokenize(p.lower()).split() for p in predictions]
    refs = [[tokenize(r.lower()).split() for r in refs] for refs in references]
    order = min(5, max(len(h) for h in hyps))
    return float(corpus_nist(refs, hyps, n=order)) if order else 0.0


def e2e_meteor(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus METEOR 1.5 in percent (0-100) as the E2E script computes it, by pycocoevalcap.

    Texts go through the COCO toolkit's PTB tokeniser (Stanford CoreNLP 3.4.1, lowercased, punctuation
    dropped), then METEOR 1.5 (``-l en -norm``, English exact/stem/synonym/paraphrase modules, the
    paraphrase table shipped in pycocoevalcap) scores each prediction against its best reference and the
    corpus score comes from the summed statistics. pycocoevalcap ships the same jars and paraphrase table
    as the e2e-metrics repository (byte for byte): equal to the E2E script's METEOR x 100 (48.01 on its
    example). The METEOR jar runs as one Java process, started on first use (about 10 s, 1.2 GB resident)
    and kept for later calls; ``close_meteor()`` ends it.
    """
    _check_generation(predictions, references)
    return _meteor_score(*_coco_tokenize(predictions, references))


def e2e_rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """ROUGE-L in percent (0-100) as the E2E script computes it, by pycocoevalcap (COCO toolkit).

    On PTB-tokenised text (as ``e2e_meteor``): per input, the LCS precision and recall against each
    reference, the best precision and the best recall (possibly from different references) combined into
    F with beta = 1.2; the mean over inputs. Equal to the E2E script's ROUGE_L x 100 (79.10 on its example).
    """
    _check_generation(predictions, references)
    return _rouge_l_score(*_coco_tokenize(predictions, references))


def e2e_cider(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """CIDEr (0-10, not a percentage) as the E2E script computes it, by pycocoevalcap (COCO toolkit).

    The COCO toolkit's "CIDEr" (CIDEr-D: clipped counts and a Gaussian length penalty, sigma 6) on
    PTB-tokenised text: tf-idf vectors of 1- to 4-grams, idf from the document frequency over the inputs'
    reference sets, the cosine with each reference averaged over references and n-gram orders, x 10, and
    the mean over inputs. The idf depends on the whole corpus: a single input always scores 0. Equal to
    the E2E script's CIDEr (2.3039 on its example).
    """
    _check_generation(predictions, references)
    return _cider_score(*_coco_tokenize(predictions, references))


def webnlg_bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 in percent (0-100) as the WebNLG 2017 challenge computed it, by sacrebleu.

    The challenge's preprocessing: lowercase, transliterate to ASCII, split at every non-word character
    (``re.split('(\\W)')``); then sacrebleu's ``BLEU(tokenize="none", smooth_method="none")``, which is
    multi-bleu.perl -lc: no smoothing (0 when some n-gram order has no match), clipping by the largest
    count in one reference, the closest reference length (ties: the shorter). Checked against the
    challenge's scripts on a full test-set output (1,862 inputs, BART, from the DART repository): 58.06
    both. Differences from the challenge's scripts: it transliterated with unidecode (GPL), this with
    anyascii (ISC), which agree on every non-ASCII character of the WebNLG 2017 test set; it used at most
    3 references per input, this uses all given (pass the first 3 to reproduce it; with all, that output
    scores 57.91); its padding of missing references with empty lines let an empty reference be the
    "closest" length for predictions under half a reference's length, which cannot happen here.
    """
    import sacrebleu

    _check_generation(predictions, references)
    hyps, refs = _webnlg_tokenize(predictions, references)
    bleu = sacrebleu.BLEU(tokenize="none", smooth_method="none", force=True)
    return float(bleu.corpus_score(hyps, _reference_streams(refs)).score)


def webnlg_meteor(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus METEOR 1.5 in percent (0-100) as the WebNLG 2017 challenge computed it, by pycocoevalcap.

    The challenge's preprocessing (as ``webnlg_bleu``), then METEOR 1.5 with ``-l en -norm`` (the jar and
    English paraphrase table shipped in pycocoevalcap, run in its ``-stdio`` mode) against all references
    of each input (the challenge: ``-r 3``, the first 3), the score from the summed statistics. On the
    output named in ``webnlg_bleu`` the challenge's script gives 0.4297, this 42.97.
    """
    _check_generation(predictions, references)
    return _webnlg_meteor(*_webnlg_tokenize(predictions, references))


def webnlg_ter(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus TER in percent (0 and up, lower is better) as the WebNLG 2017 challenge computed it, by sacrebleu.

    The challenge's preprocessing (as ``webnlg_bleu``), then sacrebleu's TER (a port of tercom 0.7.25, with
    no normalisation, case-insensitive): the fewest edits (insertions, deletions, substitutions, block
    shifts) to any one reference of each input, summed, over the summed average reference lengths. The
    challenge printed tercom's fraction: divide by 100 to compare (on the output named in ``webnlg_bleu``,
    tercom 0.3773, this 37.73).
    """
    from sacrebleu.metrics import TER

    _check_generation(predictions, references)
    hyps, refs = _webnlg_tokenize(predictions, references)
    return float(TER().corpus_score(hyps, _reference_streams(refs)).score)


GENERATION_METRICS: dict[str, Callable[[Sequence[str], Sequence[Sequence[str]]], float]] = {
    "e2e_bleu": e2e_bleu, "e2e_nist": e2e_nist, "e2e_meteor": e2e_meteor, "e2e_rouge_l": e2e_rouge_l,
    "e2e_cider": e2e_cider, "webnlg_bleu": webnlg_bleu, "webnlg_meteor": webnlg_meteor, "webnlg_ter": webnlg_ter,
}
_GENERATION_TASKS = {"e2e": E2E_METRICS, "webnlg": WEBNLG_METRICS}


def generation_scores(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    metrics: tuple[str, ...],
    *,
    task: str | None = None,
) -> dict[str, float]:
    """The named generation metrics of ``predictions`` against ``references``, keyed by the names given.

    A name is a key of GENERATION_METRICS ("e2e_bleu", "webnlg_ter", ...) or a short name ("bleu", "nist",
    "meteor", "rouge_l", "cider", "ter") read as that task's metric: ``task`` is "e2e" or "webnlg". "bleu" and
    "meteor" differ between the two benchmarks (tokenisation, smoothing), so they need ``task``; "nist",
    "rouge_l" and "cider" (E2E only) and "ter" (WebNLG only) do not. The inputs are checked once and each
    tokenisation (PTB, WebNLG) is done once for all metrics that share it. Scales: see each metric.
    """
    names = [_generation_metric(m, task) for m in metrics]
    if len(set(metrics)) != len(metrics):
        raise ConfigError(f"metric names {tuple(metrics)} repeat")
    _check_generation(predictions, references)
    scores: dict[str, float] = {}
    coco = webnlg = None
    for given, name in zip(metrics, names):
        if name in _COCO_SCORERS:
            coco = coco or _coco_tokenize(predictions, references)
            scores[given] = _COCO_SCORERS[name](*coco)
        elif name == "webnlg_meteor":  # BLEU and TER redo the (fast) tokenisation
            webnlg = webnlg or _webnlg_tokenize(predictions, references)
            scores[given] = _webnlg_meteor(*webnlg)
        else:
            scores[given] = GENERATION_METRICS[name](predictions, references)
    return scores


def close_meteor() -> None:
    """End the METEOR Java process that the METEOR metrics keep between calls (it holds about 1.2 GB)."""
    global _METEOR
    _METEOR = None  # pycocoevalcap's Meteor ends its process when it is collected (at once, by refcount)


def _generation_metric(name: str, task: str | None) -> str:
    if name in GENERATION_METRICS:
        return name
    if task is not None and task not in _GENERATION_TASKS:
        raise ConfigError(f"unknown generation task {task!r}; known: {', '.join(_GENERATION_TASKS)}")
    owners = [t for t, names in _GENERATION_TASKS.items() if f"{t}_{name}" in names]
    if not owners:
        known = sorted({n.split("_", 1)[1] for n in GENERATION_METRICS}) + list(GENERATION_METRICS)
        raise ConfigError(f"unknown generation metric {name!r}; known metrics: {', '.join(known)}")
    if task is None and len(owners) > 1:
        raise ConfigError(
            f"metric {name!r} is computed differently for {' and '.join(owners)}: pass task='e2e' or "
            f"task='webnlg', or name it {' or '.join(repr(f'{t}_{name}') for t in owners)}"
        )
    owner = task if task is not None else owners[0]
    if owner not in owners:
        raise ConfigError(f"metric {name!r} is not a {owner} metric; {owner} has {', '.join(_GENERATION_TASKS[owner])}")
    return f"{owner}_{name}"


def _check_generation(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(predictions) != len(references):
        raise ConfigError(f"{len(predictions)} predictions for {len(references)} inputs' references")
    if not predictions:
        raise ConfigError("no predictions to score")
    for i, prediction in enumerate(predictions):
        if not isinstance(prediction, str):
            raise ConfigError(f"prediction {i} is a {type(prediction).__name__}, not a string")
    for i, refs in enumerate(references):
        if isinstance(refs, str):
            raise ConfigError(f"references[{i}] is a string: give each input a list of its reference strings")
        if len(refs) == 0:
            raise ConfigError(f"input {i} has no references: every input needs at least one")
        for j, ref in enumerate(refs):
            if not isinstance(ref, str) or not ref.strip():
                raise ConfigError(f"reference {j} of input {i} is {ref!r}: references must be non-empty strings")


_JAVA_METRICS = {"e2e_meteor", "e2e_rouge_l", "e2e_cider", "webnlg_meteor"}  # PTB tokeniser or METEOR: Java jars
_PACKAGES = ("sacrebleu", "nltk", "pycocoevalcap", "anyascii")  # the extra `memtune[generation]`


def check_generation_metrics(metrics: tuple[str, ...], *, task: str | None = None) -> None:
    """Refuse at once (not after training) when a named metric cannot be computed here: an unknown name, a
    package of ``memtune[generation]`` missing, or no ``java`` for the metrics that run Java jars."""
    import importlib.util

    names = [_generation_metric(m, task) for m in metrics]
    missing = [p for p in _PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise MemtuneError(f"the data-to-text metrics need {', '.join(missing)}: pip install 'memtune[generation]'")
    if any(n in _JAVA_METRICS for n in names):
        _require_java(f"{task or 'the task'}'s {', '.join(m for m, n in zip(metrics, names) if n in _JAVA_METRICS)}")


def _reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """sacrebleu's layout: stream k holds every input's k-th reference, None where an input has fewer."""
    depth = max(len(refs) for refs in references)
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(depth)]


def _webnlg_tokenize(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[list[str], list[list[str]]]:
    """The WebNLG 2017 challenge's preprocessing (webnlg-automatic-evaluation, evaluation.py), in its order:
    predictions are lowercased, transliterated, then split; references split, lowercased, transliterated."""
    from anyascii import anyascii

    def split(text: str) -> str:
        return " ".join(re.split(r"(\W)", text))

    hyps = [" ".join(split(anyascii(p.lower())).split()) for p in predictions]
    refs = [[" ".join(anyascii(split(r).lower()).split()) for r in rs] for rs in references]
    return hyps, refs


def _require_java(what: str) -> None:
    if shutil.which("java") is None:
        raise MemtuneError(f"{what} runs a Java jar (shipped in pycocoevalcap) and needs `java` on PATH: "
                           "install a Java runtime, 8 or later (e.g. apt-get install default-jre-headless)")


def _coco_tokenize(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """The COCO toolkit's PTB tokenisation, as the E2E script applies it: (references, predictions) by input."""
    _require_java("the E2E METEOR, ROUGE-L and CIDEr (PTB tokeniser)")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()  # writes a temporary file beside its jar, in pycocoevalcap's folder
    gts = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(references)})
    res = tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(predictions)})
    return gts, res


_METEOR: Any = None  # pycocoevalcap's Meteor: one Java process, started on first use (about 10 s)


def _meteor_score(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    global _METEOR
    if _METEOR is None or _METEOR.meteor_p.poll() is not None:
        _require_java("METEOR 1.5")
        from pycocoevalcap.meteor.meteor import Meteor

        _METEOR = Meteor()
    return 100.0 * float(_METEOR.compute_score(gts, res)[0])


def _webnlg_meteor(hyps: list[str], refs: list[list[str]]) -> float:
    return _meteor_score({i: list(r) for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)})


def _rouge_l_score(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    from pycocoevalcap.rouge.rouge import Rouge

    return 100.0 * float(Rouge().compute_score(gts, res)[0])


def _cider_score(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    from pycocoevalcap.cider.cider import Cider

    return float(Cider().compute_score(gts, res)[0])


_COCO_SCORERS = {"e2e_meteor": _meteor_score, "e2e_rouge_l": _rouge_l_score, "e2e_cider": _cider_score}
