"""Device side: sources, front, replay pool, back trainer, learners, state."""
