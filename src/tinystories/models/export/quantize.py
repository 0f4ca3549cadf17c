"""Dynamic int8 quantization of the exported decoder: `onnx/model_quantized.onnx`, transformers.js's `q8` file.

`onnxruntime.quantization.quantize_dynamic` with the settings of transformers.js's own `q8` conversion script:
signed int8 weights (the model has no Conv, the one op ONNX Runtime Web wants uint8 weights for), per-tensor
scales, activations quantized at run time to uint8, every op type ONNX Runtime can quantize (MatMul and the
embedding Gather), `MatMulConstBOnly`. Before it, `quant_pre_process` (shape inference and ONNX Runtime's basic,
standard-op graph optimisations) folds the transpose of the tied LM head into a constant, so the LM-head MatMul
has a constant B and is quantized too: without it the largest matrix of a TinyStories model would stay fp32.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

logger = logging.getLogger(__name__)

QUANTIZATIONS = ("none", "int8")


def quantize_int8(source: str | Path, destination: str | Path) -> Path:
    """Weights of `source` (an fp32 .onnx) as int8 in `destination`; activations stay float at the graph edge."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tinystories-quant-") as tmp, _quiet_root_logger():
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(
            prepared,
            destination,
            per_channel=False,
            reduce_range=False,
            weight_type=QuantType.QInt8,
            extra_options={"EnableSubgraph": True, "MatMulConstBOnly": True},
        )
    _drop_unused_opsets(destination)
    logger.info("wrote %s (%.1f MB, int8 weights)", destination, destination.stat().st_size / 1e6)
    return destination


def quantize_generation_int8(source: str | Path, destination: str | Path) -> Path:
    """The generation graph (`decoder_graph`) with int8 MatMul weights, a scale per output column (more greedy
    tokens as fp32's than one scale per matrix, at the same speed; nothing in a browser reads this file): its
    weights are constant (in, out) initializers already, so no pre-processing; the embedding and the attention
    kernels stay fp32."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_root_logger(logging.ERROR):  # its advice to pre-process is for graphs with a transposed B
        quantize_dynamic(
            source,
            destination,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            reduce_range=False,
            weight_type=QuantType.QInt8,
            # shape inference cannot type the outputs of com.microsoft ops: they are float
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    _drop_unused_opsets(destination)
    logger.info("wrote %s (%.1f MB, int8 weights)", destination, destination.stat().st_size / 1e6)
    return destination


@contextlib.contextmanager
def _quiet_root_logger(least: int = logging.WARNING):
    """onnxruntime.quantization logs a line per tensor to the root logger at INFO: keep warnings only."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, least))
    try:
        yield
    finally:
        root.setLevel(level)


def _drop_unused_opsets(path: Path) -> None:
    """The pre-processing save declares every domain ONNX Runtime knows (training, nchwc, ...); keep the used ones."""
    model = onnx.load(str(path))
    used = {node.domain for node in model.graph.node} | {""}
    kept = [o for o in model.opset_import if o.domain in used or o.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    onnx.save_model(model, str(path))
