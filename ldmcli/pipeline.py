"""Generate images with a trained diffusion model dir: unconditional, class, text or layout conditioned, with
classifier-free guidance; img2img (SDEdit); training-free inpainting; sizes beyond the training size.

Every image has its own seed: its starting noise and every noise draw of a stochastic sampler come from
its own generator, so an image does not depend on which batch it was drawn in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ldmcli.autoencoder.tiling import tiled_decode, tiled_encode
from ldmcli.diffusion import parametrization as P
from ldmcli.diffusion.degrade import back_project
from ldmcli.diffusion.first_stage import IdentityFirstStage
from ldmcli.diffusion.guidance import guided_denoiser
from ldmcli.diffusion.image_cond import from_residual, inpaint_inputs, sr_inputs
from ldmcli.diffusion.layout import Layout
from ldmcli.diffusion.model import DiffusionModel
from ldmcli.diffusion.samplers import SAMPLERS, Denoiser, alpha_bar_at, karras_timesteps, randn, spaced_timesteps
from ldmcli.diffusion.samplers.base import batch_t
from ldmcli.diffusion.tiled import tiled_denoiser, windows
from ldmcli.errors import UserError
from ldmcli.nn.compiled import FrozenCompiled
from ldmcli.precision import autocast, resolve

SPACINGS = ("leading", "trailing", "linspace")


@dataclass
class Settings:
    """sampler, steps None: the model's sampling.sampler and sampling.steps. guidance None: the model's
    preview guidance when it is conditional, else 1. height/width 0: the training size. strength: how
    much of an init image is re-noised (1 = all). tile: decode (and encode) in overlapping tiles of this
    many latent pixels when the latent is larger, and denoise so for super-resolution and inpainting models
    (0 = never). noise_level: the augmentation level a super-resolution model trained with noise levels is
    told its low-resolution input has. compile: the UNet through torch.compile with frozen weights (a
    one-off compile, then faster steps). eta: the stochastic samplers' fresh noise per step (ddim, euler_a,
    dpmpp_2m_sde; None: the sampler's own), the knob between a deterministic ODE solve and ancestral sampling.

    input_guidance: guidance on a super-resolution model's low-resolution input, for models trained with
    noise levels (None: the model's task.input_guidance). The prediction from the input as it is (at
    noise_level) is pushed away from the prediction when the model is told the input is noisy at
    guidance_level (0: the highest level it was trained on): weak + input_guidance x (clean - weak), the
    way classifier-free guidance pushes away from the null condition (here a weaker condition, as in
    autoguidance). Above 1 it draws the detail the clean input implies more boldly, where the plain model
    hedges towards blur. guidance_from: input guidance only at timesteps t >= guidance_from x T, the noisier
    part of sampling where structure is laid down (0: every step; None: the model's task.guidance_from).

    back_projection: iterations of back-projection of a super-resolution model's decoded images onto the
    low-resolution input (degrade.back_project), so that the output shrinks back to the input; 0: none.
    None: the model's task.back_projection for a clean input (noise_level 0), none for a noisy one, whose
    noise back-projection would copy into the output."""

    sampler: str | None = None
    steps: int | None = None
    spacing: str = "linspace"
    karras: bool = False
    guidance: float | None = None
    rescale: float = 0.0
    negative: str = ""
    height: int = 0
    width: int = 0
    strength: float = 1.0
    tile: int = 64
    precision: str = "auto"
    noise_level: int = 0
    compile: bool = False
    eta: float | None = None
    input_guidance: float | None = None
    guidance_level: int = 0
    back_projection: int | None = None
    guidance_from: float | None = None


def inpaint_denoiser(denoise: Denoiser, known: torch.Tensor, keep: torch.Tensor, noise: torch.Tensor,
                     alphas_cumprod: torch.Tensor, prediction: str) -> Denoiser:
    """Training-free inpainting for any sampler (the blend of the paper's DDIM sampler, moved into the
    denoiser): where `keep`, the network sees the known latent re-noised to the current level, and the
    output claims the known latent as the clean sample, so each step pulls that region back to it."""

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = alpha_bar_at(t, alphas_cumprod)
        x_in = torch.where(keep, P.add_noise(known, noise, abar), x)
        x0, eps = P.split(prediction, denoise(x_in, t).float(), x_in, abar)
        a, s = P.levels(abar, x)
        x0 = torch.where(keep, known, x0)
        eps = torch.where(keep, (x - a * known) / s, eps)
        return P.target(prediction, x0, eps, abar)

    return fn


def paste_known(images: torch.Tensor, init: torch.Tensor, mask: torch.Tensor, feather: int = 2) -> torch.Tensor:
    """Put the known pixels back after decoding (the autoencoder does not reproduce them exactly), blending
    over 2 x `feather` pixels outside the mask so no edge shows; pixels further from it stay exact."""
    soft = mask
    if feather:
        k = 2 * feather + 1
        soft = torch.maximum(mask, F.avg_pool2d(F.max_pool2d(mask, k, 1, feather), k, 1, feather, count_include_pad=False))
    return init * (1 - soft) + images * soft


def _expand(extra: dict, n: int) -> dict:
    """Image inputs made once for the batch's n images (a single init or low-resolution image)."""
    return {k: v.expand(n, *v.shape[1:]) if k == "concat" else v for k, v in extra.items()}


class Pipeline:
    """A loaded model plus checked settings; call it with one batch of conditions and seeds."""

    def __init__(self, model: DiffusionModel, settings: Settings, device: torch.device):
        self.model, self.s, self.device = model, settings, device
        fs = model.recipe.first_stage
        self.factor = model.first_stage.factor
        self.channels = fs.channels
        s = settings
        s.height, s.width = s.height or fs.size * self.factor, s.width or fs.size * self.factor
        self.multiple = self.factor * model.unet.size_multiple
        self.kind = model.recipe.conditioner.kind
        s.sampler = model.recipe.sampling.sampler if s.sampler is None else s.sampler
        s.steps = model.recipe.sampling.steps if s.steps is None else s.steps
        self._check(s)
        self.precision = resolve(s.precision, device, "--dtype")
        self._unet = FrozenCompiled(model.unet) if s.compile else model.unet
        ts = spaced_timesteps(len(model.alphas_cumprod), s.steps, s.spacing)
        self.timesteps = karras_timesteps(ts, model.alphas_cumprod) if s.karras else ts
        if s.guidance is None:
            s.guidance = model.recipe.preview.guidance if self.kind != "none" else 1.0
        self._check_input_guidance(s)
        self._check_back_projection(s)

    def _check(self, s: Settings) -> None:
        if s.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler '{s.sampler}' (choose from {', '.join(SAMPLERS)})")
        if s.spacing not in SPACINGS:
            raise UserError(f"unknown timestep spacing '{s.spacing}' (choose from {', '.join(SPACINGS)})")
        if not 1 <= s.steps <= len(self.model.alphas_cumprod):
            raise UserError(f"--steps must be between 1 and {len(self.model.alphas_cumprod)}, got {s.steps}")
        if s.eta is not None:
            if not SAMPLERS[s.sampler].takes_eta:
                with_eta = ", ".join(k for k, v in SAMPLERS.items() if v.takes_eta)
                raise UserError(f"--eta needs a stochastic sampler ({with_eta}), not {s.sampler}")
            if not 0 <= s.eta <= 1:
                raise UserError(f"--eta must be in [0, 1], got {s.eta}")
        if s.karras and not SAMPLERS[s.sampler].sigma_based:
            sigma_based = ", ".join(k for k, v in SAMPLERS.items() if v.sigma_based)
            raise UserError(f"--karras needs a sigma-based sampler ({sigma_based}), not {s.sampler}")
        for name, v in (("--height", s.height), ("--width", s.width)):
            if v <= 0 or v % self.multiple:
                raise UserError(f"{name} {v} is not a positive multiple of {self.multiple} "
                                f"(the latent factor {self.factor} x the UNet's {self.model.unet.size_multiple})")
        if self.kind == "none" and s.guidance not in (None, 1.0):
            raise UserError("--cfg needs a class- or text-conditional model; this one is unconditional")
        if s.negative and self.kind not in ("text", "clip"):
            raise UserError("--negative needs a text-conditional model")
        if not 0 < s.strength <= 1:
            raise UserError(f"--strength must be in (0, 1], got {s.strength}")
        if s.tile < 0:
            raise UserError(f"--tile must be >= 0, got {s.tile}")
        if s.tile and s.tile % self.model.unet.size_multiple:
            raise UserError(f"--tile {s.tile} is not a multiple of the UNet's {self.model.unet.size_multiple}")
        levels = self.model.recipe.unet.num_levels
        if s.noise_level and not 0 <= s.noise_level < max(levels, 1):
            raise UserError(f"--noise-level must lie in [0, {max(levels - 1, 0)}] for this model, got {s.noise_level}")

    def _check_input_guidance(self, s: Settings) -> None:
        task = self.model.recipe.task
        s.input_guidance = task.input_guidance if s.input_guidance is None else s.input_guidance
        s.guidance_from = task.guidance_from if s.guidance_from is None else s.guidance_from
        if not 0 <= s.guidance_from < 1:
            raise UserError(f"--guidance-from must be in [0, 1), got {s.guidance_from:g}")
        if s.input_guidance == 1.0:
            return
        levels = self.model.recipe.unet.num_levels
        if self.task != "sr" or not levels:
            raise UserError("--input-guidance needs a super-resolution model trained with noise levels (task.noise_levels)")
        if s.input_guidance < 0:
            raise UserError(f"--input-guidance must be >= 0, got {s.input_guidance:g}")
        if s.guidance != 1.0:
            raise UserError("--input-guidance does not combine with prompt guidance: give one of them")
        s.guidance_level = s.guidance_level or levels - 1
        if not s.noise_level < s.guidance_level < levels:
            raise UserError(f"--guidance-level must lie in [{s.noise_level + 1}, {levels - 1}] "
                            f"(above --noise-level {s.noise_level}), got {s.guidance_level}")

    def _check_back_projection(self, s: Settings) -> None:
        if s.back_projection is None:
            s.back_projection = 0 if s.noise_level else self.model.recipe.task.back_projection
        if s.back_projection < 0:
            raise UserError(f"--back-projection must be >= 0, got {s.back_projection}")
        if s.back_projection and self.task != "sr":
            raise UserError("--back-projection needs a super-resolution model")

    def conditions(self, prompts: Sequence[str], classes: Sequence[int], layouts: Sequence[Layout] = ()) -> list:
        """One entry per requested condition (None for an unconditional model); a class model given no
        class gets every class in turn; a layout model that reads captions takes every layout with every prompt."""
        if layouts and self.kind != "layout":
            raise UserError(f"--layout needs a layout-to-image model; this one is {self.kind}-conditioned")
        if self.kind == "none":
            if prompts or classes:
                raise UserError("this model is unconditional: it takes no --prompt, --prompts or --class")
            return [None]
        if self.kind == "class":
            if prompts:
                raise UserError("this model is class-conditional: use --class, not --prompt/--prompts")
            n = self.model.recipe.conditioner.num_classes
            bad = [k for k in classes if not 0 <= k < n]
            if bad:
                raise UserError(f"--class {bad[0]} is out of range: this model has classes 0..{n - 1}")
            return list(classes) or list(range(n))
        if self.kind == "layout":
            if classes or not layouts:
                raise UserError("this model is layout-conditional: give --layout FILE (and --prompt if it reads captions)")
            if prompts and not self.model.recipe.conditioner.caption:
                raise UserError("this layout model reads no caption: give --layout without --prompt/--prompts")
            return [dataclasses.replace(layout, caption=p) for layout in layouts for p in (prompts or [""])]
        if classes:
            raise UserError("this model is text-conditional: use --prompt or --prompts, not --class")
        if not prompts:
            raise UserError("this model is text-conditional: give --prompt TEXT or --prompts FILE")
        return list(prompts)

    def strength_steps(self) -> list[float]:
        """The timesteps actually run: with an init image, the last `strength` fraction (as diffusers)."""
        run = min(int(len(self.timesteps) * self.s.strength), len(self.timesteps))
        if run == 0:
            raise UserError(f"--strength {self.s.strength} with --steps {self.s.steps} leaves no step to run")
        return self.timesteps[len(self.timesteps) - run:]

    def _autocast(self):
        return autocast(self.device, self.precision)

    def _encodings(self, conds: list) -> tuple[dict, dict | None]:
        cond = self.model.cond
        if cond.key is None:
            return {}, None
        n = len(conds)
        inputs = torch.tensor(conds, dtype=torch.long, device=self.device) if cond.key == "cls" else list(conds)
        uncond = None
        if self.s.guidance != 1.0:
            uncond = cond([self.s.negative] * n) if self.s.negative else cond(cond.null(n))
        return cond(inputs), uncond

    def _net(self, x: torch.Tensor, t: torch.Tensor, **enc) -> torch.Tensor:
        with self._autocast():
            return self._unet(x, t, **enc).float()

    def _large(self, z_side: int) -> bool:
        return bool(self.s.tile) and not isinstance(self.model.first_stage, IdentityFirstStage) and z_side > self.s.tile

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled latents of images in [-1, 1] (tiled when large)."""
        fs = self.model.first_stage
        with torch.no_grad(), self._autocast():
            if self._large(max(images.shape[-2:]) // self.factor):
                z = tiled_encode(fs, images, self.s.tile * self.factor, self.s.tile // 4 * self.factor)
            else:
                z = fs.encode(images)
        return z.float() * self.model.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        fs = self.model.first_stage
        z = z / self.model.scale_factor
        with torch.no_grad(), self._autocast():
            out = tiled_decode(fs, z, self.s.tile, self.s.tile // 4) if self._large(max(z.shape[-2:])) else fs.decode(z)
        return out.float().clamp(-1, 1)

    @property
    def task(self) -> str:
        return self.model.recipe.task.kind

    def _sr_inputs(self, n: int, shape: tuple[int, ...], low: torch.Tensor, level: int) -> dict:
        """The low-resolution input on the latent canvas at an augmentation level; every level draws the
        same noise, so guidance compares the input at two levels, not two noise draws."""
        levels = torch.full((n,), level, device=self.device) if self.model.recipe.unet.num_levels else None
        return _expand(sr_inputs(low.to(self.device), shape[-2:], levels, torch.Generator().manual_seed(0)), n)

    def _image_inputs(self, n: int, shape: tuple[int, ...], init: torch.Tensor | None, mask: torch.Tensor | None,
                      low: torch.Tensor | None) -> dict:
        """The extra UNet inputs of a super-resolution or inpainting model for the whole canvas."""
        if self.task == "sr":
            if low is None:
                raise UserError("this is a super-resolution model: use ldm upscale IMAGE --model DIR")
            return self._sr_inputs(n, shape, low, self.s.noise_level)
        if self.task != "inpaint":
            return {}
        if init is None or mask is None:
            raise UserError("this is an inpainting model: give --init IMAGE and --mask MASK")
        return _expand(inpaint_inputs(init.to(self.device), mask.to(self.device).float(), self.encode), n)

    def _denoiser(self, cond: dict, uncond: dict | None, extra: dict, shape: tuple[int, ...],
                  on_tile: Callable[[], None] | None, weak: dict | None = None) -> Denoiser:
        """weak: the image inputs input guidance pushes away from (prompt guidance is then off)."""
        s = self.s
        if not extra:
            return guided_denoiser(self._net, cond, uncond, s.guidance, s.rescale)

        def crop(inputs: dict, top: int, left: int, h: int, w: int) -> dict:
            return {k: v[..., top:top + h, left:left + w] if k == "concat" else v for k, v in inputs.items()}

        from_t = s.guidance_from * len(self.model.alphas_cumprod)

        def for_window(win: tuple[int, int, int, int]) -> Denoiser:
            if weak is not None:
                return guided_denoiser(self._net, cond | crop(extra, *win), cond | crop(weak, *win), s.input_guidance, from_t=from_t)
            both = crop(extra, *win)
            return guided_denoiser(self._net, cond | both, None if uncond is None else uncond | both, s.guidance, s.rescale)

        return tiled_denoiser(for_window, shape, *self._tiling(shape[-2:]), on_tile)[0]

    def _tiling(self, latent_hw: tuple[int, int]) -> tuple[int, int, int]:
        """(tile, overlap, multiple) of the denoising windows over a latent canvas; no --tile: one window."""
        tile = self.s.tile or max(latent_hw)
        return tile, tile // 4, self.model.unet.size_multiple

    def tiles(self) -> int:
        """Tiles the UNet runs per denoising step (1 unless a super-resolution or inpainting canvas is large)."""
        hw = (self.s.height // self.factor, self.s.width // self.factor)
        return len(windows(*hw, *self._tiling(hw))) if self.task != "generate" else 1

    def __call__(self, conds: list, seeds: Sequence[int], init: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                 on_step: Callable[[int], None] | None = None, low: torch.Tensor | None = None,
                 on_tile: Callable[[], None] | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] for conditions and seeds of one batch. init: (1, 3, H, W) in
        [-1, 1]; mask: (1, 1, H, W), True where the image is to be generated (needs init); low: (1 or B, 3,
        H / scale, W / scale) for a super-resolution model. An inpainting model sees the mask and the
        masked image and its known region is pasted back after decoding; any other model inpaints by
        pulling the known region back at every step."""
        s, model = self.s, self.model
        gens = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        shape = (len(seeds), self.channels, s.height // self.factor, s.width // self.factor)
        noise = randn(torch.empty(shape, device=self.device), gens)
        cond, uncond = self._encodings(conds)
        extra = self._image_inputs(len(seeds), shape, init, mask, low)
        weak = self._sr_inputs(len(seeds), shape, low, s.guidance_level) if s.input_guidance != 1.0 else None
        denoise = self._denoiser(cond, uncond, extra, shape, on_tile, weak)
        timesteps = self.timesteps
        x = noise
        if init is not None:
            timesteps = self.strength_steps()
            known = self.encode(init.to(self.device)).expand(shape)
            x = P.add_noise(known, noise, alpha_bar_at(batch_t(timesteps[0], noise), model.alphas_cumprod))
            if mask is not None and self.task != "inpaint":
                keep = ~F.max_pool2d(mask.to(self.device).float(), self.factor).bool().expand(shape)
                denoise = inpaint_denoiser(denoise, known, keep, noise, model.alphas_cumprod, model.prediction)
        callback = None if on_step is None else (lambda i, t, xi, x0: on_step(i))
        eta = {} if s.eta is None else {"eta": s.eta}  # _check: only for samplers that take one
        z = SAMPLERS[s.sampler].fn(denoise, x, timesteps, model.alphas_cumprod, model.prediction, generator=gens, callback=callback, **eta)
        task = model.recipe.task
        if task.residual:
            z = from_residual(task, z, low.to(self.device), (s.height, s.width), self.encode).expand(shape)
        images = self.decode(z)
        if s.back_projection:
            images = back_project(images, low.to(self.device), task.scale, s.back_projection)
        if self.task == "inpaint":
            images = paste_known(images, init.to(self.device), mask.to(self.device).float())
        return images
