"""`ldm train-ae` as a TrainTask: the autoencoder phase, then the discriminator phase on the same batch."""

from __future__ import annotations

from pathlib import Path

import torch

from ldmcli.autoencoder.config import KIND, AutoencoderRecipe
from ldmcli.autoencoder.discriminator import PatchDiscriminator
from ldmcli.autoencoder.losses import AutoencoderLoss, LogVar
from ldmcli.autoencoder.model import Autoencoder
from ldmcli.modeldir import save_model_dir
from ldmcli.train.task import Phase, TrainTask


class AutoencoderTask(TrainTask):
    """Models: `autoencoder`, `logvar` (the nll's learned scale) and, when a GAN or feature matching is
    asked for, `discriminator`. LPIPS loads here, so a missing backbone file fails before training."""

    def __init__(self, recipe: AutoencoderRecipe):
        self.recipe = recipe
        self.criterion = AutoencoderLoss(recipe.loss, recipe.model.bottleneck)
        self.models = {"autoencoder": Autoencoder(recipe.model), "logvar": LogVar(0.0, recipe.loss.learn_logvar)}
        if self.criterion.uses_discriminator:
            self.models["discriminator"] = PatchDiscriminator(recipe.model.in_channels, recipe.loss.disc_channels, recipe.loss.disc_layers)
        self._x: torch.Tensor | None = None
        self._recon: torch.Tensor | None = None

    def phases(self) -> tuple[Phase, ...]:
        phases = (Phase("autoencoder", ("autoencoder", "logvar")),)
        if "discriminator" in self.models:
            phases += (Phase("discriminator", ("discriminator",), lr=self.recipe.loss.disc_lr),)
        return phases

    def ema_modules(self) -> tuple[str, ...]:
        return ("autoencoder",)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """An independent random `train_crop` square from each image (the loop seeds the RNG per rank)."""
        c = self.recipe.train_crop
        h, w = x.shape[-2:]
        if not c or (c >= h and c >= w):
            return x
        tops = torch.randint(0, h - c + 1, (x.shape[0],)).tolist()
        lefts = torch.randint(0, w - c + 1, (x.shape[0],)).tolist()
        return torch.stack([img[:, t : t + c, l : l + c] for img, t, l in zip(x, tops, lefts)])

    def loss(self, phase, models, batch, step):
        if phase == "autoencoder":
            x = self._x = self.crop(batch["image"])
            recon, aux = models["autoencoder"](x)
            self._recon = recon.detach()
            logvar = models["logvar"].value
            disc = models.get("discriminator")
            return self.criterion.generator(x, recon, aux, logvar, disc, self.models["autoencoder"].last_layer(), step)
        if not self.criterion.disc_trains(step):
            return torch.zeros((), device=self._x.device, requires_grad=True), {}
        return self.criterion.discriminator(models["discriminator"], self._x, self._recon)

    def preview(self, models, batch, step):
        """Rows of originals over their reconstructions (posterior mean / quantised)."""
        x = batch["image"][: self.recipe.preview_images]
        recon, _ = models["autoencoder"](x, sample=False)
        return torch.cat([x, recon.float().clamp(-1, 1)])

    def export(self, out_dir: Path, models, ema) -> None:
        save_model_dir(out_dir, KIND, self.recipe.model, models["autoencoder"], ema.get("autoencoder"))
