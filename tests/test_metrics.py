"""kdbench.train.metrics against cases worked out by hand (in the comments), not by sklearn."""
from __future__ import annotations

import pytest

from kdbench.train.metrics import forgery_metrics

# 4 real (0) and 4 fake (1) frames. Negatives 0.1 0.2 0.3 0.6, positives 0.4 0.7 0.8 0.9.
LABELS = [0, 0, 0, 0, 1, 1, 1, 1]
SCORES = [0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9]


def test_frame_metrics_by_hand():
    m = forgery_metrics(LABELS, SCORES)
    # Acc at 0.5: the real 0.6 and the fake 0.4 are wrong -> 6/8.
    assert m["acc"] == pytest.approx(75.0)
    # AUC = P(fake scores above real) over 16 pairs: 0.4 beats 3 reals, 0.7/0.8/0.9 beat all 4 -> 15/16.
    assert m["auc"] == pytest.approx(93.75)
    # EER: flagging scores >= 0.6 misses 1 of 4 fakes (FNR 1/4) and flags 1 of 4 reals (FPR 1/4).
    assert m["eer"] == pytest.approx(25.0)
    # AP: ranked 0.9 F, 0.8 F, 0.7 F, 0.6 R, 0.4 F: precision at each fake 1, 1, 1, 4/5 -> mean 0.95.
    assert m["ap"] == pytest.approx(95.0)
    assert "video_auc" not in m  # no videos given


def test_ties_and_inverted_scores():
    # every score equal: each pair is a tie and counts 1/2; FPR = TPR everywhere, so EER 50 %
    m = forgery_metrics([0, 1, 0, 1], [0.3] * 4)
    assert m["auc"] == pytest.approx(50.0) and m["eer"] == pytest.approx(50.0) and m["acc"] == pytest.approx(50.0)
    # perfectly inverted: every real above every fake -> AUC 0, EER 100 %, AP = precision of the
    # fakes ranked last: ranks 3 and 4 hold them, precisions 1/3 and 2/4 -> (1/3 + 1/2) / 2
    m = forgery_metrics([1, 1, 0, 0], [0.2, 0.1, 0.9, 0.8])
    assert m["auc"] == pytest.approx(0.0) and m["eer"] == pytest.approx(100.0)
    assert m["ap"] == pytest.approx(100 * (1 / 3 + 1 / 2) / 2)


def test_one_class_has_accuracy_only():
    assert forgery_metrics([1, 1, 1], [0.9, 0.2, 0.7]) == {"acc": pytest.approx(200 / 3)}


def test_video_auc_averages_frames_per_video():
    # videos a, b real; c, d fake; two frames each, mean frame score per video:
    # a (0.1, 0.5) -> 0.3; b (0.6, 0.6) -> 0.6; c (0.4, 0.6) -> 0.5; d (0.9, 0.7) -> 0.8.
    # Video AUC: c beats a only, d beats both -> 3/4.
    videos = ["a", "a", "b", "b", "c", "c", "d", "d"]
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.5, 0.6, 0.6, 0.4, 0.6, 0.9, 0.7]
    m = forgery_metrics(labels, scores, videos)
    assert m["video_auc"] == pytest.approx(75.0)
    # frame level, fakes 0.4 0.6 0.9 0.7 against reals 0.1 0.5 0.6 0.6: 0.4 beats 0.1 (1); 0.6 beats
    # 0.1 and 0.5 and ties both 0.6 (2 + 2 x 1/2); 0.9 and 0.7 beat all (8) -> 12/16
    assert m["auc"] == pytest.approx(75.0)
    # the order of frames does not matter, only the grouping by video id
    order = [7, 2, 5, 0, 3, 6, 1, 4]
    shuffled = forgery_metrics([labels[i] for i in order], [scores[i] for i in order], [videos[i] for i in order])
    assert shuffled["video_auc"] == pytest.approx(75.0)
    # one frame per video: no video-level metric (it would equal the frame AUC)
    assert "video_auc" not in forgery_metrics(labels, scores, [str(i) for i in range(8)])
