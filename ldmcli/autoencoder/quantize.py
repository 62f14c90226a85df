"""Vector quantisation with a straight-through estimator (van den Oord et al. 2017; taming/LDM VQ).

Nearest codes are searched in fp32 even under bf16 autocast: a bf16 argmin picks wrong codes. The
codebook is either learned by the optimiser (the paper) or an EMA of its assigned vectors; codes that
fall out of use are restarted on encoder outputs so the codebook does not collapse to a few entries.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class VectorQuantizer(nn.Module):
    def __init__(self, n_embed: int, dim: int, beta: float = 0.25, mode: str = "learned", decay: float = 0.99, restart: bool = True, dead_usage: float = 0.03):
        super().__init__()
        self.n_embed, self.dim, self.beta, self.mode, self.decay = n_embed, dim, beta, mode, decay
        self.restart, self.dead_usage = restart, dead_usage
        self.embedding = nn.Embedding(n_embed, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)
        if mode == "ema":
            self.embedding.weight.requires_grad_(False)
            self.register_buffer("cluster_size", torch.zeros(n_embed))
            self.register_buffer("embed_sum", self.embedding.weight.detach().clone())
        # Running share of each code in the assignments, relative to uniform use (1.0 = fair share).
        self.register_buffer("usage", torch.ones(n_embed))

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each position: (B, D, H, W) -> (B, H, W)."""
        flat = z.detach().float().permute(0, 2, 3, 1).reshape(-1, self.dim)
        e = self.embedding.weight.detach().float()
        dist2 = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1)[None]
        return dist2.argmin(1).reshape(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        return self.embedding.weight.float()[idx].permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(straight-through quantised z, codebook + commitment loss, {perplexity, codes_used})."""
        z = z.float()
        with torch.autocast(z.device.type, enabled=False):
            idx = self.codes(z)
            onehot_counts = torch.bincount(idx.flatten(), minlength=self.n_embed).float()
            if self.training and torch.is_grad_enabled():
                self._update(z, idx, onehot_counts)
            zq = self.lookup(idx)
            commitment = F.mse_loss(z, zq.detach())
            loss = self.beta * commitment
            if self.mode == "learned":
                loss = loss + F.mse_loss(zq, z.detach())
            probs = onehot_counts / onehot_counts.sum()
            perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        stats = {"perplexity": perplexity.detach(), "codes_used": (onehot_counts > 0).sum().float()}
        return z + (zq - z).detach(), loss, stats

    @torch.no_grad()
    def _update(self, z: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor) -> None:
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.dim)
        sums = torch.zeros(self.n_embed, self.dim, device=z.device).index_add_(0, idx.flatten(), flat)
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.usage.lerp_(counts * self.n_embed / counts.sum().clamp(min=1), 1 - self.decay)
        if self.mode == "ema":
            self.cluster_size.lerp_(counts, 1 - self.decay)
            self.embed_sum.lerp_(sums, 1 - self.decay)
            n = self.cluster_size.sum()
            size = (self.cluster_size + 1e-5) / (n + self.n_embed * 1e-5) * n  # Laplace smoothing
            self.embedding.weight.copy_(self.embed_sum / size[:, None])
        if self.restart:
            self._restart(flat)

    def _restart(self, flat: torch.Tensor) -> None:
        """Move codes used less than `dead_usage` of their fair share onto random encoder outputs."""
        dead = (self.usage < self.dead_usage).nonzero().flatten()
        if dead.numel() == 0:
            return
        pick = torch.randint(0, flat.shape[0], (dead.numel(),), device=flat.device)
        fresh = flat[pick] + 0.01 * flat.std() * torch.randn(dead.numel(), self.dim, device=flat.device)
        if _distributed():
            dist.broadcast(fresh, src=0)
        self.embedding.weight[dead] = fresh.to(self.embedding.weight.dtype)
        self.usage[dead] = 1.0
        if self.mode == "ema":
            self.cluster_size[dead] = 1.0
            self.embed_sum[dead] = fresh
