"""Skip marker for tests that need the ``export`` extra (onnx, onnxscript, onnxruntime)."""
import importlib.util

import pytest

HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="onnx / onnxscript / onnxruntime not installed (pip install 'segblocks[export]')")
