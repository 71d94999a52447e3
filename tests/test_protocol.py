"""The protocol both sides import: task specs, frames, and request signatures."""

import pytest

from sheepdog import protocol


@pytest.mark.parametrize("indices", [[1], [1, 2, 3], [4, 9, 10, 11, 30], list(range(1, 10_001))])
def test_index_specs_round_trip_compactly(indices):
    spec = protocol.index_spec(indices)
    assert protocol.parse_index_spec(spec, 100_000) == indices
    assert len(spec) < 40


@pytest.mark.parametrize("spec", ["", "0", "3-1", "1-2-3", "a", "1,,2", "1-200001"])
def test_malformed_index_specs_are_refused(spec):
    assert protocol.parse_index_spec(spec, 100_000) is None


def test_frames_round_trip_and_refuse_truncation():
    frames = [(1, protocol.RESULT, b"abc"), (7, protocol.ERROR, b""), (2**40, protocol.ARGUMENTS, b"x" * 9)]
    body = b"".join(protocol.pack_frames(frames))
    assert protocol.unpack_frames(body) == frames
    with pytest.raises(ValueError):
        protocol.unpack_frames(body[:-1])


def test_small_parts_are_sent_joined_and_large_ones_as_they_are():
    big = memoryview(bytearray(2048))
    marker = object()  # not bytes-like: a file the server streams
    pieces = protocol.coalesce([b"a", b"b", big, b"c", marker, b"d" * 600, b"e" * 600], limit=1024)
    assert pieces == [b"ab", big, b"c", marker, b"d" * 600 + b"e" * 600]
    assert pieces[1] is big


@pytest.mark.parametrize("spec", ["9223372036854775808", "1,9223372036854775808",
                                  "1-9223372036854775808", "9" * 5000, "\u0661", "\u00b2"])
def test_index_specs_beyond_sqlite_integers_or_not_ascii_are_refused(spec):
    """Each of these once made the server answer 500 (OverflowError, ValueError)."""
    assert protocol.parse_index_spec(spec, 100_000) is None


def test_a_signature_covers_method_path_and_body():
    key = b"k" * 32
    headers = protocol.auth_headers(key, "POST", "/requests/1/tasks/2/result", b"body")
    authorization, digest = headers["Authorization"], headers[protocol.DIGEST_HEADER]
    assert protocol.signed_digest(key, "POST", "/requests/1/tasks/2/result",
                                  authorization, digest) == protocol.body_digest(b"body")
    for method, path, other_key in [("GET", "/requests/1/tasks/2/result", key),
                                    ("POST", "/requests/1/tasks/3/result", key),
                                    ("POST", "/requests/2/tasks/2/result", key),
                                    ("POST", "/requests/1/tasks/2/result", b"x" * 32)]:
        assert protocol.signed_digest(other_key, method, path, authorization, digest) is None
    other_digest = protocol.body_digest(b"forged")
    assert protocol.signed_digest(key, "POST", "/requests/1/tasks/2/result",
                                  authorization, other_digest) is None


def test_a_body_in_parts_has_the_digest_of_its_joined_bytes():
    parts = [b"ab", memoryview(bytearray(b"cd")), b""]
    assert protocol.body_digest(parts) == protocol.body_digest(b"abcd")
    assert protocol.body_digest(None) == protocol.body_digest(b"")
