"""`latent-replay run`: continual-learning experiments on CORe50 NICv2 or the synthetic stream."""
