"""Reading the weights of an ONNX graph as float32 numpy arrays, quantised ones included.

Quantised ONNX files store weights as integers plus a ``DequantizeLinear`` node
(and often a ``Reshape``) that turns them into the float tensor a ``Conv`` or
``Gemm`` consumes. :func:`fold_constants` evaluates those weight-preparation
nodes once, in numpy, so a hand-written network can load the resulting float
tensors; :func:`dequantize_linear` implements the ONNX operator (opset 21,
per-tensor, per-axis and block-wise scales). :func:`dequantized_model` writes
the folded weights back into a plain float graph that any ONNX runtime accepts.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["FOLDABLE_OPS", "dequantize_linear", "dequantized_model", "fold_constants", "reshape_onnx"]

#: Operators :func:`fold_constants` evaluates when all their inputs are constants.
FOLDABLE_OPS: tuple[str, ...] = ("Constant", "DequantizeLinear", "Reshape")


def dequantize_linear(
    x: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None = None,
    axis: int = 1,
    block_size: int = 0,
) -> np.ndarray:
    """ONNX ``DequantizeLinear`` (opset 21): ``(x - zero_point) * scale`` as float32.

    Args:
        x: the quantised integers.
        scale: a scalar (per tensor); a 1-D array of length ``x.shape[axis]`` (per
            axis, ``block_size`` 0); or, with ``block_size > 0``, an array of
            ``x``'s rank whose ``axis`` dimension is ``ceil(x.shape[axis] / block_size)``
            and whose other dimensions equal ``x``'s: scale ``j`` along ``axis``
            applies to elements ``j * block_size`` to ``(j + 1) * block_size - 1``.
        zero_point: same shape as ``scale``; zeros when ``None``.
        axis: the quantisation axis (negative counts from the end).
        block_size: the block length along ``axis``; 0 for per-tensor or per-axis.

    Returns:
        Float32 array of ``x``'s shape.

    Raises:
        ValueError: the shapes of ``scale`` / ``zero_point`` fit none of the three layouts.
    """
    x = np.asarray(x)
    scale = np.asarray(scale)
    zero_point = np.zeros(scale.shape, dtype=np.int64) if zero_point is None else np.asarray(zero_point)
    if zero_point.shape != scale.shape:
        raise ValueError(f"zero_point shape {list(zero_point.shape)} differs from scale shape {list(scale.shape)}")
    axis = axis + x.ndim if axis < 0 else axis
    if scale.size == 1 and block_size == 0:
        pass  # per tensor: broadcasts as is
    elif block_size == 0:
        if scale.ndim != 1 or not 0 <= axis < x.ndim or len(scale) != x.shape[axis]:
            raise ValueError(
                f"per-axis scale must have length x.shape[{axis}], got scale {list(scale.shape)} for x {list(x.shape)}"
            )
        shape = [1] * x.ndim
        shape[axis] = len(scale)
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    else:
        expected = list(x.shape)
        if 0 <= axis < x.ndim:
            expected[axis] = math.ceil(x.shape[axis] / block_size)
        if not 0 <= axis < x.ndim or list(scale.shape) != expected:
            raise ValueError(
                f"block-wise scale for x {list(x.shape)}, axis {axis}, block_size {block_size} must have "
                f"shape {expected}, got {list(scale.shape)}"
            )
        scale = np.repeat(scale, block_size, axis=axis).take(range(x.shape[axis]), axis=axis)
        zero_point = np.repeat(zero_point, block_size, axis=axis).take(range(x.shape[axis]), axis=axis)
    # (int - int) is exact in float64 and the product rounds once to float32, as in float32 arithmetic.
    out = (x.astype(np.float64) - zero_point.astype(np.float64)) * scale.astype(np.float64)
    return out.astype(np.float32)


def reshape_onnx(x: np.ndarray, shape: np.ndarray, allowzero: int = 0) -> np.ndarray:
    """ONNX ``Reshape``: a 0 in ``shape`` copies the input's dimension (unless ``allowzero``), -1 is inferred."""
    dims = [int(d) for d in np.asarray(shape).ravel()]
    if not allowzero:
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return np.reshape(x, dims)


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _evaluate(node: onnx.NodeProto, inputs: list[np.ndarray | None]) -> np.ndarray:
    attrs = _attributes(node)
    if node.op_type == "Constant":
        if "value" not in attrs:
            raise ValueError(f"Constant node {node.name or node.output[0]!r} has no 'value' attribute")
        return numpy_helper.to_array(attrs["value"])
    if node.op_type == "DequantizeLinear":
        if "output_dtype" in attrs and attrs["output_dtype"] not in (0, onnx.TensorProto.FLOAT):
            raise ValueError(f"DequantizeLinear {node.output[0]!r}: only float32 output is supported")
        zero_point = inputs[2] if len(inputs) > 2 else None
        return dequantize_linear(inputs[0], inputs[1], zero_point, attrs.get("axis", 1), attrs.get("block_size", 0))
    if node.op_type == "Reshape":
        return reshape_onnx(inputs[0], inputs[1], attrs.get("allowzero", 0))
    raise ValueError(f"cannot fold {node.op_type}")


def fold_constants(graph: onnx.GraphProto) -> tuple[dict[str, np.ndarray], list[onnx.NodeProto]]:
    """Evaluates the weight-preparation nodes of ``graph``.

    Every node of :data:`FOLDABLE_OPS` whose inputs are all initialisers or
    outputs of nodes already folded is evaluated in numpy.

    Returns:
        ``(values, compute)``: tensor name -> numpy array for every initialiser and
        folded output, and the remaining nodes (those that depend on the graph's
        inputs), in graph order.
    """
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    compute = []
    for node in graph.node:
        present = [name for name in node.input if name]
        if node.op_type in FOLDABLE_OPS and all(name in values for name in present):
            inputs = [values[name] if name else None for name in node.input]
            values[node.output[0]] = _evaluate(node, inputs)
        else:
            compute.append(node)
    return values, compute


def dequantized_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float copy of ``model``: folded weights as initialisers, weights left out of the graph's inputs.

    The copy keeps only the nodes that depend on the graph's inputs; the tensors
    they read are stored as float initialisers (see :func:`fold_constants`), and
    the graph's inputs are reduced to the ones those nodes read that are not
    initialisers. Opset and IR version are kept.
    """
    values, compute = fold_constants(model.graph)
    used = {name for node in compute for name in node.input if name}
    graph = onnx.helper.make_graph(
        nodes=list(compute),
        name=model.graph.name or "dequantized",
        inputs=[i for i in model.graph.input if i.name in used and i.name not in values],
        outputs=list(model.graph.output),
        initializer=[numpy_helper.from_array(np.asarray(values[name]), name) for name in sorted(used & set(values))],
    )
    out = onnx.helper.make_model(graph, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    return out
