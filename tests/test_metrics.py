"""Each metric against a value computed by hand on a small case."""

import numpy as np
import pytest

from hf_vlp import metrics


def test_vqa_score_is_the_leave_one_out_mean_with_the_prediction_normalised():
    humans = ["2"] * 3 + ["3"] * 7
    # 'Two.' -> '2' matches 3 answers: leaving out one of them leaves 2 matches (2/3), another leaves 3 (1)
    assert metrics.vqa_score("Two.", humans) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert metrics.vqa_score("3", humans) == 1.0
    assert metrics.vqa_score("the 3", humans) == 1.0  # articles dropped
    assert metrics.vqa_score("4", humans) == 0.0
    # one matching answer of ten: 9 subsets hold it (1/3 each), the subset without it holds none
    assert metrics.vqa_score("cat", ["cat"] + ["dog"] * 9) == pytest.approx(9 / 3 / 10)


def test_human_answers_lose_punctuation_only_when_they_differ_as_in_the_official_script():
    assert metrics.vqa_score("yes", ["yes!"] * 5 + ["yes"] * 5) == 1.0
    assert metrics.vqa_score("yes", ["yes!"] * 10) == 0.0  # identical answers are compared as written


def test_vqa_accuracy_by_answer_type_and_missing_predictions():
    humans = {1: ["yes"] * 10, 2: ["2"] * 10, 3: ["red"] * 2 + ["blue"] * 8}
    types = {1: "yes/no", 2: "number", 3: "other"}
    result = metrics.vqa_accuracy({1: "yes", 2: "two", 3: "red"}, humans, types)
    red = (2 * min(1, 1 / 3) + 8 * min(1, 2 / 3)) / 10
    assert result["accuracy"] == pytest.approx((1 + 1 + red) / 3)
    assert result["accuracy/other"] == pytest.approx(red) and result["accuracy/number"] == 1.0
    with pytest.raises(ValueError, match="no prediction for 1 question.*3"):
        metrics.vqa_accuracy({1: "yes", 2: "2"}, humans)


def test_nlvr2_consistency_needs_every_pair_of_a_sentence_right():
    identifiers = ["dev-1-0-0", "dev-1-1-0", "dev-1-2-0", "dev-2-0-1", "dev-2-1-1"]
    labels = ["True", "False", "True", "False", "False"]
    predictions = [True, False, False, False, False]  # sentence dev-1-?-0 has one pair wrong
    result = metrics.nlvr2_accuracy(identifiers, predictions, labels)
    assert result == {"accuracy": pytest.approx(4 / 5), "consistency": pytest.approx(1 / 2)}
    with pytest.raises(ValueError, match="split-set-pair-sentence"):
        metrics.nlvr2_accuracy(["dev-1-0"], [True], [True])
    with pytest.raises(ValueError, match="one entry per example"):
        metrics.nlvr2_accuracy(identifiers, predictions[:2], labels)


def test_vcr_q2ar_needs_answer_and_rationale_right():
    result = metrics.vcr_accuracy([0, 1, 2, 3], [0, 1, 0, 3], [1, 1, 1, 2], [1, 0, 1, 2])
    assert result == {"q2a": 0.75, "qa2r": 0.75, "q2ar": 0.5}


def test_refexp_accuracy_counts_iou_of_one_half():
    predicted = [[0, 0, 2, 1], [0, 0, 1, 1], [5, 5, 6, 6]]
    gold = [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]]
    result = metrics.refexp_accuracy(predicted, gold)
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["mean_iou"] == pytest.approx((0.5 + 1 + 0) / 3)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        metrics.refexp_accuracy([[0, 0, 1]], [[0, 0, 1]])


def test_retrieval_recall_with_five_captions_per_image_logic():
    # 2 images, 4 texts: texts 0, 1 describe image 0; texts 2, 3 image 1
    scores = np.array([[0.1, 0.9, 0.8, 0.0], [0.7, 0.2, 0.3, 0.1]])
    result = metrics.retrieval_recall(scores, [0, 0, 1, 1], ks=(1, 2))
    # image 0's best text is 1 (its own): found at 1; image 1 ranks 0, 2, 1, 3: its own text 2 at rank 2
    assert result["image_to_text_R@1"] == 0.5 and result["image_to_text_R@2"] == 1.0
    # texts: 0 prefers image 1 (wrong), 1 image 0 (right), 2 image 0 (wrong), 3 image 1 (right)
    assert result["text_to_image_R@1"] == 0.5 and result["text_to_image_R@2"] == 1.0
    with pytest.raises(ValueError, match="must index the 2 images"):
        metrics.retrieval_recall(scores, [0, 0, 1, 2])


def test_topk_accuracy():
    logits = np.array([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    assert metrics.topk_accuracy(logits, [2, 0, 0], ks=(1, 2)) == {
        "top1": pytest.approx(1 / 3),
        "top2": pytest.approx(2 / 3),
    }


def test_caption_scores_bleu_brevity_and_cider_of_exact_captions():
    pytest.importorskip("pycocoevalcap")
    references = {1: ["a red circle left of a square"], 2: ["two blue crosses"]}
    exact = metrics.caption_scores({1: "A red circle left of a square.", 2: "two blue crosses"}, references)
    assert exact["bleu4"] == pytest.approx(1.0, abs=1e-6)
    # CIDEr: 10 x the mean over n = 1..4 of the tf-idf cosine; 1 for each order an exact caption has, and a 3-word
    # caption has no 4-grams (cosine 0): (10 + 10 * 3 / 4) / 2
    assert exact["cider"] == pytest.approx((10 + 7.5) / 2, abs=1e-6)
    # every n-gram right but one word short of the 7-word reference: BLEU = brevity penalty exp(1 - 7/6)
    short = metrics.caption_scores({1: "a red circle left of a", 2: "two blue crosses"}, {1: references[1]})
    assert short["bleu4"] == pytest.approx(np.exp(1 - 7 / 6), abs=1e-6)
    with pytest.raises(ValueError, match="no caption predicted"):
        metrics.caption_scores({}, references)
