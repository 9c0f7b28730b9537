"""`latent-replay stream`: the camera demo that keeps predicting while it learns new objects."""
