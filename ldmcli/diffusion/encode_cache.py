"""Latents of images met before, for training on images through a frozen autoencoder (--ae): the
super-resolution and inpainting tasks need the images themselves, since their extra inputs are made from
each training picture, and then the encoder costs as much as the UNet's step. A frozen encoder gives the
same latent (the posterior mean) for the same pixels, and a run on a small data set meets every picture,
flipped or not, again each epoch, so the cache encodes each distinct image once."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch


class EncodeCache:
    """encode(images) with the latents of images already seen looked up by a hash of their pixels and
    kept in CPU memory up to max_bytes; once full, new images are encoded and not kept."""

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], max_bytes: int) -> None:
        self.encode, self.max_bytes = encode, max_bytes
        self.store: dict[bytes, torch.Tensor] = {}
        self.bytes = self.hits = self.misses = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.detach().cpu().contiguous()
        keys = [_key(p) for p in pixels]
        first: dict[bytes, int] = {}  # an image twice in a batch is encoded once
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        missing = [i for k, i in first.items() if k not in self.store]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh = {}
        if missing:
            z = self.encode(images[missing]).float()
            fresh = dict(zip((keys[i] for i in missing), z.cpu()))
            for key, latent in fresh.items():
                size = latent.numel() * latent.element_size()
                if self.bytes + size <= self.max_bytes:
                    self.store[key] = latent.clone()  # not a view that would keep the whole batch alive
                    self.bytes += size
        return torch.stack([fresh[k] if k in fresh else self.store[k] for k in keys]).to(images.device)

    def take_hit_rate(self) -> float:
        """Share of the images since the last call whose latent came from the cache."""
        rate = self.hits / max(1, self.hits + self.misses)
        self.hits = self.misses = 0
        return rate


def _key(image: torch.Tensor) -> bytes:
    h = hashlib.blake2b(str((image.dtype, tuple(image.shape))).encode(), digest_size=16)
    h.update(image.numpy().tobytes())
    return h.digest()
