import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix

/// An HTTP/2 (h2c) backend for tests, answering as a gRPC server would: headers at once, the request body echoed, and
/// trailers at the end: `grpc-status: 0`, and `x-echo-trailer` with the request's `x-check` trailer if it had one.
public final class TrailerBackend: ChannelInboundHandler {
    public typealias InboundIn = HTTPServerRequestPart
    public typealias OutboundOut = HTTPServerResponsePart

    public init() {}

    /// Starts a backend on a free port of 127.0.0.1.
    public static func start() async throws -> (channel: any Channel, port: Int) {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.configureHTTP2Pipeline(
                    mode: .server,
                    inboundStreamInitializer: { stream in
                        stream.eventLoop.makeCompletedFuture {
                            try stream.pipeline.syncOperations.addHandlers([
                                HTTP2FramePayloadToHTTP1ServerCodec(), TrailerBackend(),
                            ])
                        }
                    }
                ).map { _ in }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        return (channel, channel.localAddress!.port!)
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let request):
            let headers = HTTPHeaders([("content-type", "application/grpc"), ("x-echo-uri", request.uri)])
            context.writeAndFlush(
                wrapOutboundOut(.head(HTTPResponseHead(version: .http2, status: .ok, headers: headers))),
                promise: nil
            )
        case .body(let buffer):
            context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        case .end(let trailers):
            var answer = HTTPHeaders([("grpc-status", "0")])
            if let check = trailers?.first(name: "x-check") { answer.add(name: "x-echo-trailer", value: check) }
            context.writeAndFlush(wrapOutboundOut(.end(answer)), promise: nil)
        }
    }
}

/// A response read over HTTP/2.
public struct HTTP2TestResponse: Sendable {
    public var head: HTTPResponseHead
    public var body: [UInt8]
    public var trailers: HTTPHeaders?
}

/// Sends one request with `body` and `trailers` over HTTP/2 with prior knowledge to 127.0.0.1:`port`, and returns the
/// response with its trailers.
public func http2Exchange(
    port: Int,
    head: HTTPRequestHead,
    body: [UInt8] = [],
    trailers: HTTPHeaders? = nil
) async throws -> HTTP2TestResponse {
    let connection = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .connect(host: "127.0.0.1", port: port)
        .get()
    defer { connection.close(promise: nil) }
    let collector = ResponseCollector()
    let stream = try await connection.configureHTTP2Pipeline(mode: .client, inboundStreamInitializer: { $0.close() })
        .flatMap { multiplexer in
            multiplexer.createStreamChannel { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers([
                        HTTP2FramePayloadToHTTP1ClientCodec(httpProtocol: .http), collector,
                    ])
                }
            }
        }.get()
    stream.write(HTTPClientRequestPart.head(head), promise: nil)
    if !body.isEmpty { stream.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil) }
    try await stream.writeAndFlush(HTTPClientRequestPart.end(trailers)).get()
    return try await collector.response.futureResult.get()
}

/// Collects one response on a stream.
final class ResponseCollector: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPClientResponsePart

    private let state = NIOLockedValueBox<(head: HTTPResponseHead?, body: [UInt8], done: Bool)>((nil, [], false))
    private let ready = MultiThreadedEventLoopGroup.singleton.next().makePromise(of: HTTP2TestResponse.self)

    var response: EventLoopPromise<HTTP2TestResponse> { ready }

    /// Completes the response once, whichever comes first.
    private func complete(_ result: Result<HTTP2TestResponse, any Error>) {
        let first = state.withLockedValue { state in
            defer { state.done = true }
            return !state.done
        }
        if first { ready.completeWith(result) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): state.withLockedValue { $0.head = head }
        case .body(let buffer): state.withLockedValue { $0.body += Array(buffer.readableBytesView) }
        case .end(let trailers):
            let (head, body) = state.withLockedValue { ($0.head, $0.body) }
            if let head { complete(.success(HTTP2TestResponse(head: head, body: body, trailers: trailers))) }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { complete(.failure(error)) }

    func channelInactive(context: ChannelHandlerContext) { complete(.failure(ChannelError.ioOnClosedChannel)) }
}

/// Raw HTTP/2 bytes for tests that speak the protocol by hand: to send what no client library would, and to read
/// exactly what a server sent.
public enum RawHTTP2 {
    /// An HPACK integer (RFC 7541 §5.1) with a `prefixBits`-bit prefix, the prefix's other bits zero.
    public static func hpackInteger(_ value: Int, prefixBits: Int) -> [UInt8] {
        let limit = (1 << prefixBits) - 1
        guard value >= limit else { return [UInt8(value)] }
        var bytes = [UInt8(limit)]
        var rest = value - limit
        while rest >= 128 {
            bytes.append(UInt8(rest % 128 + 128))
            rest /= 128
        }
        return bytes + [UInt8(rest)]
    }

    /// The frames in `bytes` (which start at a frame).
    public static func frames(_ bytes: [UInt8]) -> [(type: UInt8, stream: Int, payload: [UInt8])] {
        var frames: [(type: UInt8, stream: Int, payload: [UInt8])] = []
        var index = 0
        while index + 9 <= bytes.count {
            let length = Int(bytes[index]) << 16 | Int(bytes[index + 1]) << 8 | Int(bytes[index + 2])
            let stream = bytes[index + 5..<index + 9].reduce(0) { $0 << 8 | Int($1) } & 0x7fff_ffff
            guard index + 9 + length <= bytes.count else { break }
            frames.append((bytes[index + 3], stream, Array(bytes[index + 9..<index + 9 + length])))
            index += 9 + length
        }
        return frames
    }

    /// HTTP/2's connection preface and an empty SETTINGS frame.
    public static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) + [0, 0, 0, 4, 0, 0, 0, 0, 0]

    /// The preface, then DATA on a stream that was never opened (a connection error, RFC 9113 §5.1), then 200 more
    /// such frames that a server should never read.
    public static let connectionErrorThenJunk: [UInt8] = {
        let data: [UInt8] = [0, 0, 1, 0, 0, 0, 0, 0, 1, UInt8(ascii: "x")]
        return preface + Array((0..<201).map { _ in data }.joined())
    }()

    /// The GOAWAY frames in `bytes`: the last stream each names and its error code.
    public static func goAways(_ bytes: [UInt8]) -> [(lastStream: Int, code: Int)] {
        frames(bytes).filter { $0.type == 7 && $0.payload.count >= 8 }.map { frame in
            let number = { (range: Range<Int>) in frame.payload[range].reduce(0) { $0 << 8 | Int($1) } }
            return (number(0..<4) & 0x7fff_ffff, number(4..<8))
        }
    }
}
