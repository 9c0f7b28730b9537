"""latent-replay: Latent Replay continual learning (CWR*, AR1*, AR1*-free) on MobileNetV1 with
ONNX Runtime on-device training. Layers: `models` -> `export` -> `runtime`."""
__version__ = "0.1.0"
