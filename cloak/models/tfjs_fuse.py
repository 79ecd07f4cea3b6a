"""Rewrites that make a TensorFlow.js graph cheaper to run in torch, with the same results.

Converters often spell a layer out in primitive operators that torch runs (and
differentiates) one pass at a time. Two rewrites undo the commonest:

* :func:`fuse_prelu`: ``max(0, x) + gamma * min(0, x)`` (four operators whose
  backward passes build masks for ties) becomes one ``Prelu`` node. In
  MobileFace these patterns took half of a forward+backward.
* :func:`fold_pads`: a zero ``Pad`` of the spatial axes feeding a ``VALID``
  convolution becomes the convolution's own explicit padding (no padded copy).

Both leave the replaced nodes in the list; the interpreter drops nodes that the
output no longer needs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cloak.models.graph_interpreter import OpNode

__all__ = ["fold_pads", "fuse_prelu"]

_CONVS = ("Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "DepthwiseConv2d", "FusedDepthwiseConv2dNative")


def _is_zero(name: str, constants: Mapping[str, np.ndarray]) -> bool:
    return name in constants and constants[name].size == 1 and float(constants[name].ravel()[0]) == 0.0


def _other(node: OpNode, constants: Mapping[str, np.ndarray]) -> str | None:
    """The non-zero operand of a two-input node whose other operand is the constant 0."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if _is_zero(a, constants):
        return b
    return a if _is_zero(b, constants) else None


def fuse_prelu(nodes: list[OpNode], constants: Mapping[str, np.ndarray]) -> list[OpNode]:
    """``nodes`` with each ``Add(Maximum(0, x), Mul(gamma, Minimum(0, x)))`` made ``Prelu(x, gamma)``.

    ``gamma`` must be a constant; the operands may come in either order.
    """
    producer = {node.outputs[0]: node for node in nodes}
    out = []
    for node in nodes:
        fused = None
        if node.op in ("Add", "AddV2") and len(node.inputs) == 2:
            for max_name, mul_name in (node.inputs, node.inputs[::-1]):
                fused = _match_prelu(producer.get(max_name), producer.get(mul_name), producer, constants)
                if fused is not None:
                    break
        out.append(node if fused is None else OpNode(node.name, "Prelu", fused, node.outputs, {}))
    return out


def _match_prelu(
    maximum: OpNode | None,
    mul: OpNode | None,
    producer: Mapping[str, OpNode],
    constants: Mapping[str, np.ndarray],
) -> tuple[str, str] | None:
    """``(x, gamma)`` when ``maximum`` is ``Maximum(0, x)`` and ``mul`` is ``gamma * Minimum(0, x)``."""
    if maximum is None or mul is None or maximum.op != "Maximum" or mul.op != "Mul" or len(mul.inputs) != 2:
        return None
    x = _other(maximum, constants)
    for gamma, minimum_name in (mul.inputs, mul.inputs[::-1]):
        minimum = producer.get(minimum_name)
        is_min = gamma in constants and minimum is not None and minimum.op == "Minimum"
        if is_min and x is not None and _other(minimum, constants) == x:
            return x, gamma
    return None


def fold_pads(nodes: list[OpNode], constants: Mapping[str, np.ndarray]) -> list[OpNode]:
    """``nodes`` with each zero spatial ``Pad`` feeding a ``VALID`` NHWC convolution folded into it."""
    producer = {node.outputs[0]: node for node in nodes}
    out = []
    for node in nodes:
        pad = producer.get(node.inputs[0]) if node.op in _CONVS and node.inputs else None
        if (
            pad is None
            or pad.op != "Pad"
            or node.attrs.get("padding", "VALID") != "VALID"
            or node.attrs.get("data_format", "NHWC") != "NHWC"
            or pad.inputs[1] not in constants
        ):
            out.append(node)
            continue
        pairs = constants[pad.inputs[1]].reshape(-1).tolist()
        if len(pairs) != 8 or pairs[:2] != [0, 0] or pairs[6:] != [0, 0] or min(pairs) < 0:
            out.append(node)
            continue
        attrs = {**node.attrs, "padding": "EXPLICIT", "explicit_paddings": [int(p) for p in pairs]}
        out.append(OpNode(node.name, node.op, (pad.inputs[0], *node.inputs[1:]), node.outputs, attrs))
    return out
