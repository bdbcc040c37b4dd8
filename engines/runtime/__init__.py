"""Engine runtimes: ONNX Runtime (the service default) and PyTorch (reference, tests)."""
