"""Engine runtimes: ONNX Runtime (the CPU default), PyTorch (the fp32 reference, and torch-cuda on a
GPU) and TensorRT; :mod:`engines.runtime.select` chooses one for the engine and both encoders."""
