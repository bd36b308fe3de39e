"""Pure loss functions, each with the paper it comes from and the tensor shapes it takes."""

from auxilia.losses.classification import cross_entropy, topk_correct

__all__ = ["cross_entropy", "topk_correct"]
