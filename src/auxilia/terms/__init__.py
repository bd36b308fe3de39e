"""Terms and objectives: a method is a set of weighted losses that read outputs by reference.

``core`` holds the contract (:class:`Ref`, :class:`Term`, :class:`Objective`) and cross-entropy;
the other modules add the terms of each family.
"""

from auxilia.terms.core import (
    Batch,
    CrossEntropy,
    Objective,
    Outputs,
    Progress,
    Ref,
    Term,
)
from auxilia.terms.dense import TargetMSE
from auxilia.terms.distill import (
    Discrepancy,
    FeatureL2,
    HintMSE,
    KLDistill,
    PredictionBankCE,
    ProjectionDistance,
    SimilarityKL,
    SoftTargetCE,
)
from auxilia.terms.metric import SupCon, Triplet
from auxilia.terms.semi import (
    ConfidenceMaskedCE,
    MixedTargetCE,
    MixedTargetMSE,
    Ramp,
    SoftmaxConsistency,
    SoftmaxKLConsistency,
    TemporalEnsemble,
    TSACrossEntropy,
)

__all__ = ["Batch", "CrossEntropy", "Discrepancy", "FeatureL2", "HintMSE", "KLDistill",
           "Objective", "Outputs", "PredictionBankCE", "Progress", "ProjectionDistance", "Ref",
           "SimilarityKL", "SoftTargetCE", "SupCon", "TargetMSE", "Term", "Triplet"]
__all__ += ["ConfidenceMaskedCE", "MixedTargetCE", "MixedTargetMSE", "Ramp",
            "SoftmaxConsistency", "SoftmaxKLConsistency", "TSACrossEntropy",
            "TemporalEnsemble"]
