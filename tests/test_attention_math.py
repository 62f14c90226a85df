"""The CPU math path of attention against torch's SDPA: same values and gradients in fp32, and bf16
autocast no further from a float64 reference than SDPA's own bf16 kernel."""

import torch
import torch.nn.functional as F

from ldmcli.nn import functional


def test_math_attention_matches_sdpa_values_and_gradients():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 40, 16, requires_grad=True) for _ in range(3))
    ctx = torch.randn(2, 3, 7, 16)
    out = functional.attention(q, k, v)
    ref = F.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(out, ref, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(grads, ref_grads))
    cross = functional.attention(q, ctx, ctx)
    assert cross.shape == q.shape and torch.allclose(cross, F.scaled_dot_product_attention(q, ctx, ctx), atol=1e-5)


def test_bf16_math_attention_is_as_close_to_float64_as_sdpa():
    torch.manual_seed(1)
    q, k, v = (torch.randn(4, 4, 64, 32) for _ in range(3))
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, sdpa = functional.attention(q, k, v), F.scaled_dot_product_attention(q, k, v)
    assert ours.dtype == torch.bfloat16
    assert (ours.double() - exact).abs().max() <= 2 * (sdpa.double() - exact).abs().max()


def test_long_sequences_take_sdpa(monkeypatch):
    calls = []
    monkeypatch.setattr(functional.F, "scaled_dot_product_attention", lambda *a: calls.append(a) or a[0])
    q = torch.zeros(1, 1, 2048, 8)
    functional.attention(q, q, q)
    assert len(calls) == 1
    functional.attention(q[:, :, :64], q[:, :, :64], q[:, :, :64])
    assert len(calls) == 1
