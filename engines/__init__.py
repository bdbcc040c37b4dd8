"""emostream engines: pure model and runtime code.

Nothing here imports faust, kafka, redis or prometheus_client. The stream calls an engine
through :class:`engines.interface.Engine` (``predict(batch) -> outputs``) and never needs to know
which runtime (ONNX Runtime, TensorRT, PyTorch) is underneath.
"""
