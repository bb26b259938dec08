"""Training-path numerics the recipes rely on: the reference SwooshL/SwooshR (used on CPU) must
give finite gradients for large activations. A NaN there (autograd through where() of an
overflowing exp) made the synthetic recipe diverge after ~100 steps ("Too many grads were not
finite")."""
import torch

from zipformer_fast.ops.activation_linear import activation_dropout_linear_reference
from zipformer_fast.ops.swoosh import swoosh_l_reference, swoosh_r_reference


def test_swoosh_reference_gradients_are_finite_for_large_inputs():
    x = torch.tensor([-300.0, -20.0, 0.0, 3.0, 85.0, 89.0, 92.0, 95.0, 300.0], requires_grad=True)
    for fn in (swoosh_l_reference, swoosh_r_reference):
        x.grad = None
        y = fn(x)
        y.sum().backward()
        assert torch.isfinite(y).all()
        # d/dx = sigmoid(x - shift) - 0.08: -0.08 far left, 0.92 far right (tolerance 1e-6).
        assert torch.isfinite(x.grad).all()
        assert abs(x.grad[0] + 0.08) < 1e-6 and abs(x.grad[-1] - 0.92) < 1e-6
        assert abs(x.grad[-3] - 0.92) < 1e-6  # 92 - shift overflows exp in fp32
    # Overflow region: the value is x - shift - 0.08 x - offset, continuous with the exp branch.
    assert abs(swoosh_l_reference(torch.tensor([200.0])).item() - (196.0 - 16.0 - 0.035)) < 1e-3


def test_activation_dropout_linear_reference_backward_is_finite():
    x = (torch.randn(4, 8) * 60).requires_grad_(True)
    w = torch.randn(3, 8, requires_grad=True)
    out = activation_dropout_linear_reference(x, w, None, "SwooshL")
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()
