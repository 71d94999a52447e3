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


def test_a_header_in_the_sheepdog_scheme_is_accepted_up_to_200_characters_and_no_longer():
    key, path = b"k" * 32, "/requests/1/tasks/2/result"
    digest = protocol.body_digest(b"body")
    claim = "Sheepdog " + protocol.signature(key, "POST", path, digest)
    assert protocol.signed_digest(key, "POST", path, claim, digest) == digest
    longest = claim + " " * (200 - len(claim))  # trailing blanks are not part of the claim
    assert protocol.signed_digest(key, "POST", path, longest, digest) == digest
    assert protocol.signed_digest(key, "POST", path, longest + " ", digest) is None
    for scheme in ("sheepdog", "Bearer", "Sheepdog2"):
        assert protocol.signed_digest(key, "POST", path, claim.replace("Sheepdog", scheme, 1),
                                      digest) is None


WIRE_KINDS = ("ARGUMENTS", "RESULT", "ERROR", "STDOUT", "STDERR", "OUTPUT", "WAIT",
              "EXCEPTION", "BEGUN", "RAN", "VERSIONS")


def test_every_frame_kind_is_a_number_of_its_own_and_comes_back_as_sent():
    kinds = [getattr(protocol, name) for name in WIRE_KINDS]
    assert len(set(kinds)) == len(kinds)
    frames = [(number, kind, b"x" * number) for number, kind in enumerate(kinds, 1)]
    frames.append((1, protocol.RAN, protocol.SECONDS.pack(2.5)))
    assert protocol.unpack_frames(b"".join(protocol.pack_frames(frames))) == frames
    assert protocol.SECONDS.unpack(frames[-1][2]) == (2.5,)


@pytest.mark.parametrize("length", range(40))
def test_every_frame_ends_on_a_16_byte_boundary_so_the_next_payload_starts_aligned(length):
    parts = protocol.pack_frames([(1, protocol.RESULT, b"x" * length)])
    assert sum(map(len, parts)) % 16 == 0
    assert protocol.frame_bytes(1, protocol.RESULT, b"x" * length) == b"".join(parts)


def test_the_largest_failure_report_fits_in_what_every_server_accepts():
    """An error text and its output tails are posted whatever the server's body limit."""
    tails = protocol.pack_frames([(1, kind, b"o" * protocol.OUTPUT_TAIL_BYTES)
                                  for kind in (protocol.STDOUT, protocol.STDERR)])
    assert protocol.MAX_ERROR_BYTES <= protocol.REPORT_FLOOR_BYTES
    assert protocol.nbytes(tails) <= protocol.REPORT_FLOOR_BYTES
    assert {"error", "output", "lost"} <= set(protocol.FLOOR_ROUTES)


def test_a_signature_is_the_hmac_sha256_of_method_path_and_digest_on_lines_of_their_own():
    """The wire format, for a worker written in another language."""
    import hashlib
    import hmac

    key, digest = b"k" * 32, protocol.body_digest(None)
    assert digest == hashlib.sha256(b"").hexdigest()
    expected = hmac.new(key, f"POST\n/requests/1/results\n{digest}".encode(),
                        hashlib.sha256).hexdigest()
    assert protocol.signature(key, "POST", "/requests/1/results", digest) == expected


def test_a_claim_without_its_digest_or_a_digest_without_its_claim_is_refused():
    key, path = b"k" * 32, "/requests/1/function"
    headers = protocol.auth_headers(key, "GET", path)
    claim, digest = headers["Authorization"], headers[protocol.DIGEST_HEADER]
    assert protocol.signed_digest(key, "GET", path, claim, None) is None
    assert protocol.signed_digest(key, "GET", path, claim, "") is None
    assert protocol.signed_digest(key, "GET", path, None, digest) is None
    assert protocol.signed_digest(key, "GET", path, claim, digest[:63]) is None


def test_a_body_that_is_not_whole_frames_is_refused_saying_how():
    body = b"".join(protocol.pack_frames([(1, protocol.RESULT, b"abc")]))
    with pytest.raises(ValueError, match="^truncated frame$"):
        protocol.unpack_frames(body[:-1])
    with pytest.raises(ValueError, match="^bad frame$"):
        protocol.unpack_frames(protocol.frame_bytes(1, 99, b""))


def test_a_body_that_ends_with_an_empty_frame_is_read_whole():
    frames = [(1, protocol.RESULT, b"r"), (1, protocol.BEGUN, b"")]
    body = b"".join(protocol.pack_frames(frames))
    assert protocol.unpack_frames(body) == frames
    assert protocol.split_frames(body) == (frames, len(body))


def test_small_parts_are_joined_into_pieces_of_the_limit_and_the_count_starts_again_after_each():
    marker = object()  # not bytes-like: a file the server streams
    big = memoryview(bytearray(1024))
    a, b, c, x, y = b"a" * 1023, b"b", b"c" * 1023, b"x", b"y" * 5
    d, e, f, g, h = b"d" * 1023, b"e", b"f" * 600, b"g" * 600, b"h" * 600
    pieces = protocol.coalesce([a, b, c, x, y, marker, d, e, f, g, h, big], limit=1024)
    assert pieces == [a + b, c + x, y, marker, d + e, f + g, h, big]
    assert pieces[-1] is big  # a part of the limit's size is passed on as it is
    assert protocol.coalesce([b"a", b"b", b"c" * 1000]) == [b"ab" + b"c" * 1000]


def test_the_function_is_got_and_everything_else_posted():
    assert {route: method for route, method in protocol.ROUTES.items() if method != "POST"} == {
        "function": "GET"}
    assert set(protocol.ROUTES.values()) == {"GET", "POST"}


@pytest.mark.parametrize("route, names, missing", [
    ("pull", {"seq": 1, "size": 5}, "worker"), ("pull", {"worker": "1.1", "size": 5}, "seq"),
    ("pull", {"worker": "1.1", "seq": 1}, "size"), ("heartbeat", {}, "worker"),
    ("release", {"seq": 1}, "worker"), ("release", {"worker": "1.1"}, "seq"),
    ("lost", {"task": 1, "seq": 1}, "worker"), ("lost", {"worker": "1.1", "seq": 1}, "task"),
    ("lost", {"worker": "1.1", "task": 1}, "seq"), ("result", {}, "task"),
])
def test_a_path_missing_what_its_route_names_is_a_value_error_naming_it(route, names, missing):
    with pytest.raises(ValueError) as error:
        protocol.path(1, route, **names)
    assert str(error.value) == f"the path of the {route!r} route names its {missing}"


def test_a_route_that_does_not_exist_is_a_value_error_naming_it():
    with pytest.raises(ValueError) as error:
        protocol.path(1, "results/7")
    assert str(error.value) == "no route named 'results/7'"


def test_a_pull_asks_for_at_least_one_task_unless_it_says_otherwise():
    assert protocol.path(42, "pull", worker="1.1", seq=1, size=5) == (
        "/requests/42/workers/1.1/pull/1/5/1")


def test_the_largest_task_index_and_pull_are_accepted_and_one_more_is_not():
    assert protocol.parse_path(f"/requests/1/tasks/{2**62}/result").task == 2**62
    assert protocol.parse_path(f"/requests/1/tasks/{2**62 + 1}/result") is None
    pull = "/requests/1/workers/1.1/pull/1/{}/1"
    assert protocol.parse_path(pull.format(1_000_000)).size == 1_000_000
    assert protocol.parse_path(pull.format(1_000_001)) is None
