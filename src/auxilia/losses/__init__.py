"""Pure loss functions, each with the paper it comes from and the tensor shapes it takes."""

from auxilia.losses.classification import cross_entropy, topk_correct
from auxilia.losses.contrastive import supcon
from auxilia.losses.distill import kd_kl, mean_difference, mmd
from auxilia.losses.metric import pairwise_margin, pairwise_sq_distances, triplet_margin
from auxilia.losses.semi import (
    linear_rampup,
    masked_cross_entropy,
    mixup,
    sharpen,
    sigmoid_rampup,
    soft_cross_entropy,
    softmax_mse,
    tsa_threshold,
)

__all__ = [
    "cross_entropy",
    "kd_kl",
    "linear_rampup",
    "masked_cross_entropy",
    "mean_difference",
    "mixup",
    "mmd",
    "pairwise_margin",
    "pairwise_sq_distances",
    "sharpen",
    "sigmoid_rampup",
    "soft_cross_entropy",
    "softmax_mse",
    "supcon",
    "topk_correct",
    "triplet_margin",
    "tsa_threshold",
]
