"""Forgery-detection metrics: frame-level Acc/AUC/EER/AP and video-level AUC."""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def equal_error_rate(labels: np.ndarray, scores: np.ndarray) -> float:
    """The ROC point where false-positive and false-negative rates meet."""
    fpr, tpr, _ = roc_curve(labels, scores, pos_label=1)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2)


def video_scores(videos: Sequence[str], labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean frame probability per unique video id (ids must already be unique across methods)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, v in enumerate(videos):
        groups[v].append(i)
    vl = np.array([round(float(labels[idx].mean())) for idx in groups.values()])
    vs = np.array([float(scores[idx].mean()) for idx in groups.values()])
    return vl, vs


def forgery_metrics(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                    videos: Sequence[str] | None = None) -> dict[str, float]:
    """``scores`` are P(fake); accuracy thresholds them at 0.5. Percentages, like the paper."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    out = {"acc": float(((s > 0.5) == y).mean() * 100)}
    if len(np.unique(y)) == 2:
        out["auc"] = float(roc_auc_score(y, s) * 100)
        out["eer"] = equal_error_rate(y, s) * 100
        out["ap"] = float(average_precision_score(y, s) * 100)
        if videos is not None and len(set(videos)) < len(videos):
            vl, vs = video_scores(videos, y, s)
            if len(np.unique(vl)) == 2:
                out["video_auc"] = float(roc_auc_score(vl, vs) * 100)
    return out
