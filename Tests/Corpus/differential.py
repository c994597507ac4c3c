#!/usr/bin/env python3
"""Differential test of Ringside's HTTP/1.1 engine against a strict parser.

Every byte stream of requests.jsonl goes, on a connection of its own, through a live `ringside run` node (a cluster of
one, so every key is served locally) to a recording backend. The oracle is h11 (a strict HTTP/1.1 parser, from PyPI):
it reads the client's bytes as a server would. Each case passes when

  - the backend parses everything the proxy sent it with h11 (the proxy never sends a malformed or ambiguous request);
  - the requests the backend received are a prefix of the requests h11 finds in the client's bytes, each the same
    (method, target in origin form, body, and every end-to-end field in order) but for the proxy's documented
    rewrites: hop-by-hop fields and those Connection names removed, X-Forwarded-For/-Proto, Via and X-Request-Id set,
    an absolute target's authority as Host, Expect: 100-continue answered by the proxy, framing fields (the body is
    compared decoded);
  - when fewer requests reached the backend than h11 found, the proxy refused one of them: its last answer is a 4xx
    or 5xx status and it closed the connection.

Refusing what h11 would accept is allowed (Ringside is stricter in places: obs-fold, a Connection that names a
framing field, two key headers); forwarding what h11 refuses, or anything h11 did not see, is a failure.

Usage: differential.py --ringside PATH [--io epoll nio] [--only NAME]. Exits 1 on any failure, naming the case.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import h11

HERE = os.path.dirname(os.path.abspath(__file__))

# Fields the proxy removes, sets or may change on the way (see the README's "The engine").
REWRITTEN = {
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding", b"upgrade", b"trailer",
    b"proxy-authenticate", b"proxy-authorization", b"x-forwarded-for", b"x-forwarded-proto", b"via", b"x-request-id",
    b"host", b"expect", b"content-length", b"x-ringside-hop", b"x-ringside-final", b"x-ringside-deadline-ms",
    b"x-ringside-node", b"x-ringside-not-owner",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recorded:
    def __init__(self, method, target, headers, body):
        self.method, self.target, self.headers, self.body = method, target, headers, body

    def key(self):
        return (self.method, self.target, tuple(self.headers), self.body)

    def __repr__(self):
        return f"{self.method.decode()} {self.target.decode(errors='replace')} {self.headers} body={self.body[:40]!r}"


def normalize(request_event, body):
    """The parts of a request that must cross the proxy unchanged."""
    headers = list(request_event.headers)
    named = set()
    for name, value in headers:
        if name == b"connection":
            named |= {part.strip().lower() for part in value.split(b",")}
    kept = [(n, v) for n, v in headers if n not in REWRITTEN and n not in named]
    target = request_event.target
    for scheme in (b"http://", b"https://"):
        if target.lower().startswith(scheme):
            rest = target[len(scheme):]
            cut = min([i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0], default=len(rest))
            path = rest[cut:]
            target = path if path.startswith(b"/") else b"/" + path
    return Recorded(request_event.method, target, kept, body)


def oracle(data):
    """The requests h11 finds in a client's bytes, in order, until it needs more or refuses."""
    conn = h11.Connection(h11.SERVER)
    # RFC 9112 §2.2: a server may skip empty lines before a request; Ringside does, h11 does not.
    while data.startswith(b"\r\n"):
        data = data[2:]
    conn.receive_data(data)
    found = []
    current, body = None, b""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return found
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return found
        if isinstance(event, h11.Request):
            current, body = event, b""
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            found.append(normalize(current, body))
            try:
                conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                conn.send(h11.EndOfMessage())
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return found
        elif isinstance(event, h11.ConnectionClosed):
            return found


class Backend:
    """Answers every request 200 and records it, as h11 reads it; anything h11 cannot read is recorded as an error."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []
        self.errors = []
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(128)
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(client,), daemon=True).start()

    def serve(self, sock):
        conn = h11.Connection(h11.SERVER)
        current, body = None, b""
        with sock:
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as error:
                    with self.lock:
                        self.errors.append(f"the proxy sent what h11 refuses: {error}")
                    return
                if event is h11.NEED_DATA:
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        return
                    conn.receive_data(data)
                    if not data:
                        return
                    continue
                if event is h11.PAUSED:
                    # An upgrade: this backend refuses it, then closes.
                    sock.sendall(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    return
                if isinstance(event, h11.Request):
                    current, body = event, b""
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    with self.lock:
                        self.requests.append(normalize(current, body))
                    status = 403 if current.target.startswith(b"/status/403") else 200
                    sock.sendall(conn.send(h11.Response(status_code=status, headers=[("content-length", "2")])))
                    if current.method != b"HEAD":
                        sock.sendall(conn.send(h11.Data(data=b"ok")))
                    sock.sendall(conn.send(h11.EndOfMessage()))
                    if conn.our_state is h11.MUST_CLOSE:
                        return
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return

    def take(self):
        with self.lock:
            requests, errors = self.requests, self.errors
            self.requests, self.errors = [], []
            return requests, errors


def statuses(data):
    """The status codes of the responses in what the client received (interim ones included)."""
    found = []
    for line in data.split(b"\r\n"):
        if line.startswith(b"HTTP/1.") and len(line) >= 12 and line[9:12].isdigit():
            found.append(int(line[9:12]))
    return found


def exchange(port, data, quiet=0.4):
    """Sends `data` on a new connection and reads until the proxy closes or has been quiet for `quiet` seconds."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(data)
        sock.settimeout(quiet)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                return received, False
            except ConnectionResetError:
                return received, True
            if not chunk:
                return received, True
            received += chunk


def start_ringside(binary, io, backend_port):
    port, cluster, admin = free_port(), free_port(), free_port()
    process = subprocess.Popen(
        [binary, "run", "--node-name", "corpus", "--listen", f"127.0.0.1:{port}", "--cluster-listen",
         f"127.0.0.1:{cluster}", "--admin-listen", f"127.0.0.1:{admin}", "--backend", f"http://127.0.0.1:{backend_port}",
         "--app-io", io, "--header-read-timeout", "2s", "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as answer:
                if answer.status == 200:
                    return process, port
        except OSError:
            pass
        time.sleep(0.05)
    process.kill()
    raise SystemExit(f"ringside ({io}) did not become ready")


def check(case, port, backend):
    data = case["bytes"].encode("latin-1")
    expected = oracle(data)
    received, closed = exchange(port, data)
    # Let a request still on its way reach the backend before counting.
    time.sleep(0.05)
    seen, errors = backend.take()
    problems = list(errors)
    if len(seen) > len(expected):
        problems.append(f"the backend got {len(seen)} requests, h11 sees {len(expected)}: {seen}")
    for index, (got, want) in enumerate(zip(seen, expected)):
        if got.key() != want.key():
            problems.append(f"request {index} differs:\n      backend {got}\n      h11     {want}")
    if len(seen) < len(expected):
        codes = [code for code in statuses(received) if code >= 200]
        if not (closed and codes and codes[-1] >= 400):
            problems.append(f"{len(expected) - len(seen)} requests h11 sees were neither served nor refused with a close "
                            f"(statuses {codes}, closed {closed})")
    return problems


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ringside", required=True)
    parser.add_argument("--io", nargs="+", default=["epoll", "nio"])
    parser.add_argument("--only")
    arguments = parser.parse_args()
    with open(os.path.join(HERE, "requests.jsonl"), encoding="utf-8") as corpus:
        cases = [json.loads(line) for line in corpus]
    if arguments.only:
        cases = [case for case in cases if case["name"] == arguments.only]
    backend = Backend()
    failures = 0
    passed = 0
    for io in arguments.io:
        process, port = start_ringside(arguments.ringside, io, backend.port)
        try:
            for case in cases:
                problems = check(case, port, backend)
                if problems:
                    failures += 1
                    print(f"FAIL [{io}] {case['name']}")
                    for problem in problems:
                        print(f"    {problem}")
                else:
                    passed += 1
            if process.poll() is not None:
                failures += 1
                print(f"FAIL [{io}] ringside exited with {process.returncode}")
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(f"differential corpus: {len(cases)} cases x {len(arguments.io)} drivers")
    print(f"{passed} passed, {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
