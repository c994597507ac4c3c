#!/usr/bin/env python3
"""Writes seeds/engine and seeds/forwarded: one fuzz program (see Sources/ringside-fuzz/EngineModel.swift) for each
stream of the differential corpus: the client sends the stream in pieces of up to 255 bytes, the connection is ready,
and the upstream answers three times. The forwarded programs are the same streams as a peer would send them to the
cluster port: the first request carries x-ringside-hop, and in turn x-ringside-final and x-ringside-deadline-ms.
Deterministic; run it again after changing the corpus. (The gossip and DNS seeds come from
`ringside-fuzz --write-seeds Tests/Fuzz/seeds`.)"""
import hashlib
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def program(data):
    out = bytearray()
    for start in range(0, len(data), 255):
        piece = data[start:start + 255]
        out += bytes([0, len(piece)]) + piece
    out += bytes([2])
    for _ in range(3):
        out += bytes([1, len(RESPONSE)]) + RESPONSE
    return bytes(out)


FORWARDED_FIELDS = [
    b"x-ringside-hop: node-a\r\n",
    b"x-ringside-hop: node-a\r\nx-ringside-final: 1\r\n",
    b"x-ringside-hop: node-a\r\nx-ringside-deadline-ms: 250\r\nX-Shard-Key: owned\r\n",
]


def forwarded(stream, index):
    """The stream with a peer's fields after its first line."""
    end = stream.find(b"\r\n")
    if end < 0:
        return stream
    return stream[:end + 2] + FORWARDED_FIELDS[index % len(FORWARDED_FIELDS)] + stream[end + 2:]


def main():
    with open(os.path.join(HERE, "..", "Corpus", "requests.jsonl"), encoding="utf-8") as corpus:
        cases = [json.loads(line) for line in corpus]
    for target in ("engine", "forwarded"):
        folder = os.path.join(HERE, "seeds", target)
        os.makedirs(folder, exist_ok=True)
        for index, case in enumerate(cases):
            stream = case["bytes"].encode("latin-1")
            if target == "forwarded":
                stream = forwarded(stream, index)
            name = hashlib.sha1(case["name"].encode()).hexdigest()[:16]
            with open(os.path.join(folder, name), "wb") as out:
                out.write(program(stream))
        print(f"{len(cases)} seeds written to {folder}")


if __name__ == "__main__":
    main()
