import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// A backend for tests: answers every request at once with `x-echo-*` headers describing it, then streams the request
/// body back as it arrives. `/status/N` answers with status N and no body.
public final class EchoBackend: ChannelInboundHandler, Sendable {
    public typealias InboundIn = HTTPServerRequestPart
    public typealias OutboundOut = HTTPServerResponsePart

    public init() {}

    /// Starts a backend on a free port of 127.0.0.1.
    public static func start() async throws -> (channel: any Channel, port: Int) {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(EchoBackend())
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        return (channel, channel.localAddress!.port!)
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let request):
            var headers = HTTPHeaders()
            headers.add(name: "x-echo-method", value: request.method.rawValue)
            headers.add(name: "x-echo-uri", value: request.uri)
            for (name, value) in request.headers { headers.add(name: "x-echo-h-\(name.lowercased())", value: value) }
            let status: HTTPResponseStatus
            if request.uri.hasPrefix("/status/"), let code = Int(request.uri.dropFirst(8)) {
                status = HTTPResponseStatus(statusCode: code)
                headers.add(name: "content-length", value: "0")
            } else {
                status = .ok
                if request.method == .HEAD { headers.add(name: "content-length", value: "5") }
            }
            context.writeAndFlush(
                wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))),
                promise: nil
            )
        case .body(let buffer):
            context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        case .end:
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
    }
}

/// A response as a test sees it.
public struct TestResponse {
    public var status: Int
    public var headers: [(String, String)]
    public var body: [UInt8]

    /// The first value of the header `name`, any case.
    public func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name.lowercased() }?.1 }

    /// Every value of the header `name`, any case.
    public func headers(_ name: String) -> [String] {
        headers.filter { $0.0.lowercased() == name.lowercased() }.map(\.1)
    }
}

/// Sends raw bytes to 127.0.0.1:`port` over a blocking socket and reads until the peer closes, a whole response has
/// arrived (by Content-Length, or chunked), or `timeout` passes. For tests that need malformed or slow requests.
public func rawExchange(
    port: Int,
    _ request: [UInt8],
    timeout: Duration = .seconds(5),
    untilClosed: Bool = false,
    pauseAfter: Int? = nil,
    pause: Duration = .zero
) -> (bytes: [UInt8], closed: Bool) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    guard connected == 0 else { return ([], true) }
    var wait = timeval(tv_sec: 0, tv_usec: 100_000)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, socklen_t(MemoryLayout<timeval>.size))
    let first = pauseAfter.map { min($0, request.count) } ?? request.count
    _ = request.prefix(first).withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    if first < request.count {
        usleep(UInt32(pause.components.seconds * 1_000_000 + pause.components.attoseconds / 1_000_000_000_000))
        _ = request.dropFirst(first).withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }
    var received: [UInt8] = []
    let deadline = ContinuousClock.now + timeout
    var chunk = [UInt8](repeating: 0, count: 65536)
    while ContinuousClock.now < deadline {
        let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if count == 0 { return (received, true) }
        if count > 0 {
            received += chunk.prefix(count)
            if !untilClosed && parseResponse(received) != nil { return (received, false) }
        }
    }
    return (received, false)
}

/// Parses one complete HTTP/1.1 response (Content-Length or chunked, or bodiless statuses); nil if incomplete.
public func parseResponse(_ bytes: [UInt8], bodiless: Bool = false) -> TestResponse? {
    guard let end = headEnd(bytes) else { return nil }
    let head = String(decoding: bytes[..<end], as: UTF8.self).split(separator: "\r\n").map(String.init)
    guard let statusLine = head.first, statusLine.count >= 12, let status = Int(statusLine.dropFirst(9).prefix(3))
    else { return nil }
    let headers = head.dropFirst().compactMap { line -> (String, String)? in
        guard let colon = line.firstIndex(of: ":") else { return nil }
        return (String(line[..<colon]), String(line[line.index(after: colon)...]).trimmingSpaces())
    }
    var response = TestResponse(status: status, headers: headers, body: [])
    let rest = Array(bytes[(end + 4)...])
    if bodiless || status == 204 || status == 304 || (100..<200).contains(status) { return response }
    if let length = response.header("content-length").flatMap(Int.init) {
        guard rest.count >= length else { return nil }
        response.body = Array(rest.prefix(length))
        return response
    }
    if response.header("transfer-encoding")?.lowercased() == "chunked" {
        var offset = 0
        var body: [UInt8] = []
        while true {
            guard let lineEnd = rest[offset...].firstIndex(of: 13), lineEnd + 1 < rest.count else { return nil }
            guard let size = Int(String(decoding: rest[offset..<lineEnd], as: UTF8.self), radix: 16) else { return nil }
            let start = lineEnd + 2
            if size == 0 {
                response.body = body
                return response
            }
            guard start + size + 2 <= rest.count else { return nil }
            body += rest[start..<(start + size)]
            offset = start + size + 2
        }
    }
    return nil
}

/// Where the head of an HTTP message in `bytes` ends: the index of its blank line.
public func headEnd(_ bytes: [UInt8]) -> Int? { bytes.firstRange(of: [13, 10, 13, 10])?.lowerBound }

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
public func eventually(timeout: Duration = .seconds(15), _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return condition()
}

/// A port of 127.0.0.1 that was free a moment ago.
public func freePort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
            bind(fd, pointer, length)
            return getsockname(fd, pointer, &length)
        }
    }
    return Int(UInt16(bigEndian: address.sin_port))
}

extension String {
    func trimmingSpaces() -> String {
        var text = Substring(self)
        while text.first == " " { text = text.dropFirst() }
        while text.last == " " { text = text.dropLast() }
        return String(text)
    }
}
