"""Ranking metrics for lens classifiers, checked against brute-force reference implementations."""

from __future__ import annotations

import json
from typing import cast

import numpy as np
import pytest
from PIL import Image

from lenscat.classifiers.evaluation import ranking_metrics, recall_curve
from lenscat.classifiers.evaluation_plot import format_metrics, plot_evaluation
from lenscat.errors import LenscatError

# ---------------------------------------------------------------------------------------------
# brute-force references: plain loops, written independently of the implementation


def ref_auc(scores, labels):
    """Pairwise: each (lens, non-lens) pair scores 1 if the lens is higher, 1/2 if tied."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    total = 0.0
    for p in pos:
        for q in neg:
            total += 1.0 if p > q else 0.5 if p == q else 0.0
    return total / (len(pos) * len(neg))


def ref_tpr_at_fp(scores, labels, k):
    """Best TP rate over every threshold t (flag score > t) that lets through <= k non-lenses."""
    n_pos = sum(1 for y in labels if y)
    best = 0
    for t in [-np.inf, *scores]:
        tp = fp = 0
        for s, y in zip(scores, labels, strict=True):
            if s > t:
                if y:
                    tp += 1
                else:
                    fp += 1
        if fp <= k:
            best = max(best, tp)
    return best / n_pos


def ref_average_precision(scores, labels):
    """Mean over lenses of the precision among all images scoring at least as high."""
    precisions = []
    for s, y in zip(scores, labels, strict=True):
        if y:
            above = [yy for ss, yy in zip(scores, labels, strict=True) if ss >= s]
            precisions.append(sum(1 for yy in above if yy) / len(above))
    return sum(precisions) / len(precisions)


def ref_top_n(scores, labels, n):
    """True positives among the first n in descending score, ties by original index."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sum(1 for i in order[:n] if labels[i])


def tied_sample(rng, n, n_pos, levels=8):
    """Integer-valued scores (many ties); lenses drawn a little higher."""
    labels = np.zeros(n, dtype=bool)
    labels[rng.choice(n, n_pos, replace=False)] = True
    scores = rng.integers(0, levels, n).astype(float) + labels * rng.integers(0, 3, n)
    return scores, labels


# ---------------------------------------------------------------------------------------------
# ranking_metrics


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(15, 70))
    scores, labels = tied_sample(rng, n, int(rng.integers(1, n // 2)))
    s, y = scores.tolist(), labels.tolist()
    m = ranking_metrics(scores, labels, top_n=[1, 5, n // 2, n])
    assert m["auc"] == pytest.approx(ref_auc(s, y), abs=1e-12)
    assert m["tpr0"] == pytest.approx(ref_tpr_at_fp(s, y, 0), abs=1e-12)
    assert m["tpr10"] == pytest.approx(ref_tpr_at_fp(s, y, 10), abs=1e-12)
    assert m["average_precision"] == pytest.approx(ref_average_precision(s, y), abs=1e-12)
    for row in m["top_n"]:
        tp = ref_top_n(s, y, row["n"])
        assert row["true_positives"] == tp
        assert row["precision"] == pytest.approx(tp / row["n"])
        assert row["recall"] == pytest.approx(tp / sum(y))


def test_continuous_scores_match_brute_force():
    rng = np.random.default_rng(42)
    labels = rng.random(300) < 0.1
    labels[:2] = [True, False]
    scores = rng.normal(size=300) + 1.5 * labels
    s, y = scores.tolist(), labels.tolist()
    m = ranking_metrics(scores, labels)
    assert m["auc"] == pytest.approx(ref_auc(s, y))
    assert m["tpr0"] == pytest.approx(ref_tpr_at_fp(s, y, 0))
    assert m["tpr10"] == pytest.approx(ref_tpr_at_fp(s, y, 10))
    assert m["average_precision"] == pytest.approx(ref_average_precision(s, y))


def test_tie_with_best_negative_does_not_count():
    # the lens at 0.9 ties the best non-lens: not reachable with zero false positives
    scores = [0.95, 0.9, 0.9, 0.5, 0.4]
    labels = [1, 1, 0, 0, 1]
    m = ranking_metrics(scores, labels, top_n=[1, 2, 3])
    assert m["tpr0"] == pytest.approx(1 / 3)
    assert m["tpr10"] == 1.0  # only two non-lenses
    # lens vs non-lens pairs: (0.95 beats both) 2 + (0.9: tie 1/2, beats 0.5) 1.5 + (0.4) 0
    assert m["auc"] == pytest.approx(3.5 / 6)
    # stable tie-break by original index: index 1 (lens) ranks above index 2 (non-lens)
    assert [r["true_positives"] for r in m["top_n"]] == [1, 2, 2]
    # ... so swapping the tied pair changes the top-2 count, but nothing tie-aware
    swapped = ranking_metrics([0.95, 0.9, 0.9, 0.5, 0.4], [1, 0, 1, 0, 1], top_n=[2])
    assert swapped["top_n"][0]["true_positives"] == 1
    assert swapped["auc"] == m["auc"] and swapped["tpr0"] == m["tpr0"]
    assert swapped["average_precision"] == m["average_precision"]


def test_tpr10_threshold_is_eleventh_negative():
    # 12 non-lenses at 0..11; lenses at 0.5 (below 11th-highest = 1.0), 1.0 (tied), 1.5, 20
    neg = np.arange(12, dtype=float)
    pos = np.array([0.5, 1.0, 1.5, 20.0])
    scores = np.concatenate([neg, pos])
    labels = np.r_[np.zeros(12, bool), np.ones(4, bool)]
    m = ranking_metrics(scores, labels)
    assert m["tpr10"] == pytest.approx(2 / 4)
    assert m["tpr0"] == pytest.approx(1 / 4)
    assert m["tpr10"] == pytest.approx(ref_tpr_at_fp(scores.tolist(), labels.tolist(), 10))


def test_perfect_inverted_and_constant_classifiers():
    labels = np.r_[np.ones(30, bool), np.zeros(970, bool)]
    perfect = ranking_metrics(np.linspace(1, 0, 1000), labels)
    assert perfect["auc"] == 1.0 and perfect["tpr0"] == 1.0 and perfect["tpr10"] == 1.0
    assert perfect["average_precision"] == 1.0
    assert [r["n"] for r in perfect["top_n"]] == [10, 30, 100, 1000]  # 1 % of n, n_pos, ...
    at_n_pos = perfect["top_n"][1]
    assert at_n_pos == {"n": 30, "true_positives": 30, "precision": 1.0, "recall": 1.0}

    inverted = ranking_metrics(np.linspace(0, 1, 1000), labels)
    assert inverted["auc"] == 0.0 and inverted["tpr0"] == 0.0 and inverted["tpr10"] == 0.0

    constant = ranking_metrics(np.zeros(1000), labels)
    assert constant["auc"] == 0.5
    assert constant["tpr0"] == 0.0 and constant["tpr10"] == 0.0
    assert constant["average_precision"] == pytest.approx(30 / 1000)
    # all tied: the top N is the first N by index, which here are all the lenses
    assert [r["true_positives"] for r in constant["top_n"]] == [10, 30, 30, 30]


def test_random_classifier():
    rng = np.random.default_rng(7)
    n = 100_000
    labels = rng.random(n) < 0.01
    m = ranking_metrics(rng.random(n), labels)
    assert m["auc"] == pytest.approx(0.5, abs=0.02)
    assert m["average_precision"] == pytest.approx(labels.mean(), rel=0.25)
    assert m["tpr0"] < 0.01 and m["tpr10"] < 0.02
    for row in m["top_n"]:
        assert row["precision"] == pytest.approx(labels.mean(), abs=0.05 + 3 / np.sqrt(row["n"]))


def test_realistic_imbalance():
    # 20 lenses among 200,000 images (1:10^4), a decent but imperfect classifier
    rng = np.random.default_rng(2022)
    n, n_pos = 200_000, 20
    labels = np.zeros(n, dtype=bool)
    labels[rng.choice(n, n_pos, replace=False)] = True
    scores = rng.normal(size=n)
    scores[labels] = rng.normal(4.0, 1.0, n_pos)
    m = ranking_metrics(scores, labels)
    assert (m["n"], m["n_pos"], m["n_neg"]) == (n, n_pos, n - n_pos)
    assert m["imbalance"] == pytest.approx((n - n_pos) / n_pos)
    assert [r["n"] for r in m["top_n"]] == [20, 100, 1000, 2000]  # n_pos, 100, 1000, 1 % of n

    pos, neg = scores[labels], scores[~labels]
    # vectorised pairwise AUC (20 x 199,980 comparisons), ties as 1/2
    pairwise = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert m["auc"] == pytest.approx(pairwise / (pos.size * neg.size), abs=1e-12)
    neg_desc = np.sort(neg)[::-1]
    tpr0 = sum(1 for p in pos if p > neg_desc[0]) / n_pos
    tpr10 = sum(1 for p in pos if p > neg_desc[10]) / n_pos
    assert m["tpr0"] == tpr0 and m["tpr10"] == tpr10
    assert 0 < m["tpr0"] <= m["tpr10"] < 1  # the interesting regime
    order = sorted(range(n), key=lambda i: -scores[i])
    for row in m["top_n"]:
        assert row["true_positives"] == int(labels[order[: row["n"]]].sum())
    assert m["auc"] > 0.99  # high AUC...
    assert m["top_n"][0]["precision"] < 1.0  # ...yet the top of the list is not clean


def test_output_is_plain_json():
    m = ranking_metrics(np.array([0.2, 0.8, 0.5], dtype=np.float32), np.array([0, 1, 0]))
    json.dumps(m, allow_nan=False)

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        else:
            assert type(x) in (int, float), (x, type(x))

    walk(m)
    assert isinstance(m["n"], int) and isinstance(m["auc"], float)


def test_default_and_explicit_top_n():
    scores = np.linspace(0, 1, 50)
    labels = np.arange(50) % 5 == 0
    # n_pos = 10, 1 % of 50 -> 1 (at least one); 100 and 1000 exceed n
    assert [r["n"] for r in ranking_metrics(scores, labels)["top_n"]] == [1, 10]
    numpy_int = cast(int, np.int64(7))  # numpy integers are accepted as well as ints
    got = ranking_metrics(scores, labels, top_n=[50, 3, 3, numpy_int])["top_n"]
    assert [r["n"] for r in got] == [3, 7, 50]
    assert got[-1]["recall"] == 1.0


def test_bool_and_int_labels_agree():
    rng = np.random.default_rng(3)
    scores = rng.random(40)
    labels = rng.random(40) < 0.3
    assert ranking_metrics(scores, labels) == ranking_metrics(scores, labels.astype(int))
    assert ranking_metrics(scores, labels) == ranking_metrics(scores.tolist(), labels.tolist())


@pytest.mark.parametrize(
    "scores, labels, kwargs, match",
    [
        ([0.1, 0.2, 0.3], [0, 1], {}, "differ in length"),
        ([0.1, np.nan, 0.3], [0, 1, 0], {}, "NaN"),
        ([0.1, 0.2, 0.3], [0, 0, 0], {}, "no positives"),
        ([0.1, 0.2, 0.3], [1, 1, 1], {}, "no negatives"),
        ([], [], {}, "no positives"),
        ([0.1, 0.2, 0.3], [0, 2, 1], {}, "0/1"),
        ([0.1, 0.2, 0.3], ["a", "b", "c"], {}, "0/1"),
        (["x", "y"], [0, 1], {}, "numbers"),
        ([[0.1, 0.2]], [[0, 1]], {}, "one-dimensional"),
        ([0.1, 0.2, 0.3], [0, 1, 0], {"top_n": [0]}, "out of range"),
        ([0.1, 0.2, 0.3], [0, 1, 0], {"top_n": [4]}, "out of range"),
        ([0.1, 0.2, 0.3], [0, 1, 0], {"top_n": [1.5]}, "whole numbers"),
    ],
)
def test_bad_input(scores, labels, kwargs, match):
    with pytest.raises(LenscatError, match=match):
        ranking_metrics(scores, labels, **kwargs)


# ---------------------------------------------------------------------------------------------
# recall_curve


def test_recall_curve_matches_loops():
    rng = np.random.default_rng(11)
    scores, labels = tied_sample(rng, 60, 9)
    n_insp, recall, precision = recall_curve(scores, labels)
    assert n_insp.tolist() == list(range(1, 61))
    s, y = scores.tolist(), labels.tolist()
    for k in range(1, 61):
        tp = ref_top_n(s, y, k)
        assert recall[k - 1] == pytest.approx(tp / 9)
        assert precision[k - 1] == pytest.approx(tp / k)
    assert recall[-1] == 1.0 and np.all(np.diff(recall) >= 0)
    # consistent with ranking_metrics' top-N rows
    for row in ranking_metrics(scores, labels, top_n=[1, 9, 30])["top_n"]:
        assert recall[row["n"] - 1] == row["recall"]
        assert precision[row["n"] - 1] == row["precision"]


def test_recall_curve_n_max_and_errors():
    scores = np.arange(10.0)
    labels = scores >= 7
    n_insp, recall, precision = recall_curve(scores, labels, n_max=4)
    assert n_insp.tolist() == [1, 2, 3, 4]
    assert recall.tolist() == pytest.approx([1 / 3, 2 / 3, 1, 1])
    assert precision.tolist() == pytest.approx([1, 1, 1, 0.75])
    assert recall_curve(scores, labels, n_max=50)[0].shape == (10,)  # clipped to n
    assert recall_curve(scores, np.ones(10, bool))[1][-1] == 1.0  # no non-lenses is fine
    with pytest.raises(LenscatError, match="n_max"):
        recall_curve(scores, labels, n_max=0)
    with pytest.raises(LenscatError, match="no positives"):
        recall_curve(scores, np.zeros(10, bool))


# ---------------------------------------------------------------------------------------------
# reporting


def test_format_metrics():
    rng = np.random.default_rng(5)
    labels = rng.random(5000) < 0.004
    scores = rng.normal(size=5000) + 3 * labels
    m = ranking_metrics(scores, labels, top_n=[10, 100])
    text = format_metrics("resnet-small", m)
    lines = text.splitlines()
    assert lines[0].startswith("resnet-small:") and str(m["n_pos"]) in lines[0]
    assert f"AUC {m['auc']:.4f}" in text
    assert f"TPR0 {m['tpr0']:.3f}" in text and f"TPR10 {m['tpr10']:.3f}" in text
    assert len(lines) == 4
    assert "top  10:" in lines[2] and "top 100:" in lines[3]
    assert f"precision {m['top_n'][1]['precision']:.3f}" in lines[3]
    assert f"recall {m['top_n'][1]['recall']:.3f}" in lines[3]


def test_plot_evaluation_writes_pngs(tmp_path):
    rng = np.random.default_rng(9)
    n = 3000
    labels = rng.random(n) < 0.01
    good = rng.normal(size=n) + 3 * labels
    coin = rng.random(n)
    coin[0] = np.inf  # infinite scores are allowed and land in the outer histogram bin
    curves = {"good": (good, labels), "random": (coin, labels.astype(int))}
    out = tmp_path / "does" / "not" / "exist"
    paths = plot_evaluation(curves, out, prefix="test")
    names = [p.name for p in paths]
    assert names == ["test_recall_precision.png", "test_scores.png", "test_roc.png"]
    for p in paths:
        assert p.parent == out and p.stat().st_size > 0
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


def test_plot_evaluation_bad_input(tmp_path):
    with pytest.raises(LenscatError, match="at least one"):
        plot_evaluation({}, tmp_path)
    with pytest.raises(LenscatError, match="'broken'.*differ in length"):
        plot_evaluation({"broken": ([0.1, 0.2], [1])}, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written on error
