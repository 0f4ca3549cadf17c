"""ONNX export: the decoder graph with past key values (`graph`), int8 quantization (`quantize`), the
transformers.js folder layout (`layout`) and a small ONNX Runtime generation loop (`session`).

The exporter is PyTorch's own, `torch.onnx.export(dynamo=True)` (torch.export + onnxscript), on a thin wrapper
that gives the graph optimum's input/output names. Considered and not used: optimum-onnx (its latest release,
0.1.0, requires transformers < 4.58 and optimum ~= 2.1, so it cannot be installed next to transformers 5.23), and
`transformers.exporters.OnnxExporter` (new in transformers 5): it writes a prefill and a decode graph with batch
size fixed to 1, no `attention_mask` input, cache names `past_key_values.layers.{i}.keys` and a `.onnx.data`
weights file, none of which transformers.js or an optimum-style ONNX Runtime loop reads.
"""
