import NIOCore

/// What an upstream's response head says, for the relay.
struct ResponseFacts {
    /// The status code.
    var status: Int
    /// Where the status line ends in the head (before its CRLF).
    var startLineEnd: Int
    /// A 1xx response other than 101: a final response follows.
    var isInterim: Bool
    /// The body's declared length (ignored when a transfer encoding is present).
    var contentLength: Int?
    /// The body is chunked.
    var chunked: Bool
    /// The connection may carry another request after this response.
    var keepsConnection: Bool
    /// A peer's 421 saying it does not own the key.
    var notOwner: Bool
    /// It already names the node that served it.
    var hasNodeHeader: Bool
    /// It has a `Connection` field that may name other fields (anything but a lone `close` or `keep-alive`).
    var listsConnectionOptions: Bool

    /// The body runs until the connection closes (no length, not chunked).
    var bodyUntilClose: Bool { contentLength == nil && !chunked }

    /// Reads the status line and the fields that frame the body from a response head; nil when they make no sense.
    init?(head bytes: UnsafeRawBufferPointer, startLineEnd: Int, fields: [HeaderField]) {
        // "HTTP/1.x NNN reason"
        guard startLineEnd >= 12, HTTP1Parsing.has(bytes, at: 0, "HTTP/1."), bytes[8] == 32,
            let status = HTTP1Parsing.decimal(bytes, 9..<12), status >= 100,
            startLineEnd == 12 || bytes[12] == 32
        else { return nil }
        self.status = status
        self.startLineEnd = startLineEnd
        isInterim = status < 200 && status != 101
        contentLength = nil
        chunked = false
        // HTTP/1.0 connections are not kept.
        keepsConnection = bytes[7] != UInt8(ascii: "0")
        notOwner = false
        hasNodeHeader = false
        listsConnectionOptions = false
        var transferEncoding = false
        for field in fields {
            switch field.kind {
            case .contentLength:
                guard let length = HTTP1Parsing.decimal(bytes, field.value), contentLength ?? length == length else {
                    return nil
                }
                contentLength = length
            case .transferEncoding:
                transferEncoding = true
                chunked = HTTP1Parsing.listEnds(bytes, field.value, with: "chunked")
            case .connection:
                if HTTP1Parsing.equals(bytes, field.value, "close") {
                    keepsConnection = false
                } else if !HTTP1Parsing.equals(bytes, field.value, "keep-alive") {
                    listsConnectionOptions = true
                    if HTTP1Parsing.listContains(bytes, field.value, "close") { keepsConnection = false }
                }
            case .notOwner:
                notOwner = true
            case .node:
                hasNodeHeader = true
            default:
                break
            }
        }
        // A length with a transfer encoding: the encoding wins, and the connection is not reused (RFC 9112 §6.3).
        if transferEncoding, contentLength != nil {
            contentLength = nil
            keepsConnection = false
        }
    }
}

/// Finds where an upstream's responses begin and end in its bytes as they come: interim heads, the final head, and a
/// body framed by length, by chunks or by the connection's close (none for HEAD, 204 and 304), without copying or
/// decoding the body.
struct ResponseFramer {
    /// What the bytes held.
    enum Event {
        /// A 1xx head other than 101: the final response follows.
        case interim(ByteBuffer, ResponseFacts)
        /// The final head, with the body bytes that came with it.
        case head(ByteBuffer, ResponseFacts, body: ByteBuffer?)
        case body(ByteBuffer)
        /// The response is complete; whether the connection may carry another request.
        case end(reusable: Bool)
        /// The response makes no sense, or the connection ended inside it: the connection cannot be used any more.
        /// Why, for the client's 502.
        case failed(String)
    }

    private enum State {
        /// Between exchanges: nothing may arrive.
        case idle
        /// Waiting for a head; what came of it so far.
        case head(ByteBuffer?)
        case length(Int)
        case chunked(ChunkedFraming)
        case untilClose
        /// The body ended; `.end` is still to be reported.
        case ending
    }

    /// The largest response head accepted.
    static let maxHeadBytes = 64 << 10

    private var state = State.idle
    /// The fields of the head reported last.
    private(set) var fields: [HeaderField] = []
    private var expectsBody = true
    private var reusable = true

    /// Waits for a response; `expectsBody` is false for a HEAD request.
    mutating func begin(expectsBody: Bool) {
        self.expectsBody = expectsBody
        state = .head(nil)
        reusable = true
    }

    /// Stops waiting (the exchange was given up).
    mutating func reset() { state = .idle }

    /// Between exchanges.
    var isIdle: Bool {
        if case .idle = state { return true }
        return false
    }

    /// The next event in `buffer`, consuming what it covers; nil when more bytes are needed (what was read of a head
    /// is kept). Bytes after a complete response are left in `buffer`.
    mutating func next(_ buffer: inout ByteBuffer) -> Event? {
        switch state {
        case .idle:
            return nil
        case .ending:
            state = .idle
            return .end(reusable: reusable && buffer.readableBytes == 0)
        case .head(let received):
            if var received {
                received.writeBuffer(&buffer)
                buffer = received
                state = .head(nil)
            }
            return nextHead(&buffer)
        case .length, .chunked, .untilClose:
            guard buffer.readableBytes > 0 else { return nil }
            guard let body = takeBody(from: &buffer) else { return failed(Self.brokenChunks) }
            return body.map { .body($0) } ?? next(&buffer)
        }
    }

    /// The connection closed: the end of a body that runs until the close, otherwise a failure (nil between
    /// exchanges).
    mutating func closed() -> Event? {
        defer { state = .idle }
        switch state {
        case .idle: return nil
        case .untilClose, .ending: return .end(reusable: false)
        case .head: return .failed("the upstream closed before answering")
        case .length, .chunked: return .failed("the upstream closed in the middle of its response")
        }
    }

    private mutating func failed(_ reason: String) -> Event {
        state = .idle
        return .failed(reason)
    }

    static let brokenChunks = "the upstream's chunked framing is malformed"
    static let headTooLarge = "the upstream's response head is larger than \(maxHeadBytes >> 10) KiB"

    private mutating func nextHead(_ buffer: inout ByteBuffer) -> Event? {
        let parsed = buffer.withUnsafeReadableBytes { HTTP1Parsing.parseHead($0, fields: &fields) }
        switch parsed {
        case .incomplete:
            guard buffer.readableBytes <= Self.maxHeadBytes else { return failed(Self.headTooLarge) }
            if buffer.readableBytes > 0 {
                state = .head(buffer)
                buffer.moveReaderIndex(to: buffer.writerIndex)
            }
            return nil
        case .malformed(let reason):
            return failed("the upstream's response head is malformed: \(reason)")
        case .complete(let startLineEnd, let length):
            guard length <= Self.maxHeadBytes else { return failed(Self.headTooLarge) }
            let head = buffer.readSlice(length: length)!
            guard
                let facts = head.withUnsafeReadableBytes({
                    ResponseFacts(head: $0, startLineEnd: startLineEnd, fields: fields)
                })
            else { return failed("the upstream's status line or body length is malformed") }
            if facts.isInterim { return .interim(head, facts) }
            if !facts.keepsConnection { reusable = false }
            let hasBody = expectsBody && facts.status != 204 && facts.status != 304
            if !hasBody {
                state = .ending
            } else if let length = facts.contentLength {
                state = length == 0 ? .ending : .length(length)
            } else if facts.chunked {
                state = .chunked(ChunkedFraming())
            } else {
                state = .untilClose
                reusable = false
            }
            guard let body = takeBody(from: &buffer) else { return failed(Self.brokenChunks) }
            return .head(head, facts, body: body)
        }
    }

    /// Takes the part of `buffer` that belongs to the body by the current framing (nil if none), moving to `.ending`
    /// when the body ends with it; nil (outer) when the framing is broken.
    private mutating func takeBody(from buffer: inout ByteBuffer) -> ByteBuffer?? {
        switch state {
        case .length(let left):
            let slice = buffer.readSlice(length: min(left, buffer.readableBytes))!
            state = left == slice.readableBytes ? .ending : .length(left - slice.readableBytes)
            return .some(slice.readableBytes > 0 ? slice : nil)
        case .chunked(var framing):
            guard let (count, ended) = buffer.withUnsafeReadableBytes({ framing.consume($0) }) else { return nil }
            state = ended ? .ending : .chunked(framing)
            return .some(count > 0 ? buffer.readSlice(length: count)! : nil)
        case .untilClose:
            defer { buffer.moveReaderIndex(to: buffer.writerIndex) }
            return .some(buffer.readableBytes > 0 ? buffer : nil)
        case .idle, .head, .ending:
            return .some(nil)
        }
    }
}
