"""Deployment exports of trained networks (ONNX)."""
