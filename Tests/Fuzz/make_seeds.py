#!/usr/bin/env python3
"""Writes seeds/: one fuzz program (see Sources/ringside-fuzz/EngineModel.swift) for each stream of the differential
corpus: the client sends the stream in pieces of up to 255 bytes, the connection is ready, and the upstream answers
three times. Deterministic; run it again after changing the corpus."""
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


def main():
    folder = os.path.join(HERE, "seeds")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(HERE, "..", "Corpus", "requests.jsonl"), encoding="utf-8") as corpus:
        cases = [json.loads(line) for line in corpus]
    for case in cases:
        data = program(case["bytes"].encode("latin-1"))
        name = hashlib.sha1(case["name"].encode()).hexdigest()[:16]
        with open(os.path.join(folder, name), "wb") as out:
            out.write(data)
    print(f"{len(cases)} seeds written to {folder}")


if __name__ == "__main__":
    main()
