"""A reader of dlib's binary serialization format, enough to load its DNN model files.

dlib (``dlib/serialize.h``) writes every integer in a variable-length form: one
control byte (low nibble = number of payload bytes, bit ``0x80`` = negative for
signed types) followed by that many little-endian magnitude bytes. Floats are a
``float_details`` pair, an ``int64`` mantissa and an ``int16`` exponent with
``value = mantissa * 2**exponent``, both in that integer form. Strings are a
length followed by raw bytes, booleans one ASCII ``'0'``/``'1'`` byte, and
tensors (``dlib/cuda/tensor.h``) a version, four dimensions and raw
little-endian ``float32`` data.

A network ``loss<L_n<...L_1<input>>>`` is serialized recursively: every wrapper
writes its version number and then its sub-network before its own payload. So
the file holds the loss layer's version and payload, then the version numbers of
all layers from the outermost inwards, then the input layer, and then the
payloads of the layers from the innermost outwards (each followed by its
bookkeeping: three booleans and a few usually empty tensors). Tag and skip
layers write only a version number. Nothing in the file names the tag a skip or
``add_prev`` refers to, so the reader needs the architecture: a list of
:class:`LayerSpec` in data-flow order, which it checks the file against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = [
    "DlibFormatError",
    "DlibReader",
    "LayerKind",
    "LayerRecord",
    "LayerSpec",
    "parse_network",
    "read_network_file",
]

LayerKind = Literal[
    "input_rgb_image_sized",
    "con",
    "affine",
    "relu",
    "max_pool",
    "avg_pool",
    "add_prev",
    "tag",
    "skip",
    "fc_no_bias",
    "loss_metric",
]

AttrValue = int | float | bool | str | tuple[int, ...] | tuple[float, ...]

# float_details reserves these exponents for the non-finite values.
_EXP_INF, _EXP_NINF, _EXP_NAN = 32000, 32001, 32002

# Kinds that are an ``add_layer`` in dlib (a payload of their own) rather than a tag or skip.
_COMPUTATIONAL: frozenset[str] = frozenset({"con", "affine", "relu", "max_pool", "avg_pool", "add_prev", "fc_no_bias"})


class DlibFormatError(ValueError):
    """The bytes are not a dlib serialization of the expected object."""


class DlibReader:
    """Reads dlib's serialization primitives from a byte buffer, front to back.

    Every ``read_*`` method takes ``what``, a short description of the value being
    read, used in the :class:`DlibFormatError` raised when the bytes are
    truncated or malformed.

    Args:
        data: the serialized bytes.
        source: name of where the bytes came from (a file path), for error messages.
    """

    def __init__(self, data: bytes, source: str = "<bytes>") -> None:
        self._data = memoryview(data)
        self.source = source
        self.offset = 0

    @property
    def remaining(self) -> int:
        """Number of bytes not read yet."""
        return len(self._data) - self.offset

    def error(self, message: str, offset: int | None = None) -> DlibFormatError:
        """A :class:`DlibFormatError` for ``message`` at ``offset`` (default: the current one)."""
        at = self.offset if offset is None else offset
        return DlibFormatError(f"{self.source}: {message} (at byte {at} of {len(self._data)})")

    def _take(self, n: int, what: str) -> memoryview:
        if n > self.remaining:
            raise DlibFormatError(
                f"{self.source}: truncated at byte {len(self._data)} while reading {what} "
                f"(needed {n} bytes from byte {self.offset}, only {self.remaining} left)"
            )
        chunk = self._data[self.offset : self.offset + n]
        self.offset += n
        return chunk

    def read_int(self, what: str, max_bytes: int = 8, signed: bool = True) -> int:
        """One integer in dlib's variable-length encoding.

        Args:
            what: description for error messages.
            max_bytes: ``sizeof`` the C++ type it was written from (2 for ``short``,
                4 for ``int``, 8 for ``long``/``int64``/``size_t``).
            signed: whether that type is signed (bit ``0x80`` of the control byte is
                then the sign; for unsigned types it must be clear).
        """
        start = self.offset
        control = self._take(1, what)[0]
        negative = signed and bool(control & 0x80)
        size = control & 0x0F if signed else control & 0x8F
        if size == 0 or size > max_bytes:
            raise self.error(
                f"expected a dlib-encoded {'signed' if signed else 'unsigned'} integer of at most "
                f"{max_bytes} bytes while reading {what}, found control byte 0x{control:02x}",
                start,
            )
        value = int.from_bytes(self._take(size, what), "little")
        return -value if negative else value

    def read_uint(self, what: str, max_bytes: int = 8) -> int:
        """One unsigned integer (``unsigned long``, ``size_t``...); see :meth:`read_int`."""
        return self.read_int(what, max_bytes=max_bytes, signed=False)

    def read_float(self, what: str) -> float:
        """One ``float``/``double`` stored as ``float_details`` (mantissa and exponent)."""
        start = self.offset
        if self.remaining and self._data[self.offset] & 0x70:
            raise self.error(
                f"expected a binary float_details value while reading {what}, found byte "
                f"0x{self._data[self.offset]:02x} (dlib's legacy ASCII float encoding is not supported)",
                start,
            )
        mantissa = self.read_int(f"{what} (mantissa)", max_bytes=8)
        exponent = self.read_int(f"{what} (exponent)", max_bytes=2)
        if exponent == _EXP_INF:
            return math.inf
        if exponent == _EXP_NINF:
            return -math.inf
        if exponent == _EXP_NAN:
            return math.nan
        return math.ldexp(float(mantissa), exponent)

    def read_bool(self, what: str) -> bool:
        """One ``bool``, stored as the ASCII byte ``'0'`` or ``'1'``."""
        start = self.offset
        byte = self._take(1, what)[0]
        if byte not in (ord("0"), ord("1")):
            raise self.error(f"expected a bool ('0' or '1') while reading {what}, found byte 0x{byte:02x}", start)
        return byte == ord("1")

    def read_string(self, what: str, max_length: int = 1 << 16) -> str:
        """One ``std::string``: an unsigned length, then that many bytes."""
        start = self.offset
        length = self.read_uint(f"{what} (length)")
        if length > max_length:
            raise self.error(
                f"expected a string of at most {max_length} bytes while reading {what}, found length {length}", start
            )
        raw = bytes(self._take(length, what))
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.error(f"expected an ASCII string while reading {what}, found {raw[:40]!r}", start) from None

    def expect_string(self, what: str, allowed: Sequence[str]) -> str:
        """Reads a version string and checks it is one of ``allowed``."""
        start = self.offset
        found = self.read_string(what)
        if found not in allowed:
            expected = " or ".join(repr(a) for a in allowed)
            raise self.error(f"expected {expected} while reading {what}, found {found!r}", start)
        return found

    def expect_int(self, what: str, allowed: Sequence[int], max_bytes: int = 4, signed: bool = True) -> int:
        """Reads an integer (a version number, a layer hyper-parameter) and checks it is in ``allowed``."""
        start = self.offset
        found = self.read_int(what, max_bytes=max_bytes, signed=signed)
        if found not in allowed:
            expected = " or ".join(str(a) for a in allowed)
            raise self.error(f"expected {expected} while reading {what}, found {found}", start)
        return found

    def read_tensor(self, what: str) -> np.ndarray:
        """One ``resizable_tensor``: version 2, ``(n, k, nr, nc)``, then raw ``float32`` data.

        Returns:
            A ``float32`` array of shape ``[n, k, nr, nc]`` (a copy, owning its data).
        """
        self.expect_int(f"{what} (tensor version)", (2,))
        shape = self._read_dims(what)
        count = math.prod(shape)
        raw = self._take(4 * count, f"{what} (tensor data, shape {list(shape)})")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def read_alias_tensor(self, what: str) -> tuple[int, int, int, int]:
        """One ``alias_tensor`` (a shape only): version 1, then ``(n, k, nr, nc)``."""
        self.expect_int(f"{what} (alias_tensor version)", (1,))
        return self._read_dims(what)

    def _read_dims(self, what: str) -> tuple[int, int, int, int]:
        start = self.offset
        dims = tuple(self.read_int(f"{what} (dimension {i})") for i in range(4))
        if any(d < 0 for d in dims):
            raise self.error(f"expected non-negative tensor dimensions while reading {what}, found {list(dims)}", start)
        return dims  # type: ignore[return-value]


@dataclass(frozen=True)
class LayerSpec:
    """One layer of the architecture the file must hold, as declared in dlib's C++ type.

    Attributes:
        kind: the dlib layer (``con`` for ``con_``, ``fc_no_bias`` for ``fc_no_bias``...).
        num_outputs: filters of a ``con``, outputs of an ``fc_no_bias``.
        window: ``(nr, nc)`` of a convolution or pool (``(0, 0)``: the whole input);
            for ``input_rgb_image_sized``, the image size.
        stride: ``(stride_y, stride_x)``.
        tag: the tag id of a ``tag``, ``skip`` or ``add_prev``.
    """

    kind: LayerKind
    num_outputs: int = 0
    window: tuple[int, int] = (0, 0)
    stride: tuple[int, int] = (1, 1)
    tag: int = 0

    @property
    def padding(self) -> tuple[int, int]:
        """dlib's default padding: half the window when the stride is 1, else 0."""
        return tuple(w // 2 if s == 1 else 0 for w, s in zip(self.window, self.stride, strict=True))  # type: ignore[return-value]


@dataclass
class LayerRecord:
    """One layer as read from the file.

    Attributes:
        kind: the :class:`LayerSpec` kind it was read as.
        version: the version string found in the file (``"con_4"``, ``"bn_con2"``...);
            empty for tags and skips, which only have a number.
        offset: byte offset of its payload in the file.
        attrs: its scalar settings (``stride``, ``padding``, ``mean``, ``margin``...).
        tensors: its weights, ``float32``: ``con``: ``weight [F, C, nr, nc]`` and
            ``bias [F]``; ``affine``: ``gamma [C]``, ``beta [C]`` (``y = gamma * x +
            beta``, batch-norm statistics folded in); ``fc_no_bias``: ``weight
            [num_inputs, num_outputs]`` (dlib computes ``y = x @ weight``).
    """

    kind: LayerKind
    version: str
    offset: int
    attrs: dict[str, AttrValue] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


def _check(reader: DlibReader, what: str, expected: object, found: object, offset: int) -> None:
    if expected != found:
        raise reader.error(f"expected {expected} while reading {what}, found {found}", offset)


def _skip_multipliers(reader: DlibReader, what: str) -> None:
    """Skips the four training-only learning-rate and weight-decay multipliers."""
    for name in ("learning_rate", "weight_decay", "bias_learning_rate", "bias_weight_decay"):
        reader.read_float(f"{what} {name}_multiplier")


def _read_window(
    reader: DlibReader, spec: LayerSpec, what: str
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Reads ``nr, nc, stride_y, stride_x, padding_y, padding_x`` and checks them against ``spec``."""
    start = reader.offset
    window = (reader.read_int(f"{what} nr"), reader.read_int(f"{what} nc"))
    stride = (reader.read_int(f"{what} stride_y", 4), reader.read_int(f"{what} stride_x", 4))
    padding = (reader.read_int(f"{what} padding_y", 4), reader.read_int(f"{what} padding_x", 4))
    _check(
        reader,
        f"{what} window/stride/padding",
        (spec.window, spec.stride, spec.padding),
        (window, stride, padding),
        start,
    )
    return window, stride, padding


def _read_input(reader: DlibReader, spec: LayerSpec, what: str) -> LayerRecord:
    rec = LayerRecord(spec.kind, "", reader.offset)
    rec.version = reader.expect_string(f"{what} version", ("input_rgb_image_sized",))
    mean = tuple(reader.read_float(f"{what} mean {c}") for c in ("red", "green", "blue"))
    start = reader.offset
    size = (reader.read_uint(f"{what} nr"), reader.read_uint(f"{what} nc"))
    _check(reader, f"{what} image size", spec.window, size, start)
    rec.attrs.update(mean=mean, size=size)
    return rec


def _read_con(reader: DlibReader, spec: LayerSpec, what: str) -> LayerRecord:
    rec = LayerRecord(spec.kind, "", reader.offset)
    rec.version = reader.expect_string(f"{what} version", ("con_4", "con_5", "con_6"))
    params = reader.read_tensor(f"{what} params").reshape(-1)
    start = reader.offset
    num_filters = reader.read_int(f"{what} num_filters")
    _check(reader, f"{what} num_filters", spec.num_outputs, num_filters, start)
    _, stride, padding = _read_window(reader, spec, what)
    filters = reader.read_alias_tensor(f"{what} filters")
    biases = reader.read_alias_tensor(f"{what} biases")
    _skip_multipliers(reader, what)
    use_bias = reader.read_bool(f"{what} use_bias") if rec.version in ("con_5", "con_6") else True
    if rec.version == "con_6":
        reader.read_bool(f"{what} use_relu")
    n_filt, n_bias = math.prod(filters), math.prod(biases) if use_bias else 0
    if (
        filters[0] != num_filters
        or tuple(filters[2:]) != spec.window
        or params.size != n_filt + n_bias
        or (use_bias and n_bias != num_filters)
    ):
        raise reader.error(
            f"expected params of {n_filt} + {n_bias} values for filters {list(filters)} while reading {what}, "
            f"found {params.size} values (num_filters={num_filters}, biases {list(biases)})",
            rec.offset,
        )
    rec.tensors["weight"] = params[:n_filt].reshape(filters)
    rec.tensors["bias"] = params[n_filt:] if use_bias else np.zeros(num_filters, np.float32)
    rec.attrs.update(num_filters=num_filters, stride=stride, padding=padding)
    return rec


def _read_affine(reader: DlibReader, spec: LayerSpec, what: str) -> LayerRecord:
    rec = LayerRecord(spec.kind, "", reader.offset)
    rec.version = reader.expect_string(f"{what} version", ("affine_", "affine_2", "bn_con2"))
    params = reader.read_tensor(f"{what} params").reshape(-1)
    gamma_shape = reader.read_alias_tensor(f"{what} gamma")
    beta_shape = reader.read_alias_tensor(f"{what} beta")
    n = math.prod(gamma_shape)
    if gamma_shape != beta_shape or params.size != 2 * n:
        raise reader.error(
            f"expected params of 2 x {n} values while reading {what}, found {params.size} (gamma "
            f"{list(gamma_shape)}, beta {list(beta_shape)})",
            rec.offset,
        )
    gamma, beta = params[:n], params[n:]
    if rec.version == "bn_con2":
        # A batch-norm layer: dlib folds its running statistics into an affine layer on load.
        for name in ("means", "invstds"):
            reader.read_tensor(f"{what} {name}")
        running_mean = reader.read_tensor(f"{what} running_means").reshape(-1)
        running_var = reader.read_tensor(f"{what} running_variances").reshape(-1)
        reader.read_uint(f"{what} num_updates")
        reader.read_uint(f"{what} running_stats_window_size")
        _skip_multipliers(reader, what)
        eps = reader.read_float(f"{what} eps")
        if running_mean.size != n or running_var.size != n:
            raise reader.error(
                f"expected {n} running statistics while reading {what}, found {running_mean.size}", rec.offset
            )
        gamma = (gamma / np.sqrt(running_var + np.float32(eps))).astype(np.float32)
        beta = (beta - gamma * running_mean).astype(np.float32)
        mode, disabled = 0, False
    else:
        mode = reader.expect_int(f"{what} mode", (0,))  # CONV_MODE: one gamma/beta per channel
        disabled = reader.read_bool(f"{what} disabled") if rec.version == "affine_2" else False
    if gamma_shape[1] != n:
        raise reader.error(
            f"expected a per-channel (CONV_MODE) gamma while reading {what}, found shape {list(gamma_shape)}",
            rec.offset,
        )
    rec.tensors.update(gamma=gamma, beta=beta)
    rec.attrs.update(mode=mode, disabled=disabled)
    return rec


def _read_relu(reader: DlibReader, spec: LayerSpec, what: str) -> LayerRecord:
    rec = LayerRecord(spec.kind, "", reader.offset)
    rec.version = reader.expect_string(f"{what} version", ("relu_", "relu_2"))
    rec.attrs["disabled"] = reader.read_bool(f"{what} disabled") if rec.version == "relu_2" else False
    return rec


def _read_pool(reader: DlibReader, spec: LayerSpec, what: str) -> LayerRecord:
    rec = LayerRecord(spec.kind, "", reader.offset)
    rec.version = reader.expect_string(f"{what} version", (f"{spec.kind}_2",))
    window, stride, padding = _read_window(reader, spec, what)
    rec.attrs.update(window=window, stride=stride, padding=padding)
    return rec


def _read_add_prev(reader: DlibReader, spec: LayerSpec, what: str) -> LayerRecord:
    rec = LayerRecord(spec.kind, "", reader.offset)
    rec.version = reader.expect_string(f"{what} version", ("add_prev_",))
    rec.attrs["tag"] = spec.tag
    return rec


def _read_fc(reader: DlibReader, spec: LayerSpec, what: str) -> LayerRecord:
    rec = LayerRecord(spec.kind, "", reader.offset)
    rec.version = reader.expect_string(f"{what} version", ("fc_2", "fc_3"))
    start = reader.offset
    num_outputs = reader.read_uint(f"{what} num_outputs")
    _check(reader, f"{what} num_outputs", spec.num_outputs, num_outputs, start)
    num_inputs = reader.read_uint(f"{what} num_inputs")
    params = reader.read_tensor(f"{what} params").reshape(-1)
    weights = reader.read_alias_tensor(f"{what} weights")
    reader.read_alias_tensor(f"{what} biases")
    reader.expect_int(f"{what} bias_mode (1 = FC_NO_BIAS)", (1,))
    _skip_multipliers(reader, what)
    if rec.version == "fc_3":
        reader.read_bool(f"{what} use_bias")
    if weights[:2] != (num_inputs, num_outputs) or params.size != num_inputs * num_outputs:
        raise reader.error(
            f"expected {num_inputs} x {num_outputs} weights while reading {what}, found params of "
            f"{params.size} values (weights {list(weights)})",
            rec.offset,
        )
    rec.tensors["weight"] = params.reshape(num_inputs, num_outputs)
    rec.attrs.update(num_inputs=num_inputs, num_outputs=num_outputs)
    return rec


def _read_loss(reader: DlibReader, spec: LayerSpec, what: str) -> LayerRecord:
    rec = LayerRecord(spec.kind, "", reader.offset)
    rec.version = reader.expect_string(f"{what} version", ("loss_metric_", "loss_metric_2"))
    if rec.version == "loss_metric_2":
        rec.attrs.update(
            margin=reader.read_float(f"{what} margin"), distance_threshold=reader.read_float(f"{what} dist_thresh")
        )
    else:
        rec.attrs.update(margin=0.1, distance_threshold=0.75)
    return rec


# Payload readers of the layers between the input and the loss.
_PAYLOAD_READERS = {
    "con": _read_con,
    "affine": _read_affine,
    "relu": _read_relu,
    "max_pool": _read_pool,
    "avg_pool": _read_pool,
    "add_prev": _read_add_prev,
    "fc_no_bias": _read_fc,
}


def _read_bookkeeping(reader: DlibReader, version: int, on_input: bool, what: str) -> None:
    """Skips what an ``add_layer`` writes after its layer's payload (run-time state, unused here)."""
    for name in ("this_layer_setup_called", "gradient_input_is_stale", "get_output_and_gradient_input_disabled"):
        reader.read_bool(f"{what} {name}")
    reader.read_tensor(f"{what} x_grad")
    reader.read_tensor(f"{what} cached_output")
    if on_input:
        reader.read_tensor(f"{what} grad_final")
        if version >= 3:
            reader.read_uint(f"{what} sample_expansion_factor", 4)
    elif version >= 2:
        reader.read_tensor(f"{what} params_grad")


def parse_network(data: bytes, architecture: Sequence[LayerSpec], source: str = "<bytes>") -> list[LayerRecord]:
    """Parses a serialized dlib network whose C++ type is described by ``architecture``.

    Args:
        data: the file's bytes.
        architecture: the layers in data-flow order: an ``input_rgb_image_sized``
            first, a loss layer last, and a computational layer (not a tag) right
            after the input.
        source: the file's name, for error messages, which name layers by their
            index in ``architecture``.

    Returns:
        One :class:`LayerRecord` per entry of ``architecture``, in the same order.

    Raises:
        DlibFormatError: the bytes are truncated, malformed or hold another architecture.
    """
    if (
        len(architecture) < 3
        or architecture[0].kind != "input_rgb_image_sized"
        or architecture[-1].kind != "loss_metric"
    ):
        raise ValueError("architecture must start with an input_rgb_image_sized layer and end with a loss_metric layer")
    if architecture[1].kind not in _COMPUTATIONAL:
        raise ValueError("the layer right after the input must be a computational layer, not a tag or skip")
    reader = DlibReader(data, source)
    body = architecture[1:-1]
    n = len(architecture)

    # The loss layer's version and payload come first, then the wrappers' version numbers, outermost first.
    reader.expect_int("the loss layer wrapper version (add_loss_layer)", (1,))
    loss = _read_loss(reader, architecture[-1], f"layer {n - 1} (loss_metric)")
    versions: dict[int, int] = {}
    for index in range(len(body), 0, -1):
        spec = body[index - 1]
        if spec.kind in _COMPUTATIONAL:
            allowed = (2, 3) if index == 1 else (1, 2)
            versions[index] = reader.expect_int(f"layer {index} ({spec.kind}) add_layer version", allowed)
        else:
            reader.expect_int(f"layer {index} ({spec.kind}{spec.tag}) version", (1,))

    # Then the input layer and the payloads, innermost first.
    records = [_read_input(reader, architecture[0], "layer 0 (input_rgb_image_sized)")]
    for index, spec in enumerate(body, start=1):
        what = f"layer {index} ({spec.kind})"
        if spec.kind in _COMPUTATIONAL:
            records.append(_PAYLOAD_READERS[spec.kind](reader, spec, what))
            _read_bookkeeping(reader, versions[index], index == 1, what)
        else:
            records.append(LayerRecord(spec.kind, "", reader.offset, {"tag": spec.tag}))
    records.append(loss)
    if reader.remaining:
        raise reader.error(f"expected the end of the file after the network, found {reader.remaining} more bytes")
    return records


def read_network_file(path: str | Path, architecture: Sequence[LayerSpec]) -> list[LayerRecord]:
    """Reads a dlib network file; see :func:`parse_network`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DlibFormatError: the file is truncated, malformed or holds another architecture.
    """
    path = Path(path)
    return parse_network(path.read_bytes(), architecture, source=str(path))
