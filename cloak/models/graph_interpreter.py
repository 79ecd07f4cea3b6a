"""A small differentiable interpreter of dataflow graphs (TensorFlow.js, ONNX) in torch.

A face model shipped as a graph (a list of nodes, each an operator applied to
named inputs) runs here as an :class:`nn.Module` that executes the nodes one by
one with torch operations, so gradients flow from the embedding back to the
pixels. The format readers (:mod:`cloak.models.tfjs_graph`,
:mod:`cloak.models.onnx_graph`) turn a file into :class:`OpNode` lists, constant
arrays and a table of operator functions; this module orders the nodes, keeps
only those the output needs, refuses operators it has no function for (naming
all of them at once), and runs the rest.

Values are torch tensors, except integer constants (shapes, axes, paddings),
which stay numpy arrays: operators read them as static parameters, so moving
the module to a GPU never makes it copy a shape back to the host.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GraphError",
    "GraphInterpreter",
    "OpNode",
    "UnsupportedOpError",
    "Value",
    "binary",
    "conv2d",
    "maximum",
    "minimum",
    "same_padding",
    "static_ints",
    "unary",
]

#: A value flowing through the graph: a tensor, or a static integer constant.
Value = torch.Tensor | np.ndarray


class GraphError(ValueError):
    """A graph this interpreter cannot run: malformed, or not a model of the expected shape."""


class UnsupportedOpError(GraphError):
    """The graph uses operators (or operator settings) the interpreter does not implement."""


@dataclass(frozen=True)
class OpNode:
    """One operator application: ``outputs = op(inputs)`` with attributes ``attrs``.

    Input names that are empty strings stand for omitted optional inputs (ONNX).
    """

    name: str
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)


#: An operator: called with its node and its input values (``None`` for an omitted one).
OpFunction = Callable[[OpNode, list[Value | None]], Value | Sequence[Value]]


def static_ints(value: Value | None, what: str) -> list[int]:
    """The integers of a constant input (a shape, axes, paddings) as a flat list.

    Raises:
        GraphError: the value is computed at run time (a tensor), not a constant of the file.
    """
    if isinstance(value, np.ndarray):
        return [int(v) for v in value.ravel()]
    raise GraphError(f"{what} must be an integer constant of the graph, not a value computed at run time")


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's ``SAME`` padding along one axis: ``(before, after)``, the odd pixel after.

    The output has ``ceil(size / stride)`` positions; the padding is whatever the
    (dilated) kernel needs to reach that, split with the extra pixel at the end
    (ONNX calls this ``SAME_UPPER``).
    """
    effective = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    pads: Sequence[int],
    dilation: Sequence[int] = (1, 1),
    groups: int = 1,
) -> torch.Tensor:
    """A 2-D convolution of ``[B, C, H, W]`` with explicit, possibly asymmetric, zero padding.

    Args:
        pads: ``(top, bottom, left, right)``; symmetric padding goes to the convolution
            itself, asymmetric padding is applied first with :func:`torch.nn.functional.pad`.

    Shape:
        - x: :math:`(B, C, H, W)`
        - weight: :math:`(O, C / groups, k_h, k_w)`
        - Output: :math:`(B, O, H', W')`
    """
    top, bottom, left, right = (int(p) for p in pads)
    if top == bottom and left == right:
        padding: tuple[int, int] = (top, left)
    else:
        x = F.pad(x, (left, right, top, bottom))
        padding = (0, 0)
    return F.conv2d(x, weight, bias, tuple(stride), padding, tuple(dilation), groups)


def _order(nodes: Sequence[OpNode], known: set[str], outputs: Sequence[str], fmt: str) -> list[OpNode]:
    """The nodes ``outputs`` depend on, each after the nodes it reads, otherwise in file order."""
    producer: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for out in node.outputs:
            if out in producer:
                raise GraphError(f"the {fmt} graph defines {out!r} twice")
            producer[out] = i
    needed: set[int] = set()
    stack = list(outputs)
    while stack:  # every node the outputs reach, walking back from them
        name = stack.pop()
        if name in known:
            continue
        if name not in producer:
            raise GraphError(f"the {fmt} graph reads {name!r}, which no node, constant or input defines")
        if producer[name] not in needed:
            needed.add(producer[name])
            stack.extend(i for i in nodes[producer[name]].inputs if i)
    pending = [nodes[i] for i in sorted(needed)]
    ready, ordered = set(known), []
    while pending:  # one pass when the file is already in order
        waiting = []
        for node in pending:
            if all(not i or i in ready for i in node.inputs):
                ordered.append(node)
                ready.update(node.outputs)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise GraphError(f"the {fmt} graph has a cycle through node {waiting[0].name!r}")
        pending = waiting
    return ordered


class GraphInterpreter(nn.Module):
    """Runs a dataflow graph with torch operations; differentiable end to end.

    Args:
        nodes: the graph's operator nodes, in any order; those the output does not
            need are dropped.
        constants: name -> array. Floating-point arrays become buffers (they follow
            ``.to(device, dtype)``); integer and boolean arrays stay numpy.
        inputs: the names of the graph's inputs, in the order :meth:`forward` takes them.
        output: the name of the value :meth:`forward` returns.
        ops: operator type -> function.
        fmt: the format's name, for messages ("TensorFlow.js").
        per_sample: run the batch one item at a time, for graphs whose reshapes fix
            the batch size to one.
        input_shape: the first input's shape as the file declares it (``-1``: any size),
            kept as :attr:`input_shape` for callers that adapt to it.

    Raises:
        UnsupportedOpError: some needed node's operator is not in ``ops`` (all are named).
        GraphError: a node reads a name nothing defines, or the graph has a cycle.

    Shape:
        - Inputs: whatever the graph's inputs are (e.g. :math:`(B, H, W, 3)` for a TensorFlow.js image model).
        - Output: the graph's output value.
    """

    def __init__(
        self,
        nodes: Sequence[OpNode],
        constants: Mapping[str, np.ndarray],
        inputs: Sequence[str],
        output: str,
        ops: Mapping[str, OpFunction],
        fmt: str,
        per_sample: bool = False,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.fmt = fmt
        self.input_shape = None if input_shape is None else [int(d) for d in input_shape]
        self.input_names = tuple(inputs)
        self.output_name = output
        self.per_sample = bool(per_sample)
        if output in constants or output in inputs:
            raise GraphError(f"the {fmt} graph's output {output!r} is a constant or an input, not a computed value")
        self.nodes = _order(nodes, set(constants) | set(inputs), [output], fmt)
        unsupported = Counter(node.op for node in self.nodes if node.op not in ops)
        if unsupported:
            listed = ", ".join(f"{op} (x{n})" for op, n in sorted(unsupported.items()))
            raise UnsupportedOpError(f"the {fmt} graph uses operators this interpreter does not implement: {listed}")
        self._ops = {node.op: ops[node.op] for node in self.nodes}
        used = {name for node in self.nodes for name in node.inputs} | {output}
        self._static: dict[str, np.ndarray] = {}
        self._buffer_of: dict[str, str] = {}
        for name, array in constants.items():
            if name not in used:
                continue
            array = np.asarray(array)
            if np.issubdtype(array.dtype, np.floating):
                key = f"const_{len(self._buffer_of)}"
                self.register_buffer(key, torch.from_numpy(np.array(array, dtype=np.float32)))
                self._buffer_of[name] = key
            else:
                self._static[name] = array
        # After each node, the values no later node reads (freed as the graph runs).
        last_use: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for name in node.inputs:
                last_use[name] = i
        self._free_after = [
            [n for n in dict.fromkeys(node.inputs) if last_use.get(n) == i and n != output]
            for i, node in enumerate(self.nodes)
        ]

    @property
    def op_types(self) -> list[str]:
        """The operator types the graph runs, sorted."""
        return sorted({node.op for node in self.nodes})

    def constant(self, name: str) -> Value:
        """A constant of the graph by name (a buffer, or a numpy array for integers)."""
        if name in self._buffer_of:
            return self._buffers[self._buffer_of[name]]
        return self._static[name]

    def _run(self, values: dict[str, Value]) -> Value:
        for node, free in zip(self.nodes, self._free_after):
            args: list[Value | None] = []
            for name in node.inputs:
                if not name:
                    args.append(None)
                elif name in values:
                    args.append(values[name])
                else:
                    args.append(self.constant(name))
            try:
                result = self._ops[node.op](node, args)
            except GraphError as err:
                raise type(err)(f"{self.fmt} node {node.name!r} ({node.op}): {err}") from err
            results = (result,) if isinstance(result, torch.Tensor | np.ndarray) else tuple(result)
            for name, value in zip(node.outputs, results):
                values[name] = value
            for name in free:
                values.pop(name, None)
        return values[self.output_name]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != len(self.input_names):
            raise TypeError(
                f"the graph takes {len(self.input_names)} input(s) {list(self.input_names)}, got {len(inputs)}"
            )
        if self.per_sample and inputs and inputs[0].shape[0] != 1:
            items = [
                self._run(dict(zip(self.input_names, [x[i : i + 1] for x in inputs]))) for i in range(len(inputs[0]))
            ]
            return torch.cat(items)  # type: ignore[arg-type]
        out = self._run(dict(zip(self.input_names, inputs)))
        if not isinstance(out, torch.Tensor):
            raise GraphError(f"the {self.fmt} graph's output {self.output_name!r} does not depend on its input")
        return out


def _as_tensor(value: Value, like: Value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    device = like.device if isinstance(like, torch.Tensor) else None
    return torch.as_tensor(value, device=device)


def binary(fn: Callable[[Any, Any], Any]) -> OpFunction:
    """An element-wise operator of two broadcast inputs; on two integer constants it stays in numpy.

    ``fn`` must accept both torch tensors and numpy arrays (``torch.maximum`` does not: see
    :func:`maximum`), such as ``operator.add``.
    """

    def op(node: OpNode, args: list[Value | None]) -> Value:
        a, b = args[0], args[1]
        if a is None or b is None:
            raise GraphError("an element-wise operator needs two inputs")
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            return np.asarray(fn(a, b))
        return fn(_as_tensor(a, b), _as_tensor(b, a))

    return op


def unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> OpFunction:
    """An element-wise operator of one tensor input."""

    def op(node: OpNode, args: list[Value | None]) -> Value:
        x = args[0]
        if not isinstance(x, torch.Tensor):
            raise GraphError("expects a tensor input, got a constant")
        return fn(x)

    return op


def maximum(a: Any, b: Any) -> Any:
    """Element-wise maximum of two tensors or two arrays."""
    return np.maximum(a, b) if isinstance(a, np.ndarray) else torch.maximum(a, b)


def minimum(a: Any, b: Any) -> Any:
    """Element-wise minimum of two tensors or two arrays."""
    return np.minimum(a, b) if isinstance(a, np.ndarray) else torch.minimum(a, b)
