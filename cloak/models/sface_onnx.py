"""Reading SFace's ONNX graph (:func:`cloak.models.sface.read_sface_onnx`) step by step.

The graph is read in three steps, each checking what it reads against the
network of :mod:`cloak.models.sface` and saying where it differs:

* :func:`compute_chain`: weight preparation folded away, the compute nodes must
  be one chain of the expected op types, reading a graph input;
* :func:`conv_layer`: one convolution, its batch norm and PReLU, the batch norm
  folded into the convolution;
* :func:`fc_head`: batch norm, dropout, flatten, fully connected layer and batch
  norm, both batch norms folded into the fully connected layer.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import onnx

from cloak.models.onnx_weights import fold_constants

__all__ = ["SFaceFormatError", "compute_chain", "conv_layer", "fc_head", "scalar"]

#: Constant tensors of a graph by name (weights folded by :func:`fold_constants`).
Values = dict[str, np.ndarray]


class SFaceFormatError(ValueError):
    """An ONNX file is not the SFace network this module implements."""


class ConvShape(Protocol):
    """What :func:`conv_layer` checks a convolution against (padding is kernel // 2)."""

    @property
    def in_channels(self) -> int: ...
    @property
    def out_channels(self) -> int: ...
    @property
    def kernel(self) -> int: ...
    @property
    def stride(self) -> int: ...
    @property
    def groups(self) -> int: ...


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _batchnorm(node: onnx.NodeProto, values: Values) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` with ``BatchNormalization(x) = a * x + b`` per channel, float64."""
    gamma, beta, mean, var = (values[name].astype(np.float64) for name in node.input[1:5])
    a = gamma / np.sqrt(var + float(_attrs(node).get("epsilon", 1e-5)))
    return a, beta - a * mean


def scalar(values: Values, node: onnx.NodeProto) -> float:
    """The scalar constant a ``Sub`` or ``Mul`` on the input applies."""
    arr = values[node.input[1]]
    if arr.size != 1:
        raise SFaceFormatError(f"{node.op_type} on the input must use a scalar, got shape {list(arr.shape)}")
    return float(arr.ravel()[0])


def compute_chain(graph: onnx.GraphProto, ops: Sequence[str]) -> tuple[Values, list[onnx.NodeProto]]:
    """The graph's constants and its compute nodes, checked to be one chain with the op types ``ops``.

    Raises:
        SFaceFormatError: other op types, a first node not reading a graph input, a node
            not reading the previous node's output, or reading non-constant tensors besides.
    """
    values, compute = fold_constants(graph)
    found = tuple(node.op_type for node in compute)
    want = tuple(ops)
    if found != want:
        first = next((i for i, (a, b) in enumerate(zip(found, want)) if a != b), min(len(found), len(want)))
        raise SFaceFormatError(
            f"the graph is not OpenCV Zoo's SFace: {len(found)} compute nodes where SFace has {len(want)}, "
            f"first difference at node {first} ({found[first : first + 3]} instead of {want[first : first + 3]})"
        )
    graph_inputs = [i.name for i in graph.input if i.name not in values]
    if compute[0].input[0] not in graph_inputs:
        raise SFaceFormatError(f"the first node reads {compute[0].input[0]!r}, not a graph input")
    for prev, node in itertools.pairwise(compute):
        if node.input[0] != prev.output[0]:
            raise SFaceFormatError(
                f"{node.op_type} {node.name or node.output[0]!r} does not read the previous node's output: "
                "the graph is not a plain chain as SFace is"
            )
        missing = [name for name in node.input[1:] if name and name not in values]
        if missing:
            raise SFaceFormatError(f"{node.op_type} {node.output[0]!r} reads non-constant tensors {missing}")
    return values, compute


def conv_layer(
    i: int, spec: ConvShape, nodes: Sequence[onnx.NodeProto], values: Values
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Convolution ``i`` (``nodes``: its ``Conv``, ``BatchNormalization`` and ``PRelu``) as float32 arrays.

    Returns:
        ``(weight, bias, slope)``: the convolution with the batch norm folded in, and the PReLU's slopes.

    Raises:
        SFaceFormatError: the convolution's shape, strides, padding, groups or dilations,
            or the number of slopes, are not ``spec``'s.
    """
    conv, bn, prelu = nodes
    attrs = _attrs(conv)
    weight = values[conv.input[1]].astype(np.float64)
    k = spec.kernel
    got = {
        "weight shape": tuple(weight.shape),
        "strides": tuple(attrs.get("strides", (1, 1))),
        "pads": tuple(attrs.get("pads", (0, 0, 0, 0))),
        "group": attrs.get("group", 1),
        "dilations": tuple(attrs.get("dilations", (1, 1))),
    }
    want = {
        "weight shape": (spec.out_channels, spec.in_channels // spec.groups, k, k),
        "strides": (spec.stride, spec.stride),
        "pads": (k // 2,) * 4,
        "group": spec.groups,
        "dilations": (1, 1),
    }
    if got != want:
        raise SFaceFormatError(f"convolution {i} ({conv.output[0]!r}) is {got}, SFace's is {want}")
    bias = values[conv.input[2]].astype(np.float64) if len(conv.input) > 2 and conv.input[2] else 0.0
    a, b = _batchnorm(bn, values)
    slope = values[prelu.input[1]]
    if slope.size != spec.out_channels:
        raise SFaceFormatError(f"PReLU {i} has {slope.size} slopes for {spec.out_channels} channels")
    return (
        (weight * a[:, None, None, None]).astype(np.float32),
        (a * bias + b).astype(np.float32),
        slope.reshape(-1).astype(np.float32),
    )


def fc_head(
    nodes: Sequence[onnx.NodeProto], values: Values, feature_shape: tuple[int, int, int], embedding_dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """The head (``nodes``: batch norm, dropout, flatten, ``Gemm``, batch norm) as one float32 linear layer.

    Args:
        nodes: the head's five nodes.
        values: the graph's constants.
        feature_shape: ``(C, H, W)`` of the features the head flattens.
        embedding_dim: the output length.

    Returns:
        ``(weight [embedding_dim, C * H * W], bias [embedding_dim])``.

    Raises:
        SFaceFormatError: a dropout in training mode, a flatten of another axis, a ``Gemm``
            other than ``x W^T + b``, or a weight of another shape.
    """
    bn_features, dropout, flatten, gemm, bn_out = nodes
    if len(dropout.input) > 2 and dropout.input[2]:
        raise SFaceFormatError("the dropout has a training_mode input; SFace's runs in inference mode")
    if _attrs(flatten).get("axis", 1) != 1:
        raise SFaceFormatError("the flatten must keep the batch axis (axis 1)")
    gemm_attrs = _attrs(gemm)
    if (gemm_attrs.get("alpha", 1.0), gemm_attrs.get("beta", 1.0), gemm_attrs.get("transA", 0)) != (1.0, 1.0, 0):
        raise SFaceFormatError(f"the fully connected layer has attributes {gemm_attrs}, SFace's plain y = x W^T + b")
    weight = values[gemm.input[1]].astype(np.float64)
    if not gemm_attrs.get("transB", 0):
        weight = weight.T
    n_features = math.prod(feature_shape)
    if weight.shape != (embedding_dim, n_features):
        raise SFaceFormatError(f"fully connected weight is {list(weight.shape)}, SFace's {[embedding_dim, n_features]}")
    fc_bias = values[gemm.input[2]].astype(np.float64).reshape(-1) if len(gemm.input) > 2 else np.zeros(embedding_dim)
    # fc(a * x + b) with a, b per feature channel repeated over the 7x7 positions (flatten is channel-major).
    a_in, b_in = (np.repeat(v, feature_shape[1] * feature_shape[2]) for v in _batchnorm(bn_features, values))
    a_out, b_out = _batchnorm(bn_out, values)
    head_weight = a_out[:, None] * (weight * a_in[None, :])
    head_bias = a_out * (weight @ b_in + fc_bias) + b_out
    return head_weight.astype(np.float32), head_bias.astype(np.float32)
