"""ldmcli: train and run Latent Diffusion Models end to end."""
__version__ = "0.1.0"
