"""Evaluation: verification metrics (k-fold accuracy, ROC, TAR@FAR, EER) and model embedding of
protocol pairs and insightface ``.bin`` sets. Imports without any distributed or logging setup.

>>> from arcface.eval import verify_bin
>>> verify_bin(model, "lfw.bin").accuracy_mean
"""

from .embed import PairImages, bin_folds, embed_images, verify_bin, verify_pairs
from .verification import FAR_TARGETS, VerificationResult, best_threshold, eer, kfold_accuracy, roc, tar_at_far

__all__ = [
    "FAR_TARGETS",
    "PairImages",
    "VerificationResult",
    "best_threshold",
    "bin_folds",
    "eer",
    "embed_images",
    "kfold_accuracy",
    "roc",
    "tar_at_far",
    "verify_bin",
    "verify_pairs",
]
