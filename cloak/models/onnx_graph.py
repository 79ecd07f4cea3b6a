"""Running an ONNX graph in torch, differentiably: any face model of the supported operators.

Weight preparation (``Constant``, ``DequantizeLinear``, constant ``Reshape``) is
evaluated once in numpy (:func:`cloak.models.onnx_weights.fold_constants`), so
quantised files load as float ones; a ``Conv`` followed by the only
``BatchNormalization`` that reads it becomes one convolution (the batch norm
folded into its weights, in float64); the remaining nodes run as torch
operations in a :class:`~cloak.models.graph_interpreter.GraphInterpreter`.

Operators (:func:`onnx_ops`) cover what OpenCV Zoo's SFace (MobileFaceNet:
``Conv``, ``BatchNormalization``, ``PRelu``, ``Gemm``...) and Idiap's EdgeFace
export (EdgeNeXt: layer norms written out as ``ReduceMean``/``Pow``/``Sqrt``,
``Erf`` GELUs, channel attention with ``Split``, ``Slice``, ``Expand``,
``Softmax``...) use. Pooling, ``Shape``-driven (dynamic) reshapes and control
flow are not supported and are refused by name. A graph whose ``Reshape`` nodes
name a batch of one (EdgeFace's export does) runs one face at a time.
"""

from __future__ import annotations

import math
import operator
from pathlib import Path

import numpy as np
import onnx
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
    same_padding,
    static_ints,
    unary,
)
from cloak.models.onnx_weights import fold_constants
from cloak.models.sface import prelu

__all__ = ["fold_batchnorms", "load_onnx_graph", "onnx_ops", "read_onnx_graph"]

_FMT = "ONNX"
_INT_MAX = 2**62


def _tensor(value: Value | None) -> torch.Tensor:
    if value is None:
        raise GraphError("a required input is missing")
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(value)


def _axes(node: OpNode, args: list[Value | None], position: int) -> list[int] | None:
    """Axes from the attribute (older opsets) or from input ``position`` (newer ones); ``None``: all."""
    if "axes" in node.attrs:
        return list(node.attrs["axes"])
    if len(args) > position and args[position] is not None:
        return static_ints(args[position], "the axes")
    return None


def _conv(node: OpNode, args: list[Value | None]) -> torch.Tensor:
    x, w = _tensor(args[0]), _tensor(args[1])
    bias = _tensor(args[2]) if len(args) > 2 and args[2] is not None else None
    if x.ndim != 4:
        raise UnsupportedOpError(f"{x.ndim - 2}-D convolution (only 2-D is supported)")
    stride, dilation = node.attrs.get("strides", [1, 1]), node.attrs.get("dilations", [1, 1])
    auto = node.attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        (t, b), (left, r) = (same_padding(x.shape[2 + i], w.shape[2 + i], stride[i], dilation[i]) for i in (0, 1))
        pads = [t, b, left, r] if auto == "SAME_UPPER" else [b, t, r, left]
    elif auto == "VALID":
        pads = [0, 0, 0, 0]
    else:
        top, left, bottom, right = node.attrs.get("pads", [0, 0, 0, 0])
        pads = [top, bottom, left, right]
    return conv2d(x, w, bias, stride, pads, dilation, node.attrs.get("group", 1))


def _batchnorm(node: OpNode, args: list[Value | None]) -> torch.Tensor:
    x, scale, bias, mean, var = (_tensor(a) for a in args[:5])
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, node.attrs.get("epsilon", 1e-5))


def _prelu(node: OpNode, args: list[Value | None]) -> torch.Tensor:
    x, slope = _tensor(args[0]), _tensor(args[1])
    if x.ndim == 4 and slope.numel() == x.shape[1] and slope.shape[-2:] in ((1, 1), (x.shape[1], 1)):
        return prelu(x, slope.reshape(-1))  # per channel: the lean backward of cloak.models.sface
    return torch.where(x > 0, x, x * slope)


def _gemm(node: OpNode, args: list[Value | None]) -> torch.Tensor:
    a, b = _tensor(args[0]), _tensor(args[1])
    a = a.T if node.attrs.get("transA", 0) else a
    b = b.T if node.attrs.get("transB", 0) else b
    y = node.attrs.get("alpha", 1.0) * (a @ b)
    if len(args) > 2 and args[2] is not None:
        y = y + node.attrs.get("beta", 1.0) * _tensor(args[2])
    return y


def _reshape(node: OpNode, args: list[Value | None]) -> torch.Tensor:
    x = _tensor(args[0])
    dims = static_ints(args[1], "the target shape")
    if not node.attrs.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _slice(node: OpNode, args: list[Value | None]) -> torch.Tensor:
    x = _tensor(args[0])
    if "starts" in node.attrs:  # opset < 10
        starts, ends = node.attrs["starts"], node.attrs["ends"]
        axes, steps = node.attrs.get("axes", list(range(len(starts)))), [1] * len(starts)
    else:
        starts, ends = static_ints(args[1], "the starts"), static_ints(args[2], "the ends")
        axes = _axes(node, args, 3) or list(range(len(starts)))
        steps = static_ints(args[4], "the steps") if len(args) > 4 and args[4] is not None else [1] * len(starts)
    index: list[slice] = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step <= 0:
            raise UnsupportedOpError(f"slice step {step} (only positive steps are supported)")
        index[axis % x.ndim] = slice(max(min(start, _INT_MAX), -_INT_MAX), max(min(end, _INT_MAX), -_INT_MAX), step)
    return x[tuple(index)]


def _squeeze(node: OpNode, args: list[Value | None]) -> torch.Tensor:
    x = _tensor(args[0])
    axes = _axes(node, args, 1)
    return x.squeeze(tuple(a % x.ndim for a in axes)) if axes else x.squeeze()


def _unsqueeze(node: OpNode, args: list[Value | None]) -> torch.Tensor:
    x = _tensor(args[0])
    axes = _axes(node, args, 1) or []
    rank = x.ndim + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = x.unsqueeze(axis)
    return x


def _reduce(kind: str) -> OpFunction:
    def op(node: OpNode, args: list[Value | None]) -> torch.Tensor:
        x = _tensor(args[0])
        dims = tuple(_axes(node, args, 1) or range(x.ndim))
        keep = bool(node.attrs.get("keepdims", 1))
        if kind == "mean":
            return x.mean(dims, keepdim=keep)
        if kind == "sum":
            return x.sum(dims, keepdim=keep)
        return torch.linalg.vector_norm(x, 2, dims, keepdim=keep)

    return op


def _clip(node: OpNode, args: list[Value | None]) -> torch.Tensor:
    low = node.attrs.get("min") if len(args) < 2 or args[1] is None else _tensor(args[1])
    high = node.attrs.get("max") if len(args) < 3 or args[2] is None else _tensor(args[2])
    return torch.clamp(_tensor(args[0]), low, high)


def _expand(node: OpNode, args: list[Value | None]) -> torch.Tensor:
    x = _tensor(args[0])
    return x.expand(torch.broadcast_shapes(x.shape, tuple(static_ints(args[1], "the shape"))))


def _split(node: OpNode, args: list[Value | None]) -> tuple[torch.Tensor, ...]:
    x = _tensor(args[0])
    axis = node.attrs.get("axis", 0)
    if "split" in node.attrs:
        sizes: list[int] | int = list(node.attrs["split"])
    elif len(args) > 1 and args[1] is not None:
        sizes = static_ints(args[1], "the split sizes")
    else:
        sizes = math.ceil(x.shape[axis] / node.attrs.get("num_outputs", len(node.outputs)))
    return torch.split(x, sizes, dim=axis)


def _softmax(opset: int) -> OpFunction:
    def op(node: OpNode, args: list[Value | None]) -> torch.Tensor:
        x = _tensor(args[0])
        axis = node.attrs.get("axis", -1 if opset >= 13 else 1) % x.ndim
        if opset >= 13 or axis == x.ndim - 1:
            return torch.softmax(x, dim=axis)
        # Before opset 13: a softmax over all axes from `axis` on, as one flattened row.
        return torch.softmax(x.reshape(*x.shape[:axis], -1), dim=-1).reshape(x.shape)

    return op


def _flatten(node: OpNode, args: list[Value | None]) -> torch.Tensor:
    x = _tensor(args[0])
    axis = node.attrs.get("axis", 1) % (x.ndim + 1)
    return x.reshape(math.prod(x.shape[:axis]), -1)


def onnx_ops(opset: int) -> dict[str, OpFunction]:
    """ONNX operator type -> implementation, for a graph of default-domain ``opset``."""
    return {
        "Identity": lambda node, args: args[0],  # type: ignore[dict-item, return-value]
        "Dropout": lambda node, args: args[0],  # type: ignore[dict-item, return-value]  # inference: identity
        "Add": binary(operator.add),
        "Sub": binary(operator.sub),
        "Mul": binary(operator.mul),
        "Div": binary(operator.truediv),
        "Pow": binary(operator.pow),
        "Sqrt": unary(torch.sqrt),
        "Erf": unary(torch.erf),
        "Neg": unary(torch.neg),
        "Relu": unary(torch.relu),
        "Sigmoid": unary(torch.sigmoid),
        "Tanh": unary(torch.tanh),
        "Conv": _conv,
        "BatchNormalization": _batchnorm,
        "PRelu": _prelu,
        "Gemm": _gemm,
        "MatMul": lambda node, args: _tensor(args[0]) @ _tensor(args[1]),
        "Flatten": _flatten,
        "Reshape": _reshape,
        "Transpose": lambda node, args: _tensor(args[0]).permute(
            node.attrs.get("perm", list(reversed(range(_tensor(args[0]).ndim))))
        ),
        "Slice": _slice,
        "Squeeze": _squeeze,
        "Unsqueeze": _unsqueeze,
        "Concat": lambda node, args: torch.cat([_tensor(a) for a in args], dim=node.attrs["axis"]),
        "Split": _split,
        "Expand": _expand,
        "Clip": _clip,
        "ReduceMean": _reduce("mean"),
        "ReduceSum": _reduce("sum"),
        "ReduceL2": _reduce("l2"),
        "Softmax": _softmax(opset),
        "GlobalAveragePool": lambda node, args: _tensor(args[0]).mean(tuple(range(2, _tensor(args[0]).ndim)), True),
    }


def fold_batchnorms(nodes: list[OpNode], values: dict[str, np.ndarray]) -> list[OpNode]:
    """``nodes`` with each ``Conv`` -> ``BatchNormalization`` pair (the conv's only reader) made one ``Conv``.

    The folded weights and biases are added to ``values`` (float64 arithmetic, float32 result).
    """
    readers: dict[str, list[OpNode]] = {}
    for node in nodes:
        for name in node.inputs:
            readers.setdefault(name, []).append(node)
    out, dropped = [], set()
    for node in nodes:
        if node.name in dropped:
            continue
        bn = readers.get(node.outputs[0], [None])
        if node.op != "Conv" or len(bn) != 1 or bn[0] is None or bn[0].op != "BatchNormalization":
            out.append(node)
            continue
        bn_node = bn[0]
        params = [*node.inputs[1:3], *bn_node.inputs[1:5]]
        if len(bn_node.outputs) > 1 or not all(p in values for p in params if p):
            out.append(node)
            continue
        gamma, beta, mean, var = (values[n].astype(np.float64) for n in bn_node.inputs[1:5])
        a = gamma / np.sqrt(var + float(bn_node.attrs.get("epsilon", 1e-5)))
        weight = values[node.inputs[1]].astype(np.float64)
        bias = values[node.inputs[2]].astype(np.float64) if len(node.inputs) > 2 and node.inputs[2] else 0.0
        w_name, b_name = f"{node.name}/folded_weight", f"{node.name}/folded_bias"
        values[w_name] = (weight * a.reshape(-1, *[1] * (weight.ndim - 1))).astype(np.float32)
        values[b_name] = (a * bias + beta - a * mean).astype(np.float32)
        out.append(OpNode(node.name, "Conv", (node.inputs[0], w_name, b_name), bn_node.outputs, node.attrs))
        dropped.add(bn_node.name)
    return out


def read_onnx_graph(model: onnx.ModelProto | str | Path) -> tuple[list[OpNode], dict[str, np.ndarray], int]:
    """``(nodes, constants, opset)`` of an ONNX model, weight preparation folded, batch norms folded."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    values, compute = fold_constants(model.graph)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    nodes = []
    for i, node in enumerate(compute):
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
        nodes.append(OpNode(node.name or f"{op}_{i}", op, tuple(node.input), tuple(node.output), attrs))
    return fold_batchnorms(nodes, values), values, opset


def _fixes_batch_to_one(nodes: list[OpNode], values: dict[str, np.ndarray]) -> bool:
    """Whether a ``Reshape`` of the graph names a batch of one (an export traced at batch size 1)."""
    return any(
        node.op == "Reshape" and node.inputs[1] in values and values[node.inputs[1]].ravel()[:1].tolist() == [1]
        for node in nodes
    )


def load_onnx_graph(model: onnx.ModelProto | str | Path, output: str | None = None) -> GraphInterpreter:
    """A :class:`GraphInterpreter` running an ONNX model (one input) in torch.

    Args:
        model: the model or the path of its ``.onnx`` file.
        output: the output to return; default: the graph's only output.

    Raises:
        GraphError: the file is not ONNX, the graph has more than one input, or the output is ambiguous.
        UnsupportedOpError: the graph uses operators :func:`onnx_ops` does not cover (all are named).

    Shape:
        - Input: the graph's input, e.g. :math:`(B, 3, H, W)`.
        - Output: the output tensor.
    """
    if not isinstance(model, onnx.ModelProto):
        try:
            model = onnx.load(str(model))
        except Exception as err:  # protobuf's DecodeError and friends
            raise GraphError(f"{model} is not an ONNX model: {err}") from err
    nodes, values, opset = read_onnx_graph(model)
    read = {name for node in nodes for name in node.inputs}
    # Quantisation tools leave the float weights' old names among the inputs, read by nothing.
    inputs = [i.name for i in model.graph.input if i.name not in values and i.name in read]
    outputs = [o.name for o in model.graph.output]
    if len(inputs) != 1:
        raise GraphError(f"expected an ONNX graph with one input, it has {inputs}")
    if output is None and len(outputs) != 1:
        raise GraphError(f"the ONNX graph has outputs {outputs}; choose one (output=...)")
    target = output or outputs[0]
    per_sample = _fixes_batch_to_one(nodes, values)
    [declared] = [i for i in model.graph.input if i.name == inputs[0]]
    # dim_value 0 means unset in the protobuf: a named or missing dimension, any size.
    shape = [d.dim_value or -1 for d in declared.type.tensor_type.shape.dim]
    return GraphInterpreter(
        nodes, values, inputs, target, onnx_ops(opset), _FMT, per_sample=per_sample, input_shape=shape
    )
