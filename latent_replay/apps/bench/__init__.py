"""Latency and memory benchmark of the runtime, side by side with eager PyTorch (`latent-replay bench`)."""
