"""Terms and objectives: composition rules and the gradient contract."""

from __future__ import annotations

import pytest
import torch

from auxilia.models.heads import HeadSpec
from auxilia.terms import CrossEntropy, Objective, Progress, Ref

WHERE = Progress(step=0, total_steps=10, steps_per_epoch=5)


def _outputs(requires_grad: bool = True) -> dict:
    logits = torch.randn(4, 3, requires_grad=requires_grad)
    aux = torch.randn(4, 3, requires_grad=requires_grad)
    return {("student", "x_lb"): {"final": {"logits": logits}, "s1": {"logits": aux}}}


def test_cross_entropy_matches_formula() -> None:
    outs = _outputs()
    y = torch.tensor([0, 2, 1, 2])
    term = CrossEntropy("ce", Ref("x_lb"))
    logits = outs[("student", "x_lb")]["final"]["logits"]
    expected = -torch.stack([logits[i].log_softmax(0)[y[i]] for i in range(4)]).mean()
    assert torch.allclose(term.compute(outs, {"y_lb": y}, WHERE), expected)


def test_objective_total_is_weighted_sum_and_parts_are_logged() -> None:
    outs = _outputs()
    y = torch.tensor([0, 2, 1, 2])
    obj = Objective([CrossEntropy("ce", Ref("x_lb")), CrossEntropy("ce_s1", Ref("x_lb", "s1"),
                                                                   weight=0.7)])
    result = obj(outs, {"y_lb": y}, WHERE)
    assert torch.allclose(result["loss"], result["ce"] + 0.7 * result["ce_s1"])
    assert not result["ce"].requires_grad and result["loss"].requires_grad


def test_combining_identical_terms_deduplicates() -> None:
    a = Objective([CrossEntropy("ce", Ref("x_lb"))], views={"x_lb": "weak"})
    b = Objective([CrossEntropy("ce", Ref("x_lb"))], views={"x_lb": "weak"})
    assert list((a | b).terms) == ["ce"]


def test_combining_conflicting_terms_fails_loudly() -> None:
    a = Objective([CrossEntropy("ce", Ref("x_lb"))])
    b = Objective([CrossEntropy("ce", Ref("x_lb"), weight=0.5)])
    with pytest.raises(ValueError, match="define a term 'ce' differently"):
        _ = a | b


def test_conflicting_heads_and_views_fail_loudly() -> None:
    h1 = HeadSpec("s1", "logits", "classifier", (("hidden", 0),))
    h2 = HeadSpec("s1", "logits", "classifier", (("hidden", 64),))
    with pytest.raises(ValueError, match="different 'logits' heads on exit 's1'"):
        _ = Objective(heads=[h1]) | Objective(heads=[h2])
    with pytest.raises(ValueError, match="view 'x_lb' augmented differently"):
        _ = Objective(views={"x_lb": "cutout"}) | Objective(views={"x_lb": "color"})


def test_a_specific_view_wins_over_the_default_weak_one() -> None:
    a = Objective(views={"x_lb": "weak"})
    b = Objective(views={"x_lb": "cutout", "x_lb2": "color"})
    assert (a | b).views == (b | a).views == {"x_lb": "cutout", "x_lb2": "color"}


def test_inputs_group_views_per_model() -> None:
    obj = Objective([CrossEntropy("a", Ref("x_lb")), CrossEntropy("b", Ref("x_lb2")),
                     CrossEntropy("c", Ref("x_lb", model="teacher"))])
    assert obj.inputs() == {"student": ["x_lb", "x_lb2"], "teacher": ["x_lb"]}


def test_missing_reference_names_what_exists() -> None:
    outs = _outputs()
    with pytest.raises(KeyError, match="exit 's1' has no 'proj' output"):
        Ref("x_lb", "s1", "proj").read(outs)
    with pytest.raises(KeyError, match="no outputs of student on view 'x_ulb_w'"):
        Ref("x_ulb_w").read(outs)
