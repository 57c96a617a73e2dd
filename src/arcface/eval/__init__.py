"""Evaluation: verification metrics (k-fold accuracy, ROC, TAR@FAR, EER), model embedding of protocol
pairs and insightface ``.bin`` sets, IJB-B/C template verification, 1:N identification, and the whole
evaluations behind ``arcface eval`` (any ONNX face model included). Imports without any distributed
or logging setup.

>>> from arcface.eval import verify_bin
>>> verify_bin(model, "lfw.bin").accuracy_mean
"""

from ..model import ModelInfo, OnnxFaceModel, load_face_model  # re-exported: the model layer owns them
from .embed import BinImages, PairImages, embed_images, verify_bin, verify_pairs
from .evaluate import EvalOptions, evaluate_bin, evaluate_identification, evaluate_ijb, evaluate_pairs, plot_roc
from .identification import IdentificationResult, identify
from .ijb import IJBMeta, IJBResult, ijb_verification, pair_scores, read_ijb_meta, template_features, verify_templates
from .pair_index import PairIndex, bin_folds
from .verification import FAR_TARGETS, VerificationResult, best_threshold, eer, kfold_accuracy, rate_key, roc, tar_at_far

__all__ = [
    "EvalOptions",
    "IJBMeta",
    "IJBResult",
    "IdentificationResult",
    "ModelInfo",
    "OnnxFaceModel",
    "evaluate_bin",
    "evaluate_identification",
    "evaluate_ijb",
    "evaluate_pairs",
    "identify",
    "ijb_verification",
    "load_face_model",
    "pair_scores",
    "plot_roc",
    "rate_key",
    "read_ijb_meta",
    "template_features",
    "verify_templates",
    "FAR_TARGETS",
    "BinImages",
    "PairImages",
    "PairIndex",
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
