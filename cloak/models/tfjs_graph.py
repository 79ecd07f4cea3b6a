"""Running a TensorFlow.js graph model (``model.json`` and its ``.bin`` weights) in torch.

A TensorFlow.js *graph model* is a JSON file whose ``modelTopology`` holds a
TensorFlow ``GraphDef`` written as JSON (nodes with a name, an ``op``, inputs
and attributes; constants carry only their dtype and shape) and whose
``weightsManifest`` lists the binary shards (``.bin``) that hold every
constant's values, back to back, in the order the manifest names them. A weight
may be quantised: ``uint8``/``uint16`` with an affine ``scale`` and ``min``
(``value = q * scale + min``), or stored as ``float16``.

:func:`read_tfjs_graph` decodes all that into :class:`OpNode` lists and numpy
constants; :func:`load_tfjs_graph` builds a :class:`GraphInterpreter` that runs
the graph with torch operations, keeping TensorFlow's semantics: activations
are logically ``NHWC`` (a convolution sees a permuted view, which torch stores
channels-last, so no copy is made), filters ``HWIO``, depthwise filters
``[H, W, C, multiplier]``, ``SAME`` padding with the odd pixel after.
Operators (see :data:`TFJS_OPS`): the element-wise arithmetic, activations,
convolutions (plain, depthwise, and TensorFlow.js's fused forms with a bias and
an activation), ``MatMul``, ``Pad``, ``Reshape``, ``Squeeze``, ``ConcatV2``,
``Mean`` and ``Sum``. Another operator is refused with its name.
"""

from __future__ import annotations

import base64
import json
import math
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cloak.models.graph_interpreter import (
    GraphError,
    GraphInterpreter,
    OpFunction,
    OpNode,
    UnsupportedOpError,
    Value,
    binary,
    conv2d,
    maximum,
    minimum,
    same_padding,
    static_ints,
    unary,
)
from cloak.models.sface import prelu
from cloak.models.tfjs_fuse import fold_pads, fuse_prelu

__all__ = ["TFJS_OPS", "TFJSGraph", "load_tfjs_graph", "read_tfjs_graph", "read_tfjs_weights"]

#: How each stored dtype of the weights manifest reads from the shard bytes (little-endian).
_STORED: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "int32": np.dtype("<i4"),
    "bool": np.dtype("u1"),
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
    "float16": np.dtype("<f2"),
}
#: The dtypes a weight may have once dequantised.
_LOGICAL: dict[str, np.dtype] = {"float32": np.dtype(np.float32), "int32": np.dtype(np.int32), "bool": np.dtype(bool)}
_FMT = "TensorFlow.js"


@dataclass
class TFJSGraph:
    """A TensorFlow.js graph model as read from disk.

    Attributes:
        nodes: the operator nodes (``Const`` and ``Placeholder`` nodes left out).
        constants: every ``Const`` node's value, by node name.
        inputs: the ``Placeholder`` names, signature order first.
        outputs: the output names of the signature (``:0`` dropped), else empty.
        input_shapes: placeholder name -> declared shape (``-1``: any size).
    """

    nodes: list[OpNode]
    constants: dict[str, np.ndarray]
    inputs: list[str]
    outputs: list[str]
    input_shapes: dict[str, list[int]]


def _weight(data: bytes, offset: int, spec: dict[str, Any], source: str) -> tuple[np.ndarray, int]:
    """One weight of a manifest group from the group's bytes at ``offset``, and the offset after it."""
    name, shape, dtype = spec["name"], [int(d) for d in spec.get("shape", [])], spec.get("dtype", "float32")
    quant = spec.get("quantization")
    stored = quant["dtype"] if quant else dtype
    if stored not in _STORED or dtype not in _LOGICAL:
        raise GraphError(f"weight {name!r} in {source}: dtype {stored!r} ({dtype!r}) is not supported")
    count = math.prod(shape)
    end = offset + count * _STORED[stored].itemsize
    if end > len(data):
        raise GraphError(
            f"{source} ends at byte {len(data)}, before weight {name!r} (needs {end}): a shard is truncated"
        )
    raw = np.frombuffer(data, _STORED[stored], count, offset)
    if quant and stored != "float16":
        value = raw.astype(np.float64) * float(quant["scale"]) + float(quant["min"])
        value = np.rint(value) if dtype == "int32" else value
    else:
        value = raw
    return np.asarray(value).astype(_LOGICAL[dtype]).reshape(shape), end


def read_tfjs_weights(manifest: list[dict[str, Any]], folder: Path) -> dict[str, np.ndarray]:
    """The weights a ``weightsManifest`` names, read from its shards in ``folder``.

    Raises:
        GraphError: a shard is missing, shorter or longer than its weights, or a weight has
            a dtype or quantisation this reader does not support (strings, ``int8``).
    """
    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        paths = [folder / p for p in group.get("paths", [])]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise GraphError(f"the weights manifest names shard(s) that are not there: {missing}")
        data = b"".join(p.read_bytes() for p in paths)
        source = "+".join(p.name for p in paths)
        offset = 0
        for spec in group.get("weights", []):
            weights[spec["name"]], offset = _weight(data, offset, spec, source)
        if offset != len(data):
            raise GraphError(f"{source} holds {len(data)} bytes, its manifest names {offset}: not these weights")
    return weights


def _attr_value(raw: dict[str, Any]) -> Any:
    """An ``AttrValue`` in TensorFlow's JSON form as a Python value (lists of ints, strings...)."""
    if "s" in raw:
        return base64.b64decode(raw["s"]).decode()
    if "i" in raw:
        return int(raw["i"])
    if "f" in raw:
        return float(raw["f"])
    if "b" in raw:
        return bool(raw["b"])
    if "type" in raw:
        return raw["type"]
    if "list" in raw:
        items = raw["list"]
        if "s" in items:
            return [base64.b64decode(s).decode() for s in items["s"]]
        if "f" in items:
            return [float(f) for f in items["f"]]
        return [int(i) for i in items.get("i", [])]
    return raw  # shapes, tensors: kept as they are


def _tensor_name(name: str) -> str:
    """``node:0`` and ``node`` name output 0 of ``node``; ``node:k`` keeps its index."""
    base, _, index = name.rpartition(":")
    return base if base and index == "0" else name


def _shape(raw: dict[str, Any]) -> list[int]:
    return [int(d.get("size", -1)) for d in raw.get("dim", [])]


def read_tfjs_graph(path: str | Path) -> TFJSGraph:
    """Reads a TensorFlow.js graph model: ``model.json`` and the weight shards beside it.

    Raises:
        GraphError: the JSON is not a graph model (a layers model, say), or a constant
            has no weights.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GraphError(f"{path} is not a TensorFlow.js model.json: {err}") from err
    topology = doc.get("modelTopology") if isinstance(doc, dict) else None
    if not isinstance(topology, dict) or "node" not in topology:
        kind = doc.get("format", "unknown") if isinstance(doc, dict) else "unknown"
        raise GraphError(
            f"{path} is not a TensorFlow.js graph model (format {kind!r}; layers models are not supported)"
        )
    weights = read_tfjs_weights(doc.get("weightsManifest", []), path.parent)
    nodes, constants, placeholders, shapes = [], {}, [], {}
    for raw in topology["node"]:
        name, op = raw["name"], raw["op"]
        attrs = {k: _attr_value(v) for k, v in raw.get("attr", {}).items()}
        if op == "Const":
            if name not in weights:
                raise GraphError(f"{path}: constant {name!r} has no values in the weights manifest")
            constants[name] = weights[name]
        elif op == "Placeholder":
            placeholders.append(name)
            shapes[name] = (
                _shape(attrs.get("shape", {}).get("shape", {})) if isinstance(attrs.get("shape"), dict) else []
            )
        else:
            inputs = tuple(_tensor_name(i) for i in raw.get("input", []) if not i.startswith("^"))
            nodes.append(OpNode(name, op, inputs, (name,), attrs))
    signature = doc.get("signature", {})
    named = [_tensor_name(v.get("name", k)) for k, v in signature.get("inputs", {}).items()]
    inputs = [n for n in named if n in placeholders] + [n for n in placeholders if n not in named]
    outputs = [_tensor_name(v.get("name", k)) for k, v in signature.get("outputs", {}).items()]
    return TFJSGraph(nodes, constants, inputs, outputs, shapes)


# --- operators (activations NHWC, as in TensorFlow) ---


def _tensor(value: Value | None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise GraphError("expects a tensor computed from the input here, got a constant")
    return value


def _geometry(node: OpNode, x: torch.Tensor, kernel: tuple[int, int]) -> tuple[list[int], list[int], list[int]]:
    """``(stride, pads (top, bottom, left, right), dilation)`` of a convolution on NHWC ``x``."""
    if node.attrs.get("data_format", "NHWC") != "NHWC":
        raise UnsupportedOpError(f"data_format {node.attrs['data_format']!r} (only NHWC is supported)")
    strides, dilations = node.attrs.get("strides", [1] * 4), node.attrs.get("dilations", [1] * 4)
    if len(strides) != 4 or strides[0] != 1 or strides[3] != 1:
        raise UnsupportedOpError(f"strides {strides} (batch and channel strides must be 1)")
    padding = node.attrs.get("padding", "VALID")
    if padding == "VALID":
        pads = [0, 0, 0, 0]
    elif padding == "SAME":
        pads = [*same_padding(x.shape[1], kernel[0], strides[1], dilations[1])]
        pads += same_padding(x.shape[2], kernel[1], strides[2], dilations[2])
    elif padding == "EXPLICIT":
        pads = list(node.attrs.get("explicit_paddings", [0] * 8))[2:6]
    else:
        raise UnsupportedOpError(f"padding {padding!r}")
    return strides[1:3], pads, dilations[1:3]


def _fused(node: OpNode, y: torch.Tensor, extra: list[Value | None]) -> torch.Tensor:
    """The ``fused_ops`` of a TensorFlow.js fused operator (bias, then an activation) applied to ``y``."""
    args = iter(extra)
    for op in node.attrs.get("fused_ops", []):
        if op == "BiasAdd":
            y = y + _tensor_or_const(next(args, None))
        elif op == "Prelu":
            y = _prelu(y, _tensor_or_const(next(args, None)))
        elif op == "LeakyRelu":
            y = F.leaky_relu(y, node.attrs.get("leakyrelu_alpha", 0.2))
        elif op in _ACTIVATIONS:
            y = _ACTIVATIONS[op](y)
        else:
            raise UnsupportedOpError(f"fused operation {op!r}")
    return y


def _tensor_or_const(value: Value | None) -> torch.Tensor:
    if value is None:
        raise GraphError("a fused operation lacks its argument")
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(value)


def _prelu(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``x`` where positive, ``alpha * x`` elsewhere; per channel of an NHWC tensor by the lean kernel."""
    if x.ndim == 4 and alpha.shape == (x.shape[3],):
        return prelu(x.permute(0, 3, 1, 2), alpha).permute(0, 2, 3, 1)
    return torch.where(x > 0, x, x * alpha)


def _conv(node: OpNode, args: list[Value | None]) -> torch.Tensor:
    """``Conv2D`` / ``_FusedConv2D``: HWIO filter, grouped when the input has a multiple of I channels."""
    x, w = _tensor(args[0]), _tensor_or_const(args[1])
    kh, kw, cin, _ = w.shape
    if x.shape[3] % cin:
        raise GraphError(f"input has {x.shape[3]} channels, the filter {cin} per group")
    stride, pads, dilation = _geometry(node, x, (kh, kw))
    y = conv2d(x.permute(0, 3, 1, 2), w.permute(3, 2, 0, 1), None, stride, pads, dilation, x.shape[3] // cin)
    return _fused(node, y.permute(0, 2, 3, 1), args[2:])


def _depthwise(node: OpNode, args: list[Value | None]) -> torch.Tensor:
    """``DepthwiseConv2dNative`` (and fused): filter ``[H, W, C, M]``, output channel ``c * M + m``."""
    x, w = _tensor(args[0]), _tensor_or_const(args[1])
    kh, kw, c, m = w.shape
    if x.shape[3] != c:
        raise GraphError(f"input has {x.shape[3]} channels, the depthwise filter {c}")
    stride, pads, dilation = _geometry(node, x, (kh, kw))
    weight = w.reshape(kh, kw, c * m).permute(2, 0, 1).unsqueeze(1)
    y = conv2d(x.permute(0, 3, 1, 2), weight, None, stride, pads, dilation, c)
    return _fused(node, y.permute(0, 2, 3, 1), args[2:])


def _matmul(node: OpNode, args: list[Value | None]) -> torch.Tensor:
    a, b = _tensor_or_const(args[0]), _tensor_or_const(args[1])
    a = a.transpose(-1, -2) if node.attrs.get("transpose_a") else a
    b = b.transpose(-1, -2) if node.attrs.get("transpose_b") else b
    return _fused(node, a @ b, args[2:])


def _pad(node: OpNode, args: list[Value | None]) -> torch.Tensor:
    x = _tensor(args[0])
    pairs = static_ints(args[1], "the paddings")
    value = float(args[2]) if len(args) > 2 and args[2] is not None else 0.0  # PadV2's constant
    flat = [p for i in reversed(range(len(pairs) // 2)) for p in pairs[2 * i : 2 * i + 2]]
    return F.pad(x, flat, value=value)


def _reduce(fn: str) -> OpFunction:
    def op(node: OpNode, args: list[Value | None]) -> torch.Tensor:
        axes = static_ints(args[1], "the reduction axes")
        return getattr(torch, fn)(_tensor(args[0]), dim=axes, keepdim=bool(node.attrs.get("keep_dims", False)))

    return op


def _squeeze(node: OpNode, args: list[Value | None]) -> torch.Tensor:
    x = _tensor(args[0])
    axes = node.attrs.get("squeeze_dims") or [i for i, d in enumerate(x.shape) if d == 1]
    return x.squeeze(tuple(a % x.ndim for a in axes))


def _concat(node: OpNode, args: list[Value | None]) -> torch.Tensor:
    [axis] = static_ints(args[-1], "the concatenation axis")
    return torch.cat([_tensor_or_const(a) for a in args[:-1]], dim=axis)


def _reshape(node: OpNode, args: list[Value | None]) -> torch.Tensor:
    return _tensor(args[0]).reshape(static_ints(args[1], "the target shape"))


_ACTIVATIONS = {
    "Relu": torch.relu,
    "Relu6": lambda x: x.clamp(0.0, 6.0),
    "Elu": F.elu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
}

#: TensorFlow op type -> implementation.
TFJS_OPS: dict[str, OpFunction] = {
    "Identity": lambda node, args: args[0],  # type: ignore[dict-item, return-value]
    "Add": binary(operator.add),
    "AddV2": binary(operator.add),
    "BiasAdd": binary(operator.add),  # NHWC: the bias runs along the last axis
    "Sub": binary(operator.sub),
    "Mul": binary(operator.mul),
    "RealDiv": binary(operator.truediv),
    "Maximum": binary(maximum),
    "Minimum": binary(minimum),
    "Neg": unary(torch.neg),
    "Rsqrt": unary(torch.rsqrt),
    "Sqrt": unary(torch.sqrt),
    **{name: unary(fn) for name, fn in _ACTIVATIONS.items()},
    "LeakyRelu": lambda node, args: F.leaky_relu(_tensor(args[0]), node.attrs.get("alpha", 0.2)),
    "Prelu": lambda node, args: _prelu(_tensor(args[0]), _tensor_or_const(args[1])),
    "Conv2D": _conv,
    "_FusedConv2D": _conv,
    "DepthwiseConv2dNative": _depthwise,
    "DepthwiseConv2d": _depthwise,
    "FusedDepthwiseConv2dNative": _depthwise,
    "MatMul": _matmul,
    "_FusedMatMul": _matmul,
    "Pad": _pad,
    "PadV2": _pad,
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "ConcatV2": _concat,
    "Mean": _reduce("mean"),
    "Sum": _reduce("sum"),
}


def load_tfjs_graph(path: str | Path, output: str | None = None, optimise: bool = True) -> GraphInterpreter:
    """A :class:`GraphInterpreter` running the TensorFlow.js graph model at ``path`` (its ``model.json``).

    Args:
        path: the JSON file; its weight shards lie beside it.
        output: the tensor to return (``name`` or ``name:0``); default: the signature's
            only output.
        optimise: apply the rewrites of :mod:`cloak.models.tfjs_fuse` (same results, faster).

    Raises:
        GraphError: the file is not a graph model, its weights do not match, it has no
            single input, or the output is ambiguous.
        UnsupportedOpError: the graph uses operators :data:`TFJS_OPS` does not cover.

    Shape:
        - Input: the graph's placeholder, e.g. :math:`(B, H, W, 3)` for an image model.
        - Output: the output tensor.
    """
    graph = read_tfjs_graph(path)
    if len(graph.inputs) != 1:
        raise GraphError(f"{path}: expected one input placeholder, the graph has {graph.inputs}")
    if output is not None:
        target = _tensor_name(output)
    elif len(graph.outputs) == 1:
        target = graph.outputs[0]
    else:
        raise GraphError(f"{path}: the signature names outputs {graph.outputs}; choose one (output=...)")
    nodes = fold_pads(fuse_prelu(graph.nodes, graph.constants), graph.constants) if optimise else graph.nodes
    shape = graph.input_shapes.get(graph.inputs[0])
    return GraphInterpreter(nodes, graph.constants, graph.inputs, target, TFJS_OPS, _FMT, input_shape=shape)
