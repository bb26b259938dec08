"""FeedforwardModule (icefall): in_proj -> Balancer -> SwooshL -> shared-over-time dropout -> out_proj
(ActivationDropoutAndLinear, init scale 0.1) -> Whiten."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.activation_linear import linear_swoosh
from ..ops.residual_linear import residual_linear
from .grad_shapers import Balancer, Whiten, whitening_schedule
from .linear import ActivationDropoutAndLinear
from .scheduled_float import FloatLike


class FeedforwardModule(nn.Module):
    def __init__(self, embed_dim: int, feedforward_dim: int, dropout: FloatLike):
        super().__init__()
        self.in_proj = nn.Linear(embed_dim, feedforward_dim)
        self.hidden_balancer = Balancer(feedforward_dim, channel_dim=-1, min_positive=0.3, max_positive=1.0,
                                        min_abs=0.75, max_abs=5.0)
        # dropout_shared_dim=0: with (T,B,F) input the mask is (1,B,F), shared over time.
        self.out_proj = ActivationDropoutAndLinear(feedforward_dim, embed_dim, activation="SwooshL",
                                                   dropout_p=dropout, dropout_shared_dim=0, bias=True,
                                                   initial_scale=0.1)
        self.out_whiten = Whiten(num_groups=1, whitening_limit=whitening_schedule(7.5), prob=(0.025, 0.25),
                                 grad_scale=0.01)

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        """ff(x), or residual + ff(x) when a residual is given."""
        if not self.training and not torch.is_grad_enabled():
            # Inference: Balancer/Whiten are identities without autograd and dropout is off, so
            # in_proj + SwooshL fuse into one GEMM epilogue (linear_swoosh) and out_proj takes the
            # residual add into its own (residual_linear). (In training the activation stays
            # fused into out_proj, which stores less.)
            h = linear_swoosh(x, self.in_proj.weight, self.in_proj.bias, "SwooshL")
            if residual is not None:
                return residual_linear(residual, h, self.out_proj.weight, self.out_proj.bias)
            return F.linear(h, self.out_proj.weight, self.out_proj.bias)
        y = self.out_whiten(self.out_proj(self.hidden_balancer(self.in_proj(x))))
        return y if residual is None else residual + y
