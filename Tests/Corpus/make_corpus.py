#!/usr/bin/env python3
"""Writes requests.jsonl: the differential corpus of client byte streams that differential.py sends through a live
Ringside node. Each line is {"name": ..., "bytes": ...}, the bytes as a Latin-1 string (one character a byte).

The streams are what request smuggling and desynchronisation are made of: CL.TE, TE.CL and TE.TE obfuscations, fields
that Connection names, obs-fold, bare LF and CR, NUL/CR/DEL in names and values, chunk sizes and extensions at their
edges, pipelining, absolute-form targets, HTTP/1.0 keep-alive, the key header, Host. Run it again after changing it;
the output is deterministic.
"""
import itertools
import json
import os

CASES = []


def add(name, data):
    if isinstance(data, str):
        data = data.encode("latin-1")
    CASES.append({"name": name, "bytes": data.decode("latin-1")})


def crlf(text):
    return text.replace("\n", "\r\n")


NEXT = crlf("GET /next HTTP/1.1\nHost: app\n\n")

# Plain requests that must pass unchanged but for the proxy's documented rewrites.
add("get", crlf("GET /plain?q=1 HTTP/1.1\nHost: app\nX-Shard-Key: k1\nAccept: */*\n\n"))
add("post-cl", crlf("POST /p HTTP/1.1\nHost: app\nContent-Length: 5\n\nhello"))
add("post-chunked", crlf("POST /c HTTP/1.1\nHost: app\nTransfer-Encoding: chunked\n\n5\nhello\n0\n\n"))
add("chunked-trailers", crlf("POST /t HTTP/1.1\nHost: app\nTransfer-Encoding: chunked\n\n3\nabc\n0\nX-Sum: 1\n\n"))
add("chunked-ext", crlf("POST /e HTTP/1.1\nHost: app\nTransfer-Encoding: chunked\n\n3;name=value\nabc\n0\n\n"))
add("head", crlf("HEAD /h HTTP/1.1\nHost: app\n\n"))
add("options-star", crlf("OPTIONS * HTTP/1.1\nHost: app\n\n"))
add("delete", crlf("DELETE /d HTTP/1.1\nHost: app\nContent-Length: 0\n\n"))
add("http10", crlf("GET /old HTTP/1.0\n\n"))
add("http10-host", crlf("GET /old HTTP/1.0\nHost: app\n\n"))
add("http10-keepalive", crlf("GET /ka HTTP/1.0\nHost: app\nConnection: keep-alive\n\n") + NEXT)
add("http10-body", crlf("POST /old HTTP/1.0\nHost: app\nContent-Length: 3\n\nabc"))
add("expect-continue", crlf("PUT /x HTTP/1.1\nHost: app\nExpect: 100-continue\nContent-Length: 2\n\nhi"))
add("absolute-form", crlf("GET http://shop.example/a?b HTTP/1.1\nHost: other\n\n"))
add("absolute-form-https", crlf("GET https://shop.example:8443 HTTP/1.1\nHost: x\n\n"))
add("absolute-form-chunked", crlf("POST http://a/up HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n\n1\nz\n0\n\n"))
add("leading-empty-lines", crlf("\n\nGET /after-empty HTTP/1.1\nHost: app\n\n"))
add("te-trailers", crlf("GET /te HTTP/1.1\nHost: app\nTE: trailers\nConnection: TE\n\n"))
add("connection-lists-private", crlf("GET /x HTTP/1.1\nHost: app\nConnection: X-Private\nX-Private: s\n\n"))
add("forwarded-for-chain", crlf("GET /x HTTP/1.1\nHost: app\nX-Forwarded-For: 1.2.3.4\n\n"))
add("spoofed-hop", crlf("GET /x HTTP/1.1\nHost: app\nX-Ringside-Hop: evil\nX-Ringside-Final: 1\n\n"))
add("later-minor", crlf("GET /later HTTP/1.7\nHost: app\n\n"))
add("websocket-upgrade-refused", crlf("GET /status/403 HTTP/1.1\nHost: app\nConnection: upgrade\nUpgrade: websocket\n\n"))
add("empty-key", crlf("GET /x HTTP/1.1\nHost: app\nX-Shard-Key:\n\n"))
add("two-keys", crlf("GET /x HTTP/1.1\nHost: app\nX-Shard-Key: a\nX-Shard-Key: b\n\n"))
add("long-header", crlf("GET /x HTTP/1.1\nHost: app\nX-Long: " + "a" * 8000 + "\n\n"))

# Pipelining.
for count in (2, 3, 5):
    add(f"pipeline-{count}", "".join(crlf(f"GET /p{i} HTTP/1.1\nHost: app\n\n") for i in range(count)))
add("pipeline-bodies", crlf("POST /a HTTP/1.1\nHost: app\nContent-Length: 3\n\nabcPOST /b HTTP/1.1\nHost: app\n"
                            "Transfer-Encoding: chunked\n\n2\nde\n0\n\nGET /c HTTP/1.1\nHost: app\n\n"))
add("pipeline-close", crlf("GET /a HTTP/1.1\nHost: app\nConnection: close\n\n") + NEXT)
add("pipeline-after-head", crlf("HEAD /a HTTP/1.1\nHost: app\n\n") + NEXT)

# CL.TE and TE.CL: both framings at once, in every order and spelling.
for te in ["chunked", "Chunked", "CHUNKED", " chunked", "chunked ", "\tchunked"]:
    add(f"cl-te-{te!r}", crlf(f"POST / HTTP/1.1\nHost: app\nContent-Length: 4\nTransfer-Encoding: {te}\n\n"
                                      "1\nZ\n0\n\n") + NEXT)
    add(f"te-cl-{te!r}", crlf(f"POST / HTTP/1.1\nHost: app\nTransfer-Encoding: {te}\nContent-Length: 30\n\n"
                                      "0\n\n") + NEXT)

# TE.TE: obfuscated transfer codings.
TE_VARIANTS = [
    "xchunked", "chunked, identity", "identity, chunked", "gzip, chunked", "chunked, chunked", "chunk", "chunked;x=1",
    "chunked\x0b", "\x0bchunked", "chunked\x00", "identity", "", ",chunked", "chunked,", "cHuNkEd", '"chunked"',
]
for variant in TE_VARIANTS:
    add(f"te-te-{variant!r}", crlf("POST / HTTP/1.1\nHost: app\nTransfer-Encoding: ") + variant
        + crlf("\n\n5\nhello\n0\n\n") + NEXT)
for first, second in itertools.product(["chunked", "identity", "x"], repeat=2):
    add(f"te-twice-{first}-{second}", crlf(f"POST / HTTP/1.1\nHost: app\nTransfer-Encoding: {first}\n"
                                           f"Transfer-Encoding: {second}\n\n0\n\n") + NEXT)
for name in ["Transfer-Encoding ", "Transfer_Encoding", " Transfer-Encoding", "Transfer-Encoding\t", "X-Transfer-Encoding",
             "Transfer-Encodings"]:
    add(f"te-name-{name!r}", crlf("POST / HTTP/1.1\nHost: app\nContent-Length: 5\n") + name
        + crlf(": chunked\n\n0\n\n") + NEXT)

# Content-Length in every shape.
for value in ["5", "05", "+5", "-5", "5 ", " 5", "5,5", "5, 5", "5,6", "0x5", "5.0", "", "99999999999999999999", "1e3",
              "\t5", "5\x00"]:
    add(f"cl-{value!r}", crlf("POST / HTTP/1.1\nHost: app\nContent-Length: ") + value + crlf("\n\nhello") + NEXT)
for first, second in [("5", "5"), ("5", "6"), ("0", "5")]:
    add(f"cl-twice-{first}-{second}", crlf(f"POST / HTTP/1.1\nHost: app\nContent-Length: {first}\n"
                                           f"Content-Length: {second}\n\nhello") + NEXT)
for name in ["Content-Length ", "Content_Length", "Content-Length\t", " Content-Length"]:
    add(f"cl-name-{name!r}", crlf("POST / HTTP/1.1\nHost: app\n") + name + crlf(": 5\n\nhello") + NEXT)

# Connection naming fields, framing ones among them.
for listed in ["content-length", "Content-Length", "transfer-encoding", "host", "Host", "close, content-length",
               "keep-alive, transfer-encoding", "x-shard-key", "x-forwarded-for", "upgrade", "te", "foo, bar"]:
    add(f"connection-{listed!r}", crlf(f"POST / HTTP/1.1\nHost: app\nContent-Length: {len(NEXT)}\nConnection: {listed}\n"
                                       "X-Shard-Key: k\nX-Forwarded-For: 9.9.9.9\n\n") + NEXT)
add("connection-names-te-chunked", crlf("POST / HTTP/1.1\nHost: app\nTransfer-Encoding: chunked\n"
                                        "Connection: transfer-encoding\n\n0\n\n") + NEXT)
add("proxy-connection", crlf("GET / HTTP/1.1\nHost: app\nProxy-Connection: keep-alive\n\n"))

# obs-fold, bare LF and CR, whitespace where it does not belong.
add("obs-fold-space", crlf("GET / HTTP/1.1\nHost: app\nX-A: b\n c\n\n"))
add("obs-fold-tab", crlf("GET / HTTP/1.1\nHost: app\nX-A: b\n\tc\n\n"))
add("obs-fold-te", crlf("POST / HTTP/1.1\nHost: app\nTransfer-Encoding: identity\n chunked\n\n0\n\n") + NEXT)
add("obs-fold-first-line", crlf("GET / HTTP/1.1\n Host: app\n\n"))
add("bare-lf-everywhere", "GET / HTTP/1.1\nHost: app\n\n")
add("bare-lf-one-field", "GET / HTTP/1.1\r\nHost: app\nX-A: b\r\n\r\n")
add("bare-lf-end", "GET / HTTP/1.1\r\nHost: app\r\n\n")
add("bare-cr", "GET / HTTP/1.1\rHost: app\r\n\r\n")
add("bare-cr-in-value", "GET / HTTP/1.1\r\nHost: app\r\nX-A: b\rc\r\n\r\n")
add("lf-cr", "GET / HTTP/1.1\n\rHost: app\r\n\r\n")
add("space-before-colon", crlf("GET / HTTP/1.1\nHost : app\n\n"))
add("tab-before-colon", crlf("GET / HTTP/1.1\nHost\t: app\n\n"))
add("no-colon", crlf("GET / HTTP/1.1\nHost: app\nNoColon\n\n"))
add("empty-name", crlf("GET / HTTP/1.1\nHost: app\n: value\n\n"))
add("double-space-request-line", crlf("GET  / HTTP/1.1\nHost: app\n\n"))
add("tab-request-line", crlf("GET\t/ HTTP/1.1\nHost: app\n\n"))
add("trailing-space-version", crlf("GET / HTTP/1.1 \nHost: app\n\n"))
add("lowercase-version", crlf("GET / http/1.1\nHost: app\n\n"))
add("version-2", crlf("GET / HTTP/2.0\nHost: app\n\n"))
add("version-09", crlf("GET /\n\n"))
add("no-version", crlf("GET / \nHost: app\n\n"))
add("method-lowercase", crlf("get / HTTP/1.1\nHost: app\n\n"))
add("method-odd", crlf("M-SEARCH / HTTP/1.1\nHost: app\n\n"))
add("method-bad", crlf("G(T / HTTP/1.1\nHost: app\n\n"))
add("target-space", crlf("GET /a b HTTP/1.1\nHost: app\n\n"))
add("target-fragment", crlf("GET /a#frag HTTP/1.1\nHost: app\n\n"))
add("target-userinfo", crlf("GET http://u@a/x HTTP/1.1\nHost: app\n\n"))
add("target-relative", crlf("GET a/b HTTP/1.1\nHost: app\n\n"))
add("connect", crlf("CONNECT a:443 HTTP/1.1\nHost: a:443\n\n"))

# Control characters and high bytes in names and values.
for label, byte in [("nul", "\x00"), ("cr", "\r"), ("del", "\x7f"), ("vt", "\x0b"), ("ff", "\x0c"), ("esc", "\x1b"),
                    ("bs", "\x08"), ("high", "\xe9"), ("ff-byte", "\xff")]:
    add(f"value-{label}", crlf("GET / HTTP/1.1\nHost: app\nX-A: a") + byte + crlf("b\n\n"))
    add(f"name-{label}", crlf("GET / HTTP/1.1\nHost: app\nX-") + byte + crlf("A: b\n\n"))
    add(f"target-{label}", "GET /a" + byte + crlf("b HTTP/1.1\nHost: app\n\n"))
    add(f"method-{label}", "GE" + byte + crlf("T / HTTP/1.1\nHost: app\n\n"))

# Host.
add("no-host", crlf("GET / HTTP/1.1\n\n"))
add("two-hosts", crlf("GET / HTTP/1.1\nHost: a\nHost: b\n\n"))
add("two-hosts-same", crlf("GET / HTTP/1.1\nHost: a\nHost: a\n\n"))
add("empty-host", crlf("GET / HTTP/1.1\nHost:\n\n"))
add("host-comma", crlf("GET / HTTP/1.1\nHost: a, b\n\n"))

# Chunk sizes, extensions, data framing and trailers at their edges.
CHUNKS = {
    "leading-zeros": "0005\nhello\n0\n\n",
    "upper-hex": "A\n0123456789\n0\n\n",
    "0x-prefix": "0x5\nhello\n0\n\n",
    "negative": "-5\nhello\n0\n\n",
    "plus": "+5\nhello\n0\n\n",
    "space-before-crlf": "5 \nhello\n0\n\n",
    "tab-before-crlf": "5\t\nhello\n0\n\n",
    "space-in-size": "5 5\nhello\n0\n\n",
    "empty-size": "\nhello\n0\n\n",
    "huge": "ffffffffffffffffff\nhello\n0\n\n",
    "16-digits": "0000000000000005\nhello\n0\n\n",
    "too-short-data": "5\nhell\n0\n\n",
    "too-long-data": "5\nhelloo\n0\n\n",
    "no-crlf-after-data": "5\nhello0\n\n",
    "lf-after-data": "5\r\nhello\n0\r\n\r\n",
    "bare-lf-size": "5\nhello\r\n0\r\n\r\n",
    "ext-empty": "5;\nhello\n0\n\n",
    "ext-quoted": '5;a="b;c"\nhello\n0\n\n',
    "ext-bare-lf": "5;a=b\nhello\r\n0\r\n\r\n",
    "ext-with-cr": "5;a=\rb\nhello\n0\n\n",
    "last-ext": "5\nhello\n0;x=y\n\n",
    "trailer": "5\nhello\n0\nX-T: v\n\n",
    "trailer-obs-fold": "5\nhello\n0\nX-T: v\n w\n\n",
    "trailer-no-colon": "5\nhello\n0\nbroken\n\n",
    "trailer-content-length": "5\nhello\n0\nContent-Length: 99\n\n",
    "zero-data-chunk": "0\n\n",
    "missing-last-crlf": "5\nhello\n0\n",
    "two-chunks": "2\nhe\n3\nllo\n0\n\n",
}
for label, body in CHUNKS.items():
    add(f"chunk-{label}", crlf("POST /chunks HTTP/1.1\nHost: app\nTransfer-Encoding: chunked\n\n")
        + body.replace("\r\n", "\x00").replace("\n", "\r\n").replace("\x00", "\n") + NEXT)
add("chunk-lf-only-everywhere", "POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n")

# The key header and the hop headers in odd shapes.
for shape in ["x-shard-key", "X-SHARD-KEY", "X-Shard-Key ", "X_Shard_Key", "X-Shard-Key\t"]:
    add(f"key-name-{shape!r}", crlf("GET / HTTP/1.1\nHost: app\n") + shape + crlf(": k7\n\n"))
for value in ["a b", " padded ", "\u00e9t\u00e9", "a,b", "k" * 2000]:
    add(f"key-value-{value[:10]!r}", crlf("GET / HTTP/1.1\nHost: app\nX-Shard-Key: ") + value + crlf("\n\n"))

# Bodies on methods and statuses that carry none, and early bytes after an upgrade.
add("get-with-body", crlf("GET /b HTTP/1.1\nHost: app\nContent-Length: 3\n\nabc") + NEXT)
add("head-with-body", crlf("HEAD /b HTTP/1.1\nHost: app\nContent-Length: 3\n\nabc") + NEXT)
add("upgrade-with-body", crlf("GET / HTTP/1.1\nHost: app\nConnection: upgrade\nUpgrade: x\nContent-Length: 3\n\nabc"))
add("upgrade-without-connection", crlf("GET / HTTP/1.1\nHost: app\nUpgrade: websocket\n\n") + NEXT)
add("h2c-upgrade", crlf("GET / HTTP/1.1\nHost: app\nConnection: Upgrade, HTTP2-Settings\nUpgrade: h2c\n"
                        "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\n\n"))
add("expect-other", crlf("PUT / HTTP/1.1\nHost: app\nExpect: 200-ok\nContent-Length: 2\n\nhi") + NEXT)
add("expect-continue-upper", crlf("PUT / HTTP/1.1\nHost: app\nExpect: 100-Continue\nContent-Length: 2\n\nhi") + NEXT)

# Sizes of the head around the limits.
add("many-fields", crlf("GET / HTTP/1.1\nHost: app\n" + "".join(f"X-F{i}: v\n" for i in range(300)) + "\n"))
add("huge-head", crlf("GET / HTTP/1.1\nHost: app\nX-Big: " + "b" * 70000 + "\n\n"))

# Byte-for-byte the same requests, split where a parser might lose track: every case above is sent whole; these are
# sent with a request that ends exactly where the next begins.
add("cl-exact-boundary", crlf("POST /a HTTP/1.1\nHost: app\nContent-Length: 1\n\nxGET /b HTTP/1.1\nHost: app\n\n"))
add("cl-zero-then-request", crlf("POST /a HTTP/1.1\nHost: app\nContent-Length: 0\n\nGET /b HTTP/1.1\nHost: app\n\n"))


# What the first probe of the engine found (a stall past one read of pipelined requests; fields a client may not set).
add("pipeline-400", crlf("GET /p HTTP/1.1\nHost: app\nX-Shard-Key: k1\n\n") * 400)
add("chunk-space-then-ext", crlf("POST / HTTP/1.1\nHost: app\nTransfer-Encoding: chunked\n\n1 ;a=b\nA\n0\n\n") + NEXT)
add("client-node-headers", crlf("GET / HTTP/1.1\nHost: app\nX-Ringside-Node: z\nX-Ringside-Not-Owner: z\n\n"))


def main():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "requests.jsonl")
    names = [case["name"] for case in CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    with open(path, "w", encoding="utf-8") as out:
        for case in CASES:
            out.write(json.dumps(case) + "\n")
    print(f"{len(CASES)} cases written to {path}")


if __name__ == "__main__":
    main()
