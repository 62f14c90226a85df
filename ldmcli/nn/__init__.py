"""Blocks shared by the autoencoder and the UNet."""
