"""The protocol both sides import: routes, frames, and request signatures."""

import pytest

from sheepdog.wire import protocol


def test_index_specs_name_many_tasks_compactly():
    assert protocol.index_spec([1, 2, 3, 7, 9, 10]) == "1-3,7,9-10"
    assert protocol.index_spec(range(1, 10_001)) == "1-10000"


@pytest.mark.parametrize("route, names", [
    ("function", {}), ("results", {}), ("pull", {"worker": "2.17", "seq": 3, "size": 500}),
    ("heartbeat", {"worker": "1.1"}), ("killing", {"worker": "1.8"}),
    ("result", {"task": 7}), ("error", {"task": 1}), ("output", {"task": 2**40}),
    ("lost", {"worker": "1.2", "task": 3, "seq": 4}), ("release", {"worker": "3.1", "seq": 2}),
])
def test_every_route_is_parsed_back_from_the_path_it_builds(route, names):
    parsed = protocol.parse_path(protocol.path(42, route, **names))
    assert parsed.request_id == 42 and parsed.route == route
    assert {name: getattr(parsed, name) for name in names} == names
    assert route in protocol.ROUTES


@pytest.mark.parametrize("path", [
    "/requests/1/tasks/0/result", "/requests/1/tasks/1-3/result", "/requests/1/tasks/1",
    "/requests/1/workers/1/heartbeat", "/requests/1/workers/1.1/pull/1/0/1",
    "/requests/1/workers/1.1/pull/1/9999999/1", "/requests/1/workers/1.1/pull/0/5/1",
    "/requests/1/workers/1.1/pull/1/5/6", "/requests/1/workers/1.1/pull/1/5",
    "/requests/1/workers/1.1/start", "/requests/1/tasks/3/lost",
    "/requests/x/function", "/requests/1/function/", "/requests/1/tasks/9223372036854775808/error",
    "/requests/1/workers/1.1/lost/" + "9" * 5000 + "/1", "/requests/1/tasks/\u0661/result",
    "/requests/1/workers/1.1/lost/3", "/requests/1/workers/1.1/release",
    "/requests/1/workers/1.1/release/0", "/requests/1/workers/1.1/lost/3/0",
])
def test_paths_that_name_no_route_are_refused(path):
    """Some of these once made the server answer 500 (OverflowError, ValueError)."""
    assert protocol.parse_path(path) is None


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
