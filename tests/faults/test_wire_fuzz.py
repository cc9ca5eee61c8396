"""The wire format against anything: decoding raises MessageError and nothing else (property-based)."""

import contextlib
import random

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pipeline.vision.record  # noqa: F401 - registers the "faces" field, as every stage that decodes does
from pipeline.errors import MessageError
from pipeline.streaming.message import decode
from tests.faults.messages import CRAFTED_HEADERS, header, random_message

pytestmark = pytest.mark.faults

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),  # msgpack: 64 bits
    max_leaves=12,
)


def decodes_or_refuses(frames: list[bytes]) -> None:
    """Decoding may refuse (MessageError) but must not raise anything else; pytest fails on any other."""
    with contextlib.suppress(MessageError):
        decode(frames)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.lists(st.binary(max_size=64), max_size=3))
def test_random_bytes_raise_only_message_error(head, buffers):
    decodes_or_refuses([head, *buffers])


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["seq", "ts", "media_ts", "stamps", "stream", "meta", "fields", "image", "kind"]),
    values,
    st.lists(st.binary(max_size=64), max_size=3),
)
def test_a_header_with_any_value_in_any_field_raises_only_message_error(key, value, buffers):
    decodes_or_refuses([msgpack.packb(header(**{key: value})), *buffers])


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_any_faces_field_raises_only_message_error(value):
    decodes_or_refuses([msgpack.packb(header(fields={"faces": value}))])


@pytest.mark.parametrize("change", CRAFTED_HEADERS, ids=lambda c: ",".join(c)[:40])
def test_each_crafted_header_is_refused_or_harmless(change):
    decodes_or_refuses([msgpack.packb(header(**change)), b""])


def test_ten_thousand_random_messages_raise_only_message_error(figures):
    rng = random.Random(20261125)
    refused = 0
    for _ in range(10_000):
        try:
            decode(random_message(rng))
        except MessageError:
            refused += 1
    figures.append(
        f"decode: 10,000 random messages: {refused} refused with MessageError, {10_000 - refused} decoded, 0 other exceptions"
    )
