import NIOCore
import NIOHTTP1

/// Lets the engine speak to a backend that speaks HTTP/2 (an `h2c://` backend, a gRPC server): sits on an HTTP/2
/// stream under a ``ByteUpstream`` and turns the HTTP/1.1 request bytes the engine writes into the stream's request
/// parts, and the stream's response parts back into HTTP/1.1 bytes for the engine's response framer.
///
/// A stream carries one exchange. The request it reads is the engine's own rewrite (already checked), parsed again with
/// the engine's parser; hop-by-hop fields do not cross. Each response head says `Connection: close`, so that the engine
/// never keeps the stream for another request. A response without a length is chunked, with the stream's trailers
/// (gRPC's status) in the chunked trailer section; a request's chunked trailers become the stream's trailers.
final class HTTP2StreamBridge: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = HTTPClientRequestPart

    private enum Request {
        case head(ByteBuffer?)
        case length(remaining: Int)
        case chunked(ChunkedFraming, trailers: ByteBuffer?)
        case ended
    }

    private enum ResponseBody {
        case none
        case raw
        case chunked
    }

    private var request = Request.head(nil)
    private var fields: [HeaderField] = []
    private var requestIsHEAD = false
    private var responseBody = ResponseBody.none

    init() {}

    // MARK: Request bytes → stream parts

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        var bytes = unwrapOutboundIn(data)
        promise?.succeed()
        while bytes.readableBytes > 0 {
            guard take(&bytes, context: context) else {
                context.close(promise: nil)
                return
            }
        }
    }

    /// Takes what it can of `bytes`: false when they are not an HTTP/1.1 request (or come after its end).
    private func take(_ bytes: inout ByteBuffer, context: ChannelHandlerContext) -> Bool {
        switch request {
        case .head(var pending):
            if pending == nil {
                pending = bytes
            } else {
                pending!.writeBuffer(&bytes)
            }
            bytes.moveReaderIndex(to: bytes.writerIndex)
            guard var head = pending else { return false }
            let parsed = head.withUnsafeReadableBytes { HTTP1Parsing.parseHead($0, fields: &fields) }
            switch parsed {
            case .incomplete:
                request = .head(head)
                return true
            case .malformed:
                return false
            case .complete(let startLineEnd, let length):
                guard let parts = head.withUnsafeReadableBytes({ requestHead($0, startLineEnd: startLineEnd) }) else {
                    return false
                }
                context.write(wrapOutboundOut(.head(parts.head)), promise: nil)
                head.moveReaderIndex(forwardBy: length)
                bytes = head
                switch parts.body {
                case .length(0):
                    end(nil, context: context)
                case .length(let count):
                    request = .length(remaining: count)
                case .chunked:
                    request = .chunked(ChunkedFraming(), trailers: nil)
                }
                return true
            }
        case .length(let remaining):
            let count = min(remaining, bytes.readableBytes)
            let slice = bytes.readSlice(length: count)!
            context.write(wrapOutboundOut(.body(.byteBuffer(slice))), promise: nil)
            if remaining == count {
                end(nil, context: context)
            } else {
                request = .length(remaining: remaining - count)
            }
            return true
        case .chunked(var framing, var trailers):
            let base = bytes.readerIndex
            let consumed = bytes.withUnsafeReadableBytes { raw in
                framing.consume(raw) { piece in
                    switch piece {
                    case .data(let range):
                        let data = bytes.getSlice(at: base + range.lowerBound, length: range.count)!
                        context.write(wrapOutboundOut(.body(.byteBuffer(data))), promise: nil)
                    case .trailers(let range):
                        var section = bytes.getSlice(at: base + range.lowerBound, length: range.count)!
                        if trailers == nil { trailers = section } else { trailers!.writeBuffer(&section) }
                    }
                }
            }
            guard let (count, ended) = consumed else { return false }
            bytes.moveReaderIndex(forwardBy: count)
            if ended {
                end(trailers.map(Self.fields(of:)), context: context)
            } else {
                request = .chunked(framing, trailers: trailers)
            }
            return true
        case .ended:
            return false
        }
    }

    private func end(_ trailers: HTTPHeaders?, context: ChannelHandlerContext) {
        request = .ended
        context.write(wrapOutboundOut(.end(trailers.flatMap { $0.isEmpty ? nil : $0 })), promise: nil)
    }

    private enum Body {
        case length(Int)
        case chunked
    }

    /// The stream's request head for an HTTP/1.1 head: method, target and the fields that are not hop-by-hop.
    private func requestHead(_ bytes: UnsafeRawBufferPointer, startLineEnd: Int) -> (head: HTTPRequestHead, body: Body)?
    {
        let line = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[0..<startLineEnd]), as: UTF8.self)
        let words = line.split(separator: " ", omittingEmptySubsequences: false)
        guard words.count == 3, words[2] == "HTTP/1.1" || words[2] == "HTTP/1.0" else { return nil }
        requestIsHEAD = words[0] == "HEAD"
        var headers = HTTPHeaders()
        var body = Body.length(0)
        for field in fields {
            switch field.kind {
            case .contentLength:
                guard let length = HTTP1Parsing.decimal(bytes, field.value) else { return nil }
                body = .length(length)
            case .transferEncoding:
                body = .chunked
                continue
            case .te:
                // "trailers" is the one value HTTP/2 allows (gRPC sends it).
                guard HTTP1Parsing.listContains(bytes, field.value, "trailers") else { continue }
                headers.add(name: "te", value: "trailers")
                continue
            case let kind where kind.isHopByHop:
                continue
            default:
                break
            }
            headers.add(name: Self.text(bytes, field.name), value: Self.text(bytes, field.value))
        }
        if case .chunked = body { headers.remove(name: "content-length") }
        let head = HTTPRequestHead(
            version: .http1_1,
            method: HTTPMethod(rawValue: String(words[0])),
            uri: String(words[1]),
            headers: headers
        )
        return (head, body)
    }

    private static func text(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> String {
        String(decoding: UnsafeRawBufferPointer(rebasing: bytes[range]), as: UTF8.self)
    }

    /// The fields of a chunked body's trailer section (lines checked by ``ChunkedFraming``, ending in a blank line).
    private static func fields(of section: ByteBuffer) -> HTTPHeaders {
        var headers = HTTPHeaders()
        let text = String(buffer: section)
        for line in text.split(separator: "\r\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let value = line[line.index(after: colon)...].trimmingCharacters(in: " \t")
            headers.add(name: String(line[..<colon]), value: value)
        }
        return headers
    }

    // MARK: Stream parts → response bytes

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var out = context.channel.allocator.buffer(capacity: 256)
        switch unwrapInboundIn(data) {
        case .head(let head):
            let code = head.status.code
            out.writeString("HTTP/1.1 \(code) \(head.status.reasonPhrase)\r\n")
            for (name, value) in head.headers where !Self.isConnectionField(name) {
                out.writeString("\(name): \(value)\r\n")
            }
            if code >= 200 {
                if requestIsHEAD || code == 204 || code == 304 {
                    responseBody = .none
                } else if head.headers.contains(name: "content-length") {
                    responseBody = .raw
                } else {
                    responseBody = .chunked
                    out.writeStaticString("transfer-encoding: chunked\r\n")
                }
                out.writeStaticString("connection: close\r\n")
            }
            out.writeStaticString("\r\n")
        case .body(var body):
            switch responseBody {
            case .none:
                return
            case .raw:
                out = body
            case .chunked:
                guard body.readableBytes > 0 else { return }
                out.writeString(String(body.readableBytes, radix: 16))
                out.writeStaticString("\r\n")
                out.writeBuffer(&body)
                out.writeStaticString("\r\n")
            }
        case .end(let trailers):
            guard case .chunked = responseBody else { return }
            out.writeStaticString("0\r\n")
            for (name, value) in trailers ?? [:] where !Self.isConnectionField(name) {
                out.writeString("\(name): \(value)\r\n")
            }
            out.writeStaticString("\r\n")
        }
        context.fireChannelRead(wrapInboundOut(out))
    }

    /// Fields that describe an HTTP/1.1 connection or its framing, which an HTTP/2 response has no business carrying.
    private static func isConnectionField(_ name: String) -> Bool {
        switch name.lowercased() {
        case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade": true
        default: false
        }
    }
}

extension Substring {
    fileprivate func trimmingCharacters(in set: String) -> String {
        var slice = self[...]
        while let first = slice.first, set.contains(first) { slice = slice.dropFirst() }
        while let last = slice.last, set.contains(last) { slice = slice.dropLast() }
        return String(slice)
    }
}
