"""Pure loss functions, each with the paper it comes from and the tensor shapes it takes."""

from auxilia.losses.classification import cross_entropy, topk_correct
from auxilia.losses.contrastive import supcon
from auxilia.losses.distill import kd_kl, mean_difference, mmd
from auxilia.losses.metric import pairwise_margin, pairwise_sq_distances, triplet_margin

__all__ = [
    "cross_entropy",
    "kd_kl",
    "mean_difference",
    "mmd",
    "pairwise_margin",
    "pairwise_sq_distances",
    "supcon",
    "topk_correct",
    "triplet_margin",
]
