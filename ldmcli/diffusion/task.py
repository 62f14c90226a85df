"""The diffusion model as a TrainTask for the one loop: latents (cached or encoded on the fly) in,
noise-prediction loss out, condition dropout for classifier-free guidance, fixed-seed preview grids."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ldmcli.diffusion import model as M
from ldmcli.diffusion.config import DiffusionRecipe
from ldmcli.diffusion.encode_cache import EncodeCache
from ldmcli.diffusion.guidance import guided_denoiser
from ldmcli.diffusion.image_cond import from_residual, training_inputs
from ldmcli.diffusion.objective import diffusion_loss
from ldmcli.diffusion.samplers import sample_ddim, spaced_timesteps
from ldmcli.diffusion.schedule import alphas_cumprod
from ldmcli.errors import UserError
from ldmcli.train.task import Phase, TrainTask


class DiffusionTask(TrainTask):
    """`recipe` must be resolved (model.resolve). With `encode_images` the batches' images go through
    the first stage each step; otherwise batches carry cached latents (or pixels, for LDM-1)."""

    def __init__(self, recipe: DiffusionRecipe, first_stage: nn.Module, encode_images: bool):
        self.recipe = recipe
        self.first_stage = first_stage
        self.cached_latents = bool(recipe.first_stage.autoencoder) and not encode_images
        unet, cond = M.build(recipe)
        # a frozen conditioner (OpenCLIP) stays out of `models`, so checkpoints do not copy it each time
        self.models = {"unet": unet, "cond": cond} if M.trained_with_unet(recipe) else {"unet": unet}
        self.cond = cond
        self.abar = alphas_cumprod(recipe.schedule)
        key = cond.key
        n = recipe.conditioner.num_classes
        if key == "cls" and any(not 0 <= c < n for c in recipe.preview.classes):
            raise UserError(f"preview.classes must lie in [0, {n}), got {recipe.preview.classes}")
        if not 0 <= recipe.conditioner.drop_prob <= 1:
            raise UserError(f"conditioner.drop_prob must lie in [0, 1], got {recipe.conditioner.drop_prob}")
        self.required_keys = ("latent" if self.cached_latents else "image",) + ((key,) if key else ())
        fs = recipe.first_stage
        self.latent_shape = (fs.channels, fs.size, fs.size) if self.cached_latents else None
        if fs.cache_mb < 0:
            raise UserError(f"first_stage.cache_mb must be >= 0, got {fs.cache_mb}")
        self.encode_cache = EncodeCache(self._encode, fs.cache_mb << 20) if fs.cache_mb and encode_images and fs.autoencoder else None

    def phases(self) -> tuple[Phase, ...]:
        return (Phase("main", tuple(self.models)),)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        self.first_stage.to(images.device)
        with torch.no_grad():
            return self.first_stage.encode(images).float() * self.recipe.first_stage.scale_factor

    def _latents(self, batch: dict, gen: torch.Generator | None = None, level: int | None = None) -> tuple[torch.Tensor, dict, torch.Tensor | None]:
        """Scaled latents, the image-conditioned task's extra UNet inputs, and its conditioning image."""
        if self.cached_latents:
            return batch["latent"].float() * self.recipe.first_stage.scale_factor, {}, None
        task, cached = self.recipe.task, self.encode_cache or self._encode
        # a blind degradation or a random mask makes a new input image every time: not worth keeping
        derived_repeats = task.kind == "sr" and task.degradation == "bicubic"
        return training_inputs(task, batch["image"], cached, gen, level, cached if derived_repeats else self._encode)

    def _inputs(self, batch: dict):
        """The batch's condition with dropout, and how many class labels lay outside [0, num_classes)
        (those train as unconditional, the null class, as a classifier ignores them) or layout boxes could
        not be read (those are left out of their layout): neither ends a run."""
        key = self.cond.key
        if key is None:
            return None, 0
        inputs, bad = batch[key], 0
        if key == "cls":
            outside = (inputs < 0) | (inputs >= self.recipe.conditioner.num_classes)
            inputs, bad = self.cond.drop(inputs, outside), int(outside.sum())
        if key == "json":
            if "image" in batch and (self.recipe.data.flip or self.recipe.data.rotate):
                raise UserError("a layout model needs data.flip = false and data.rotate = false when it trains on images: "
                                "a flipped or turned image no longer matches its boxes")
            size = self.recipe.first_stage.size * self.first_stage.factor
            inputs, bad = self.cond.from_batch(inputs, batch["txt"], size, train=True)
        p = self.recipe.conditioner.drop_prob
        if p > 0:
            dropped = torch.rand(len(inputs)) < p
            inputs = self.cond.drop(inputs, dropped)
        return inputs, bad

    def loss(self, phase, models, batch, step):
        x0, extra, _ = self._latents(batch)
        cond = models.get("cond", self.cond)
        self.cond.to(x0.device)
        inputs, bad_labels = self._inputs(batch)
        enc = (cond(inputs) if inputs is not None else {}) | extra
        unet = models["unet"]
        loss, logs = diffusion_loss(lambda x, t: unet(x, t, **enc), x0, self.abar, self.recipe.schedule.prediction, self.recipe.objective)
        counted = {"cls": "bad_labels", "json": "bad_boxes"}.get(self.cond.key)
        logs |= {counted: float(bad_labels)} if counted else {}
        if self.encode_cache is not None:
            logs["encode_cache_hits"] = self.encode_cache.take_hit_rate()
        return loss, logs

    def _preview_inputs(self, batch: dict, n: int):
        pv, key = self.recipe.preview, self.cond.key
        if key == "cls":
            classes = pv.classes or list(range(self.recipe.conditioner.num_classes))
            return torch.tensor([classes[i % len(classes)] for i in range(n)], dtype=torch.long)
        if key == "txt":
            prompts = pv.prompts or list(batch["txt"])
            return [prompts[i % len(prompts)] for i in range(n)]
        if key == "json":  # the first batch's layouts (and captions): the loop keeps that batch for every preview
            layouts, _ = self.cond.from_batch(batch["json"], batch["txt"], self.recipe.first_stage.size * self.first_stage.factor)
            return [layouts[i % len(layouts)] for i in range(n)]
        return None

    def preview(self, models, batch, step):
        """Samples from fixed noise; for sr and inpaint, rows of conditioning image, sample and original."""
        pv, fs = self.recipe.preview, self.recipe.first_stage
        unet, cond = models["unet"], models.get("cond", self.cond)
        device = next(unet.parameters()).device
        self.cond.to(device)
        gen = torch.Generator().manual_seed(pv.seed)
        n, extra, shown = pv.n, {}, None
        if self.recipe.task.kind != "generate":
            n = min(pv.n, len(batch["image"]), 8)
            _, extra, shown = self._latents({"image": batch["image"][:n].to(device)}, gen, level=0)
        inputs = self._preview_inputs(batch, n)
        if isinstance(inputs, torch.Tensor):
            inputs = inputs.to(device)
        enc = (cond(inputs) if inputs is not None else {}) | extra
        uncond = cond(self.cond.null(n)) | extra if inputs is not None else None
        noise = torch.randn(n, fs.channels, fs.size, fs.size, generator=gen).to(device)
        steps = spaced_timesteps(len(self.abar), pv.steps, "linspace")
        denoise = guided_denoiser(unet, enc, uncond, pv.guidance)
        z = sample_ddim(denoise, noise, steps, self.abar, self.recipe.schedule.prediction)
        self.first_stage.to(device)
        task = self.recipe.task
        if task.residual:
            z = from_residual(task, z, shown, tuple(batch["image"].shape[-2:]), self._encode)
        images = self.first_stage.decode(z / fs.scale_factor).float().clamp(-1, 1)
        if shown is None:
            return images
        self.preview_nrow = n
        original = batch["image"][:n].to(device).float()
        return torch.cat([F.interpolate(shown.float(), size=original.shape[-2:], mode="nearest"), images, original])

    def export(self, out_dir: Path, models, ema) -> None:
        M.save(out_dir, self.recipe, models["unet"], self.cond, ema)
