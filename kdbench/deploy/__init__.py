"""Using a trained student outside kdbench: inference on files (``predict``) and export to
ONNX or TorchScript (``export``)."""
