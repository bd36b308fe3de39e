"""Distillation terms against loops written from the papers' formulas: the CDS paper's soft CE
and projection distance, FitNet's hint, DoGo's similarity KL; teachers always detached."""

from __future__ import annotations

import math

import pytest
import torch

from auxilia.terms import HintMSE, Progress, ProjectionDistance, Ref, SimilarityKL, SoftTargetCE

WHERE = Progress(0, 1, 1)


def _outs(**by_model: dict) -> dict:
    return {(model, "x_lb"): exits for model, exits in by_model.items()}


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_soft_target_ce_is_the_cds_codes_formula(temperature: float) -> None:
    torch.manual_seed(0)
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    term = SoftTargetCE("kd_soft", Ref("x_lb"), Ref("x_lb", model="teacher"), temperature)
    value = term.compute(_outs(student={"final": {"logits": s}},
                               teacher={"final": {"logits": t}}), {}, WHERE)
    loop = 0.0
    for b in range(4):
        zs = [math.exp(float(v) / temperature) for v in s[b].detach()]
        zt = [math.exp(float(v) / temperature) for v in t[b].detach()]
        loop -= sum(zt[k] / sum(zt) * math.log(zs[k] / sum(zs)) for k in range(5))
    assert value.item() == pytest.approx(loop / 4, rel=1e-5)
    value.backward()
    assert s.grad.abs().sum() > 0 and t.grad is None


def test_hint_mse_averages_every_element_and_detaches_the_teacher() -> None:
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, requires_grad=True)
    term = HintMSE("fitnet_s2", Ref("x_lb", "s2", "fitnet"),
                   Ref("x_lb", "s2", "feat", model="teacher"))
    value = term.compute(_outs(student={"s2": {"fitnet": s}}, teacher={"s2": {"feat": t}}),
                         {}, WHERE)
    loop = sum((float(a) - float(b)) ** 2 for a, b in zip(s.detach().flatten(),
                                                           t.detach().flatten(), strict=True))
    loop /= s.numel()
    assert value.item() == pytest.approx(loop, rel=1e-5)
    value.backward()
    assert t.grad is None
    with pytest.raises(ValueError, match="differ in shape"):
        term.compute(_outs(student={"s2": {"fitnet": s}}, teacher={"s2": {"feat": t[:, :2]}}),
                     {}, WHERE)


@pytest.mark.parametrize(("s_dim", "t_dim"), [(6, 6), (4, 6)])
def test_projection_distance_is_the_frobenius_distance_over_both_views(
        s_dim: int, t_dim: int) -> None:
    torch.manual_seed(1)
    views = ("x_lb", "x_lb2")
    s = {v: torch.randn(3, s_dim, requires_grad=True) for v in views}
    t = {v: torch.randn(3, t_dim, requires_grad=True) for v in views}
    outs = {**{("student", v): {"s1": {"proj": s[v]}} for v in views},
            **{("teacher", v): {"s1": {"proj": t[v]}} for v in views}}
    term = ProjectionDistance("proj_kd_s1", tuple(Ref(v, "s1", "proj") for v in views),
                              tuple(Ref(v, "s1", "proj", model="teacher") for v in views),
                              s_dim, t_dim, init_seed=3)
    value = term.compute(outs, {}, WHERE)
    adapted = [term.adapt(s[v]) for v in views]  # identity when the widths agree
    loop = math.sqrt(sum(float((t[v][i, j] - adapted[k][i, j]).detach() ** 2)
                         for k, v in enumerate(views) for i in range(3) for j in range(t_dim)))
    assert value.item() == pytest.approx(loop, rel=1e-5)
    value.backward()
    assert all(t[v].grad is None and s[v].grad.abs().sum() > 0 for v in views)
    assert (s_dim != t_dim) == bool(list(term.parameters()))
    again = ProjectionDistance("p", term.student, term.teacher, s_dim, t_dim, init_seed=3)
    assert all(torch.equal(a, b) for a, b in zip(term.parameters(), again.parameters(),
                                                 strict=True))


def test_similarity_kl_matches_its_loop_and_is_zero_against_itself() -> None:
    torch.manual_seed(2)
    z = torch.randn(4, 3, requires_grad=True)
    peer = torch.randn(4, 3, requires_grad=True)
    tau = 0.1
    term = SimilarityKL("similarity_kl", (Ref("x_lb", "final", "proj"),),
                        (Ref("x_lb", "final", "proj", model="peer"),), tau)
    value = term.compute(_outs(student={"final": {"proj": z}}, peer={"final": {"proj": peer}}),
                         {}, WHERE)

    def rows(x: torch.Tensor) -> list[list[float]]:
        x = x.detach()
        n = [[float(v) / math.sqrt(sum(float(u) ** 2 for u in r)) for v in r] for r in x]
        out = []
        for i in range(4):
            e = {j: math.exp(sum(a * b for a, b in zip(n[i], n[j], strict=True)) / tau)
                 for j in range(4) if j != i}
            out.append([e[j] / sum(e.values()) if j != i else 0.0 for j in range(4)])
        return out

    p, q = rows(z), rows(peer)
    loop = sum(q[i][j] * math.log(q[i][j] / p[i][j]) for i in range(4) for j in range(4)
               if j != i) / 4
    assert value.item() == pytest.approx(loop, rel=1e-4)
    value.backward()
    assert z.grad.abs().sum() > 0 and peer.grad is None
    same = term.compute(_outs(student={"final": {"proj": z}}, peer={"final": {"proj": z}}),
                        {}, WHERE)
    assert abs(same.item()) < 1e-5
