"""DoGo's similarity KL is computed in float32 under mixed precision, like every other loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from auxilia.terms import Progress, Ref, SimilarityKL

WHERE = Progress(0, 1, 1)


def _projections(seed: int) -> torch.Tensor:
    """32 projections ``[32, 64]`` close to one direction: cosines near 1, where bf16's 8-bit
    mantissa rounds them by up to 0.004 (0.04 after dividing by τ = 0.1)."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 64, generator=generator)
    return base + 0.3 * torch.randn(32, 64, generator=generator)


def test_the_similarity_kl_under_bf16_autocast_equals_float32() -> None:
    z, peer = _projections(0).requires_grad_(), _projections(1)
    term = SimilarityKL("similarity_kl", (Ref("x_lb", "final", "proj"),),
                        (Ref("x_lb", "final", "proj", model="peer"),), 0.1)
    outputs = {("student", "x_lb"): {"final": {"proj": z}},
               ("peer", "x_lb"): {"final": {"proj": peer}}}
    exact = term.compute(outputs, {}, WHERE)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = term.compute(outputs, {}, WHERE)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, exact, rtol=1e-6, atol=1e-6)
    (grad_exact,) = torch.autograd.grad(exact, z)
    (grad_mixed,) = torch.autograd.grad(mixed, z)
    torch.testing.assert_close(grad_mixed, grad_exact, rtol=1e-5, atol=1e-7)
    # the tolerance means something: the same loss with the product in bf16 is far off
    with torch.autocast("cpu", dtype=torch.bfloat16):
        n, m = F.normalize(z.detach(), dim=1), F.normalize(peer, dim=1)
        rounded_p, rounded_q = n @ n.T, m @ m.T
    eye = torch.eye(32, dtype=torch.bool)
    log_p = (rounded_p.float() / 0.1).masked_fill(eye, float("-inf")).log_softmax(1)
    log_q = (rounded_q.float() / 0.1).masked_fill(eye, float("-inf")).log_softmax(1)
    q = log_q.exp()
    rounded = (q * (log_q - log_p)).masked_fill(q == 0, 0.0).sum(1).mean()
    assert abs(rounded.item() - exact.item()) > 100 * 1e-6, (rounded.item(), exact.item())
