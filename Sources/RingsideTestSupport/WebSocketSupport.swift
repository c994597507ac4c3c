import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket

#if canImport(Glibc)
import Glibc
#endif

/// A WebSocket backend for tests: accepts every upgrade and echoes text and binary frames.
public enum WebSocketEchoBackend {
    /// Starts a backend on a free port of 127.0.0.1.
    public static func start() async throws -> (channel: any Channel, port: Int) {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                let upgrader = NIOWebSocketServerUpgrader(
                    shouldUpgrade: { channel, _ in channel.eventLoop.makeSucceededFuture([:]) },
                    upgradePipelineHandler: { channel, _ in
                        channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHandler(WebSocketEcho())
                        }
                    }
                )
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                        withServerUpgrade: (upgraders: [upgrader], completionHandler: { _ in })
                    )
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        return (channel, channel.localAddress!.port!)
    }
}

final class WebSocketEcho: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text, .binary:
            let reply = WebSocketFrame(fin: true, opcode: frame.opcode, data: frame.unmaskedData)
            context.writeAndFlush(wrapOutboundOut(reply), promise: nil)
        case .connectionClose:
            context.close(promise: nil)
        default:
            break
        }
    }
}

/// What a WebSocket client saw: the handshake's status and headers, and the text of the first frame back.
public struct WebSocketResult {
    public var status: Int
    public var headers: [(String, String)]
    public var echoed: String?

    public func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name.lowercased() }?.1 }
}

/// Opens a WebSocket to 127.0.0.1:`port` with `X-Shard-Key: key`, sends `message` as a masked text frame, and reads
/// one frame back.
public func webSocketEcho(port: Int, key: String, message: String) -> WebSocketResult? {
    let handshake = """
        GET /chat HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Shard-Key: \(key)\r\n\r\n
        """
    let payload = Array(message.utf8)
    precondition(payload.count < 126)
    let mask: [UInt8] = [0x12, 0x34, 0x56, 0x78]
    let frame = [0x81, 0x80 | UInt8(payload.count)] + mask + payload.enumerated().map { $1 ^ mask[$0 % 4] }

    guard let fd = connectLoopback(port: port) else { return nil }
    defer { close(fd) }
    var wait = timeval(tv_sec: 3, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, socklen_t(MemoryLayout<timeval>.size))
    func sendAll(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }
    var received: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    func receive() -> Bool {
        let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if count > 0 { received += buffer.prefix(count) }
        return count > 0
    }
    sendAll(Array(handshake.utf8))
    while headEnd(received) == nil { guard receive() else { return nil } }
    let end = headEnd(received)!
    guard let head = parseResponse(Array(received[..<(end + 4)]), bodiless: true) else { return nil }
    var result = WebSocketResult(status: head.status, headers: head.headers, echoed: nil)
    guard head.status == 101 else { return result }
    received.removeFirst(end + 4)
    sendAll(frame)
    while received.count < 2 || received.count < 2 + Int(received[1] & 0x7F) { guard receive() else { return result } }
    result.echoed = String(decoding: received[2..<(2 + Int(received[1] & 0x7F))], as: UTF8.self)
    return result
}
