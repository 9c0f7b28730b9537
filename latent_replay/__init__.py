"""latent-replay: Latent Replay continual learning (CWR*, AR1*, AR1*-free) on MobileNetV1 with
ONNX Runtime on-device training. Layers: `models` -> `export` -> `runtime`.

`__version__` is the package's one version: setup.py reads it from this file (without importing the
package), and results.json, the manifest, learned models and `latent-replay --version` report it."""
__version__ = "0.2.0"
