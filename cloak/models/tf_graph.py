"""Reading a TensorFlow frozen graph (``GraphDef``, a ``.pb`` file) without TensorFlow.

A frozen graph is one protocol-buffer message: a list of nodes, each with a name,
an operator, its inputs and attributes; the trained weights are ``Const`` nodes
whose ``value`` attribute holds a ``TensorProto``. This module decodes just that
much of the protobuf wire format (varints and length-delimited fields; the field
numbers are those of TensorFlow's ``graph.proto``, ``node_def.proto``,
``attr_value.proto`` and ``tensor.proto``), so a network written in torch can
load the weights: TensorFlow itself is a large dependency that no longer installs
these old graphs' way of running.

Only what weight files use is supported: float32, float64, int32 and int64
constants, stored as raw bytes (``tensor_content``) or as a repeated value (a
single value fills the whole shape, as TensorFlow does).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["GraphFormatError", "GraphNode", "read_graph"]

# TensorFlow's DataType enum values for the types weight files use.
_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    9: np.dtype("<i8"),  # DT_INT64
}


class GraphFormatError(ValueError):
    """The bytes are not a frozen graph this reader understands."""


@dataclass
class GraphNode:
    """One node of a graph: its name, operator, inputs, and the value of a ``Const``.

    ``attributes`` keeps every attribute's raw ``AttrValue`` bytes; :meth:`attribute`
    decodes the scalar ones.
    """

    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    attributes: dict[str, bytes] = field(default_factory=dict)
    value: np.ndarray | None = None

    def attribute(self, key: str) -> bytes | int | float | bool:
        """A scalar attribute: a string (bytes), an integer, a float or a bool.

        Raises:
            KeyError: the node has no such attribute.
            GraphFormatError: the attribute is not a scalar (a list, a shape, a tensor).
        """
        for number, _, value in _fields(self.attributes[key]):
            if number == 2:  # s
                return bytes(value)
            if number == 3:  # i
                return value - (1 << 64) if value >= 1 << 63 else value
            if number == 4:  # f
                return struct.unpack("<f", value)[0]
            if number == 5:  # b
                return bool(value)
        raise GraphFormatError(f"attribute {key!r} of node {self.name!r} is not a scalar")


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise GraphFormatError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes | memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """``(field number, wire type, value)`` of each field of one message (values are views, not copies)."""
    data = memoryview(data)
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise GraphFormatError(f"unsupported protobuf wire type {wire} (field {number})")
        if pos > len(data):
            raise GraphFormatError(f"field {number} runs past the end of its message")
        yield number, wire, value


def _shape(data: bytes) -> list[int]:
    """A ``TensorShapeProto``'s dimension sizes (field 2: ``dim``; a dim's field 1: ``size``)."""
    dims = []
    for number, _, dim in _fields(data):
        if number == 2:
            size = next((v for n, _, v in _fields(dim) if n == 1), 0)
            dims.append(int(size))
    return dims


def _tensor(data: bytes) -> np.ndarray:
    """A ``TensorProto`` as an array (fields: 1 dtype, 2 shape, 4 content, 5-7 and 10 values)."""
    dtype_code, shape, content = 0, [], None
    values: list[float | int] = []
    for number, wire, value in _fields(data):
        if number == 1:
            dtype_code = value
        elif number == 2:
            shape = _shape(value)
        elif number == 4:
            content = value
        elif number in (5, 6):  # float_val, double_val: packed or one at a time
            fmt = "f" if number == 5 else "d"
            if wire == 2:
                values.extend(struct.unpack(f"<{len(value) // struct.calcsize(fmt)}{fmt}", value))
            else:
                values.append(struct.unpack(f"<{fmt}", value)[0])
        elif number in (7, 10):  # int_val, int64_val: packed or one at a time
            if wire == 2:
                pos = 0
                while pos < len(value):
                    item, pos = _varint(value, pos)
                    values.append(item)
            else:
                values.append(value)
    if dtype_code not in _DTYPES:
        raise GraphFormatError(f"unsupported tensor dtype {dtype_code}")
    dtype = _DTYPES[dtype_code]
    count = int(np.prod(shape)) if shape else 1
    if content is not None:
        array = np.frombuffer(content, dtype=dtype)
        if array.size != count:
            raise GraphFormatError(f"tensor of shape {shape} holds {array.size} values")
        return array.reshape(shape).astype(dtype.newbyteorder("="))
    if dtype.kind == "i":  # negative integers are 64-bit two's complement varints, whatever the type
        values = [v - (1 << 64) if v >= 1 << 63 else v for v in values]
    if len(values) == 1:
        return np.full(shape, values[0], dtype=dtype.newbyteorder("="))
    if len(values) != count:
        raise GraphFormatError(f"tensor of shape {shape} lists {len(values)} values")
    return np.asarray(values, dtype=dtype.newbyteorder("=")).reshape(shape)


def _node(data: bytes) -> GraphNode:
    """A ``NodeDef`` (fields: 1 name, 2 op, 3 input, 5 attr map of key 1 -> ``AttrValue`` 2)."""
    node = GraphNode(name="", op="")
    for number, _, value in _fields(data):
        if number == 1:
            node.name = bytes(value).decode()
        elif number == 2:
            node.op = bytes(value).decode()
        elif number == 3:
            node.inputs.append(bytes(value).decode())
        elif number == 5:
            entry = dict((n, v) for n, _, v in _fields(value))
            node.attributes[bytes(entry.get(1, b"")).decode()] = bytes(entry.get(2, b""))
    if node.op == "Const":
        # AttrValue field 8: tensor.
        tensor = next((v for n, _, v in _fields(node.attributes.get("value", b"")) if n == 8), None)
        if tensor is None:
            raise GraphFormatError(f"Const node {node.name!r} has no tensor value")
        node.value = _tensor(tensor)
    return node


def read_graph(path: str | Path) -> list[GraphNode]:
    """The nodes of a frozen TensorFlow graph, in file order, constants decoded.

    Raises:
        GraphFormatError: the file is not a ``GraphDef`` this reader can decode.
    """
    data = Path(path).read_bytes()
    try:
        nodes = [_node(value) for number, _, value in _fields(data) if number == 1]
    except (UnicodeDecodeError, struct.error) as err:
        raise GraphFormatError(f"{path} is not a TensorFlow GraphDef: {err}") from err
    except GraphFormatError as err:
        raise GraphFormatError(f"{path} is not a TensorFlow GraphDef this reader can decode: {err}") from err
    if not nodes or any(not n.name or not n.op for n in nodes):
        raise GraphFormatError(f"{path} holds no graph nodes: not a TensorFlow GraphDef")
    return nodes
