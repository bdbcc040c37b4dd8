"""emostream engines: pure model and runtime code.

Nothing here imports faust, kafka, redis or prometheus_client. The stream calls an engine
through :class:`engines.interface.Engine` (``predict(batch) -> outputs``) and never needs to know
which runtime (ONNX Runtime, TensorRT, PyTorch) is underneath.
"""

import sys

# OpenVINO's Python package sends usage telemetry to Google Analytics on `import openvino` (a
# process forked from a thread for each event; a worker killed meanwhile left it behind, orphaned
# and stuck), unless a consent file in ~/intel says no or CI=true. A call center's service sends
# nothing out: with openvino_telemetry not importable, OpenVINO's converter takes its own no-op stub.
sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
