"""`latent-replay sweep` and `latent-replay report`: grids of runs and their summary."""
