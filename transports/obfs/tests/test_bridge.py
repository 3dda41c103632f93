"""Bridge line (cert, iat) encoding and parsing of obfs addresses."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zeone_obfs.bridge import bridge_query, decode_cert, encode_cert, parse_params
from zeone_obfs.handshake import ServerIdentity

from zeone.net.transport import parse_address

DETERMINISTIC = settings(derandomize=True, deadline=None, max_examples=200)


def identity() -> ServerIdentity:
    return ServerIdentity(os.urandom(20), os.urandom(32))


def test_cert_roundtrip_and_shape() -> None:
    ident = identity()
    cert = encode_cert(ident)
    assert len(cert) == 70 and "=" not in cert
    assert decode_cert(cert) == ident
    # standard base64 alphabet and padding are accepted too
    assert decode_cert(cert.replace("-", "+").replace("_", "/") + "==") == ident


def test_address_roundtrip() -> None:
    ident = identity()
    address = parse_address("obfs://127.0.0.1:4100" + bridge_query(ident, 2))
    params = parse_params(address)
    assert params.server == ident and params.iat_mode == 2
    assert parse_params(parse_address(str(address))) == params


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        ("/path?cert=x", "takes no path"),
        ("?cert=abc", "must decode to 52 bytes"),
        ("?cert=!!!", "not base64"),
        ("?iat=3", "iat must be 0, 1 or 2"),
        ("?cert=a&cert=b", "repeats"),
        ("?foo=1", "unknown parameter"),
        ("?novalue", "malformed query"),
    ],
)
def test_bad_addresses_are_explained(suffix: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_params(parse_address("obfs://127.0.0.1:1" + suffix))


def test_no_cert_is_allowed_to_parse() -> None:
    assert parse_params(parse_address("obfs://127.0.0.1:1")).server is None


@DETERMINISTIC
@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=120))
def test_any_query_parses_or_raises_value_error(query: str) -> None:
    try:
        address = parse_address("obfs://127.0.0.1:1?" + query)
    except ValueError:
        return
    with contextlib.suppress(ValueError):
        parse_params(address)
