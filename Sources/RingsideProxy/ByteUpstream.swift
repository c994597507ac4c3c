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

/// The upstream side of the byte-level relay, on a pooled HTTP/1.1 connection to the backend or to a peer's cluster
/// port: writes the request bytes the ``HTTP1Relay`` gives it, and finds where the response's head and body end
/// (length, chunked, or until close; none for HEAD, 204 and 304) without copying or decoding the body. It stays on the
/// connection between exchanges.
final class ByteUpstream: ChannelDuplexHandler, RemovableChannelHandler, ReadGated {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum State {
        /// Between exchanges: nothing may arrive.
        case idle
        /// Waiting for the response head; what came of it so far.
        case head(ByteBuffer?)
        case length(Int)
        case chunked(ChunkedFraming)
        case untilClose
    }

    /// The largest response head accepted.
    static let maxHeadBytes = 64 << 10

    private var state = State.idle
    private var relay: HTTP1Relay?
    private(set) var context: ChannelHandlerContext?
    var gate = ReadGate()
    private var fields: [HeaderField] = []
    private var expectsBody = true
    private var reusable = true
    private var unflushed = false

    init() {}

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    /// Starts an exchange for `relay`; `expectsBody` is false for a HEAD request.
    func bind(_ relay: HTTP1Relay, expectsBody: Bool) {
        self.relay = relay
        self.expectsBody = expectsBody
        state = .head(nil)
        reusable = true
    }

    /// Ends this handler's part in the exchange early (the client went away, or the relay gave up on it).
    func detach() {
        relay = nil
        state = .idle
    }

    var isWritable: Bool { context?.channel.isWritable ?? false }

    func write(_ buffer: ByteBuffer) {
        context?.write(wrapOutboundOut(buffer), promise: nil)
        unflushed = true
    }

    /// Flushes what was written since the last flush, if anything.
    func flush() {
        guard unflushed else { return }
        unflushed = false
        context?.flush()
    }

    // MARK: Responses

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        switch state {
        case .idle:
            // Bytes nobody asked for: the connection cannot be trusted with another request.
            reusable = false
            context.close(promise: nil)
        case .head(let received):
            if var received {
                state = .idle
                received.writeBuffer(&buffer)
                buffer = received
            }
            readHeads(buffer, context: context)
        default:
            guard let (body, ended) = takeBody(from: &buffer) else { return fail(context: context) }
            if let body { relay?.upstreamBody(body) }
            if ended { finish(extra: buffer.readableBytes) }
        }
    }

    /// Takes the part of `buffer` that belongs to the body by the current framing: that part, and whether the body
    /// ended with it; nil when the framing is broken.
    private func takeBody(from buffer: inout ByteBuffer) -> (ByteBuffer?, Bool)? {
        switch state {
        case .length(let left):
            let slice = buffer.readSlice(length: min(left, buffer.readableBytes))!
            let ended = left == slice.readableBytes
            state = ended ? .idle : .length(left - slice.readableBytes)
            return (slice.readableBytes > 0 ? slice : nil, ended)
        case .chunked(var framing):
            guard let (count, ended) = buffer.withUnsafeReadableBytes({ framing.consume($0) }) else { return nil }
            state = ended ? .idle : .chunked(framing)
            return (count > 0 ? buffer.readSlice(length: count)! : nil, ended)
        case .untilClose:
            defer { buffer.moveReaderIndex(to: buffer.writerIndex) }
            return (buffer.readableBytes > 0 ? buffer : nil, false)
        case .idle:
            return (nil, true)
        case .head:
            return (nil, false)
        }
    }

    /// Parses response heads in `received` (interim ones, then the final one) and hands each to the relay, the final
    /// one with the body bytes that came with it.
    private func readHeads(_ received: ByteBuffer, context: ChannelHandlerContext) {
        var received = received
        while true {
            let parsed = received.withUnsafeReadableBytes { HTTP1Parsing.parseHead($0, fields: &fields) }
            switch parsed {
            case .incomplete:
                guard received.readableBytes <= Self.maxHeadBytes else { return fail(context: context) }
                state = .head(received.readableBytes > 0 ? received : nil)
                return
            case .malformed:
                return fail(context: context)
            case .complete(let startLineEnd, let length):
                let head = received.readSlice(length: length)!
                guard
                    let facts = head.withUnsafeReadableBytes({
                        ResponseFacts(head: $0, startLineEnd: startLineEnd, fields: fields)
                    })
                else { return fail(context: context) }
                if facts.isInterim {
                    state = .head(nil)
                    relay?.upstreamHead(head, facts: facts, fields: fields, body: nil)
                    guard case .head = state, received.readableBytes > 0 else { return }
                    continue
                }
                if !facts.keepsConnection { reusable = false }
                let hasBody = expectsBody && facts.status != 204 && facts.status != 304
                if !hasBody {
                    state = .idle
                } else if let length = facts.contentLength {
                    state = length == 0 ? .idle : .length(length)
                } else if facts.chunked {
                    state = .chunked(ChunkedFraming())
                } else {
                    state = .untilClose
                    reusable = false
                }
                guard let (body, ended) = takeBody(from: &received) else { return fail(context: context) }
                relay?.upstreamHead(head, facts: facts, fields: fields, body: body)
                if ended { finish(extra: received.readableBytes) }
                return
            }
        }
    }

    /// The response is complete; `extra` bytes after it mean the connection cannot be reused.
    private func finish(extra: Int) {
        state = .idle
        let relay = self.relay
        self.relay = nil
        relay?.upstreamEnd(reusable: reusable && extra == 0)
    }

    private func fail(context: ChannelHandlerContext) {
        let relay = self.relay
        self.relay = nil
        state = .idle
        context.close(promise: nil)
        relay?.upstreamFailed()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        relay?.upstreamReadComplete()
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        relay?.upstreamWritabilityChanged(isWritable: context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        let relay = self.relay
        self.relay = nil
        if case .untilClose = state {
            state = .idle
            relay?.upstreamEnd(reusable: false)
        } else {
            state = .idle
            relay?.upstreamFailed()
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    // MARK: Backpressure

    func read(context: ChannelHandlerContext) { gatedRead(context: context) }
}
