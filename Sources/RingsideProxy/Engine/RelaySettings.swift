import Logging
import NIOCore
import NIOHTTP1
import RingsideCluster

#if canImport(Glibc)
import Glibc
#endif

/// What every connection of one listener shares: the settings, the router, and the bytes the engine writes on every
/// request, made once.
package final class RelaySettings: Sendable {
    let configuration: ProxyConfiguration
    let plane: ProxyPlane
    let metrics: ProxyMetrics
    let router: any ProxyRouter
    /// The backend's URL, as the engine's answers name it.
    let backend: String
    let logger: Logger
    /// Holds back repeated lines about the engine's own answers: one a status and second.
    let logLimiter = LogRateLimiter()
    let keyName: [UInt8]
    let viaLine: [UInt8]
    let protoAndViaLines: [UInt8]
    let nodeLine: [UInt8]
    let viaAndNodeLines: [UInt8]
    let hopLine: [UInt8]
    let deadlinePrefix: [UInt8]
    let finalLine: [UInt8]
    let requestIDPrefix: [UInt8]
    let headerTimeout: TimeAmount
    let idleTimeout: TimeAmount
    let requestTimeout: TimeAmount
    let connectTimeout: TimeAmount
    /// How often a connection checks its deadlines: one timer a connection, a clock read a request.
    let checkInterval: TimeAmount
    /// Where this listener's requests count while under way.
    let inFlightEntry: InFlightRequests.Entry

    package init(
        configuration: ProxyConfiguration,
        plane: ProxyPlane,
        metrics: ProxyMetrics,
        router: any ProxyRouter,
        backend: String,
        scheme: String = "http",
        logger: Logger = Logger(label: "ringside.proxy")
    ) {
        self.configuration = configuration
        self.backend = backend
        self.logger = logger
        self.plane = plane
        self.metrics = metrics
        self.router = router
        let name = configuration.nodeName
        keyName = Array(configuration.keyHeader.lowercased().utf8)
        viaLine = Array("via: 1.1 ringside-\(name)\r\n".utf8)
        nodeLine = Array("\(HeaderHygiene.nodeHeader): \(name)\r\n".utf8)
        protoAndViaLines = Array("x-forwarded-proto: \(scheme)\r\n".utf8) + viaLine
        viaAndNodeLines = viaLine + nodeLine
        hopLine = Array("\(HeaderHygiene.hopHeader): \(name)\r\n".utf8)
        deadlinePrefix = Array("\(HeaderHygiene.deadlineHeader): ".utf8)
        finalLine = Array("\(HeaderHygiene.finalHeader): 1\r\n".utf8)
        requestIDPrefix = Array("x-request-id: \(name)-".utf8)
        headerTimeout = TimeAmount(configuration.headerReadTimeout)
        idleTimeout = TimeAmount(configuration.idleTimeout)
        requestTimeout = TimeAmount(configuration.requestTimeout)
        connectTimeout = TimeAmount(configuration.connectTimeout)
        let shortest = min(headerTimeout, idleTimeout, requestTimeout).nanoseconds
        checkInterval = .nanoseconds(max(10_000_000, min(shortest / 8, 1_000_000_000)))
        inFlightEntry = plane == .app ? .appHTTP1 : .cluster
    }
}

extension RelaySettings {
    /// The lines a route adds to a request head, then the blank line that ends it: towards a peer, the hop headers
    /// (`x-ringside-hop`, the time left at `now`, and `x-ringside-final` on the last candidate).
    func routeLines(
        _ route: ProxyRoute,
        isLast: Bool,
        deadline: NIODeadline,
        now: NIODeadline,
        into head: inout ByteBuffer
    ) {
        if case .peer = route {
            head.writeBytes(hopLine)
            let remaining = max(0, (deadline - now).nanoseconds / 1_000_000)
            head.writeBytes(deadlinePrefix)
            HTTP1Parsing.writeDecimal(UInt64(remaining), into: &head)
            head.writeStaticString("\r\n")
            if isLast { head.writeBytes(finalLine) }
        }
        head.writeStaticString("\r\n")
    }

    /// How the engine's answers and logs name `route`: the backend's URL, or the peer's name and address.
    func describe(_ route: ProxyRoute) -> String {
        switch route {
        case .local: "the backend \(backend)"
        case .peer(let name, let address): "peer \(name) (\(address))"
        }
    }

    /// Counts and logs an answer the engine made itself: `status` with `message`, for a request on its way to `route`
    /// (nil when it had none) from `client`. 5xx answers are warnings (a backend or peer is in trouble), others
    /// notices; either way at most one line a status and second, saying how many were held back.
    func generated(_ status: Int, _ message: String, route: ProxyRoute?, client: SocketAddress?) {
        metrics.generated(status)
        let level: Logger.Level = status >= 500 ? .warning : .notice
        guard logger.logLevel <= level, let held = logLimiter.allow(String(status)) else { return }
        var metadata: Logger.Metadata = [
            "ringside.status": "\(status)",
            "ringside.reason": "\(message)",
            "ringside.plane": "\(plane == .app ? "app" : "cluster")",
            "ringside.client": "\(client.flatMap(HostAndPort.init)?.description ?? "-")",
        ]
        if let route { metadata["ringside.route"] = "\(describe(route))" }
        if held > 0 { metadata["ringside.suppressed"] = "\(held)" }
        logger.log(level: level, "answered a request itself", metadata: metadata)
    }

    /// Why a connection could not be made, in the system's words.
    func describe(_ error: any Error) -> String {
        #if os(Linux)
        if let failure = error as? LinuxSocket.Failure { return String(cString: strerror(failure.code)) }
        #endif
        return ConnectionFailureText.reason(error)
    }

    /// The engine's own answer: `status` with `message` as plain text.
    func answer(
        _ status: Int,
        _ message: String,
        headers: [(String, String)],
        closing: Bool,
        allocator: ByteBufferAllocator
    ) -> ByteBuffer {
        let reason = HTTPResponseStatus(statusCode: status).reasonPhrase
        let body = message + "\n"
        var out = allocator.buffer(capacity: 256 + body.utf8.count)
        out.writeString("HTTP/1.1 \(status) \(reason)\r\n")
        for (name, value) in headers { out.writeString("\(name): \(value)\r\n") }
        out.writeString("content-type: text/plain; charset=utf-8\r\ncontent-length: \(body.utf8.count)\r\n")
        out.writeBytes(nodeLine)
        if closing { out.writeStaticString("connection: close\r\n") }
        out.writeStaticString("\r\n")
        out.writeString(body)
        return out
    }
}

/// Which listener a connection came to, for metrics and logs.
package enum ProxyPlane: Sendable {
    /// The app listener: requests from the local application.
    case app
    /// The cluster port: requests other nodes forwarded.
    case cluster
}
