"""PyTorch engine models (training and export only; the service runs the exported graph)."""
