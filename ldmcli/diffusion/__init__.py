"""The diffusion stage: noise schedules, parametrisations, the UNet, conditioners, objective, samplers."""
