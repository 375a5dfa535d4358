"""The wire format: round trips, and every malformed message refused with a clear error."""

import json
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from physgrad.systems.remote.protocol import MAGIC, PREFIX, Limits, ProtocolError, decode, encode, error_reply


def test_round_trip_keeps_dtype_shape_and_values_bit_for_bit():
    arrays = {
        "a": torch.randn(3, 4, 5),
        "b": torch.tensor([1.0, float("nan"), float("inf"), -0.0], dtype=torch.float64),
        "empty": torch.zeros(0, 7),
    }
    header, out = decode(encode({"id": 7, "op": "measure"}, arrays))
    assert header == {"id": 7, "op": "measure"}
    for name, value in arrays.items():
        assert out[name].dtype == value.dtype and out[name].shape == value.shape
        assert value.numpy().tobytes() == out[name].numpy().tobytes()


def test_arrays_are_little_endian_on_the_wire():
    msg = encode({}, {"x": torch.tensor([1.0], dtype=torch.float32)})
    assert msg[-4:] == struct.pack("<f", 1.0)
    big = np.array([1.5, -2.0], dtype=">f8")  # a big-endian array is converted, not misread
    _, out = decode(encode({}, {"x": big}))
    assert out["x"].tolist() == [1.5, -2.0]


def test_no_pickle_only_float_dtypes():
    with pytest.raises(ProtocolError, match="dtype int64"):
        encode({}, {"x": torch.arange(3)})
    head = json.dumps({"arrays": [{"name": "x", "dtype": "object", "shape": [1]}]}).encode()
    with pytest.raises(ProtocolError, match="dtype 'object'"):
        decode(PREFIX.pack(MAGIC, 1, len(head)) + head + b"\0" * 8)


def _raw(header: dict, payload: bytes = b"", version: int = 1, magic: bytes = MAGIC) -> bytes:
    head = json.dumps(header).encode()
    return PREFIX.pack(magic, version, len(head)) + head + payload


@pytest.mark.parametrize(
    "message, match",
    [
        (b"", "shorter than"),
        (_raw({}, magic=b"HTTP"), "bad magic"),
        (_raw({}, version=2), "version 2 is not supported"),
        (PREFIX.pack(MAGIC, 1, 10**6) + b"{}", "header length"),
        (PREFIX.pack(MAGIC, 1, 3) + b"\xff\xfe{", "not valid UTF-8 JSON"),
        (PREFIX.pack(MAGIC, 1, 2) + b"[]", "must be a JSON object"),
        (_raw({"arrays": [{"name": "x", "dtype": "float32", "shape": [4]}]}, b"\0" * 8), "needs 16 bytes"),
        (_raw({"arrays": [{"name": "x", "dtype": "float32", "shape": [1]}]}, b"\0" * 8), "trailing byte"),
        (_raw({"arrays": [{"name": "x", "dtype": "float32", "shape": [-1]}]}), "shape must be"),
        (_raw({"arrays": [{"name": "x", "dtype": "float32", "shape": [1] * 9}]}, b"\0" * 4), "shape must be"),
        (_raw({"arrays": [{"name": "x", "dtype": "float32", "shape": [1], "x": 1}]}), "each array entry"),
        (_raw({"arrays": [{"name": "x", "dtype": "float32", "shape": [0]}] * 2}), "appears twice"),
        (_raw({"arrays": "no"}), "'arrays' must be a list"),
        (_raw({"x": 1}).replace(b"1}", b"NaN}"), "not valid UTF-8 JSON|does not allow"),
    ],
)
def test_malformed_messages_are_refused(message, match):
    with pytest.raises(ProtocolError, match=match):
        decode(message)


def test_size_limits():
    limits = Limits(max_message_bytes=1000, max_arrays=2)
    with pytest.raises(ProtocolError, match="exceeds the limit of 1000"):
        decode(encode({}, {"x": torch.zeros(300)}), limits)
    with pytest.raises(ProtocolError, match="at most 2 entries"):
        decode(encode({}, {str(i): torch.zeros(1) for i in range(3)}), limits)
    with pytest.raises(ValueError, match="positive integer"):
        Limits(max_probes=0)


def test_error_reply_names_the_error_and_drops_odd_ids():
    head, _ = decode(error_reply({"evil": 1}, ValueError("bad thing")))
    assert head == {"id": None, "ok": False, "error": "ValueError", "message": "bad thing"}


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_decoder(data):
    try:
        decode(data)
    except ProtocolError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 200), st.integers(0, 255))
def test_any_single_byte_mutation_is_refused_or_decodes_consistently(position, value):
    msg = bytearray(encode({"id": 1, "op": "ping"}, {"x": torch.arange(6, dtype=torch.float32).reshape(2, 3)}))
    msg[position % len(msg)] = value
    try:
        header, arrays = decode(bytes(msg))
    except ProtocolError:
        return
    assert isinstance(header, dict) and all(isinstance(v, torch.Tensor) for v in arrays.values())
