"""Workstation side: split the network and write ONNX artifacts (see `exporter`)."""
