import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import RingsideCluster

/// Keep-alive HTTP/1.1 connections, pooled per address and event loop, so that a request never leaves the event loop
/// of the connection it arrived on: to the backend, and to peers' cluster ports for forwarded requests.
final class HTTP1Pool: Sendable {
    private let connectTimeout: TimeAmount
    private let maxIdle: Int
    private let maxIdleTime: TimeAmount
    private let speaksBytes: Bool
    /// Per key, oldest first.
    private let idle = NIOLockedValueBox<[Key: [Idle]]>([:])

    private struct Idle {
        var channel: any Channel
        var since: NIODeadline
    }

    private struct Key: Hashable {
        var host: String
        var port: Int
        var loop: ObjectIdentifier
    }

    /// A pool whose connections carry NIO's HTTP/1.1 client handlers and an ``UpstreamHandler``, or, when
    /// `speaksBytes`, only a ``ByteUpstream`` (for the byte-level relay).
    init(connectTimeout: Duration, maxIdle: Int, maxIdleTime: Duration, speaksBytes: Bool = false) {
        self.connectTimeout = TimeAmount(connectTimeout)
        self.maxIdle = maxIdle
        self.maxIdleTime = TimeAmount(maxIdleTime)
        self.speaksBytes = speaksBytes
    }

    /// A kept connection to `host:port` on `eventLoop`, or a new one (always when `fresh`).
    func lease(host: String, port: Int, on eventLoop: any EventLoop, fresh: Bool) -> EventLoopFuture<UpstreamLease> {
        let key = Key(host: host, port: port, loop: ObjectIdentifier(eventLoop))
        while !fresh, let channel = idle.withLockedValue({ $0[key]?.popLast()?.channel }) {
            if channel.isActive { return eventLoop.makeSucceededFuture(lease(channel, key: key, reused: true)) }
        }
        return connect(host: host, port: port, on: eventLoop, forProxying: true).map {
            self.lease($0, key: key, reused: false)
        }
    }

    /// A new connection, not from the pool and never returned to it, for an upgrade: HTTP handlers only, and bytes
    /// that follow a 101 stay in the stream when they come off.
    func freshConnection(host: String, port: Int, on eventLoop: any EventLoop) -> EventLoopFuture<any Channel> {
        connect(host: host, port: port, on: eventLoop, forProxying: false)
    }

    /// A new connection with this pool's handlers when it is `forProxying`; otherwise with HTTP/1.1 client handlers
    /// only.
    private func connect(
        host: String,
        port: Int,
        on eventLoop: any EventLoop,
        forProxying: Bool
    ) -> EventLoopFuture<any Channel> {
        let bytesOnly = forProxying && speaksBytes
        return ClientBootstrap(group: eventLoop)
            .connectTimeout(connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if bytesOnly {
                        try channel.pipeline.syncOperations.addHandler(ByteUpstream())
                        return
                    }
                    try channel.pipeline.syncOperations.addHTTPClientHandlers(leftOverBytesStrategy: .forwardBytes)
                    if forProxying { try channel.pipeline.syncOperations.addHandler(UpstreamHandler()) }
                }
            }
            .connect(host: host, port: port)
    }

    private func lease(_ channel: any Channel, key: Key, reused: Bool) -> UpstreamLease {
        UpstreamLease(channel: channel, reused: reused) { [self] reusable in
            guard reusable, channel.isActive else {
                channel.close(promise: nil)
                return
            }
            let kept = idle.withLockedValue { idle in
                guard idle[key, default: []].count < maxIdle else { return false }
                idle[key, default: []].append(Idle(channel: channel, since: .now()))
                return true
            }
            if !kept { channel.close(promise: nil) }
        }
    }

    /// Closes the connections that have been idle for the pool's idle time at `now`.
    func closeIdle(at now: NIODeadline) {
        let old = idle.withLockedValue { idle in
            var old: [any Channel] = []
            for key in Array(idle.keys) {
                let entries = idle[key]!
                let keep = entries.firstIndex { now - $0.since < maxIdleTime } ?? entries.count
                old += entries[..<keep].map(\.channel)
                idle[key] = keep == entries.count ? nil : Array(entries[keep...])
            }
            return old
        }
        for channel in old { channel.close(promise: nil) }
    }

    /// Closes every idle connection.
    func shutdown() {
        let channels = idle.withLockedValue { idle in
            defer { idle = [:] }
            return idle.values.flatMap { $0.map(\.channel) }
        }
        for channel in channels { channel.close(promise: nil) }
    }
}

/// HTTP/2 connections (h2c, prior knowledge), one per address and event loop, each request a stream of its own: to
/// peers' cluster ports, and to a backend that speaks HTTP/2 (gRPC).
final class HTTP2Pool: Sendable {
    private let connectTimeout: TimeAmount
    private let connections = NIOLockedValueBox<[Key: EventLoopFuture<Connection>]>([:])

    private struct Key: Hashable {
        var address: String
        var loop: ObjectIdentifier
    }

    private struct Connection: Sendable {
        var channel: any Channel
        var multiplexer: NIOLoopBound<HTTP2StreamMultiplexer>
    }

    init(connectTimeout: Duration) { self.connectTimeout = TimeAmount(connectTimeout) }

    func lease(address: String, on eventLoop: any EventLoop) -> EventLoopFuture<UpstreamLease> {
        connection(to: address, on: eventLoop).flatMap { connection in
            let stream = eventLoop.makePromise(of: (any Channel).self)
            connection.multiplexer.value.createStreamChannel(promise: stream) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers([
                        HTTP2FramePayloadToHTTP1ClientCodec(httpProtocol: .http), UpstreamHandler(),
                    ])
                }
            }
            // A stream carries one exchange; it closes when both sides have ended.
            return stream.futureResult.map { channel in UpstreamLease(channel: channel) { _ in } }
        }
    }

    private func connection(to address: String, on eventLoop: any EventLoop) -> EventLoopFuture<Connection> {
        let key = Key(address: address, loop: ObjectIdentifier(eventLoop))
        return connections.withLockedValue { connections in
            if let existing = connections[key] { return existing }
            let connecting = connect(to: address, on: eventLoop)
            connections[key] = connecting
            connecting.whenComplete { [weak self] result in
                switch result {
                case .success(let connection):
                    connection.channel.closeFuture.whenComplete { [weak self] _ in self?.forget(key, connecting) }
                case .failure:
                    self?.forget(key, connecting)
                }
            }
            return connecting
        }
    }

    private func forget(_ key: Key, _ connection: EventLoopFuture<Connection>) {
        connections.withLockedValue { if $0[key] === connection { $0[key] = nil } }
    }

    private func connect(to address: String, on eventLoop: any EventLoop) -> EventLoopFuture<Connection> {
        guard let target = HostAndPort(address) else {
            return eventLoop.makeFailedFuture(ProxyRefusal(status: .badGateway, message: "bad peer address \(address)"))
        }
        return ClientBootstrap(group: eventLoop)
            .connectTimeout(connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connect(host: target.host, port: target.port)
            .flatMap { channel in
                channel.configureHTTP2Pipeline(mode: .client, inboundStreamInitializer: { $0.close() })
                    .map { Connection(channel: channel, multiplexer: NIOLoopBound($0, eventLoop: channel.eventLoop)) }
            }
    }

    /// Closes every connection.
    func shutdown() {
        let all = connections.withLockedValue { connections in
            defer { connections = [:] }
            return Array(connections.values)
        }
        for connection in all { connection.whenSuccess { $0.channel.close(promise: nil) } }
    }
}

/// The upstreams of a Ringside node: its backend for local routes, peers' cluster ports for the rest.
///
/// Forwarded requests travel over keep-alive HTTP/1.1 connections to the peer's cluster port (the port tells them
/// from gossip's HTTP/2 by their first bytes). A stream per request on a multiplexed HTTP/2 connection cost about
/// 150 µs of CPU per hop here, most of it creating and tearing down stream channels; see the README.
public final class ClusterUpstreams: UpstreamProvider {
    private let http1: HTTP1Pool
    private let bytes: HTTP1Pool
    private let http2: HTTP2Pool
    private let backendHost: String
    private let backendPort: Int
    private let backendSpeaksHTTP2: Bool
    /// Closes pooled connections idle for ``ProxyConfiguration/upstreamIdleTimeout``, a quarter of it at a time.
    private let idleSweep: RepeatedTask

    /// Upstreams for a backend at `backendHost:backendPort`, spoken to in HTTP/1.1 with keep-alive, or in HTTP/2
    /// (h2c, prior knowledge) when `backendSpeaksHTTP2`.
    public init(
        backendHost: String,
        backendPort: Int,
        backendSpeaksHTTP2: Bool = false,
        configuration: ProxyConfiguration
    ) {
        self.backendHost = backendHost
        self.backendPort = backendPort
        self.backendSpeaksHTTP2 = backendSpeaksHTTP2
        http1 = HTTP1Pool(
            connectTimeout: configuration.connectTimeout,
            maxIdle: configuration.maxIdleConnectionsPerUpstream,
            maxIdleTime: configuration.upstreamIdleTimeout
        )
        bytes = HTTP1Pool(
            connectTimeout: configuration.connectTimeout,
            maxIdle: configuration.maxIdleConnectionsPerUpstream,
            maxIdleTime: configuration.upstreamIdleTimeout,
            speaksBytes: true
        )
        http2 = HTTP2Pool(connectTimeout: configuration.connectTimeout)
        let pools = [http1, bytes]
        let sweep = TimeAmount(configuration.upstreamIdleTimeout).nanoseconds / 4
        idleSweep = MultiThreadedEventLoopGroup.singleton.next().scheduleRepeatedTask(
            initialDelay: .nanoseconds(sweep),
            delay: .nanoseconds(max(sweep, 10_000_000))
        ) { _ in
            let now = NIODeadline.now()
            for pool in pools { pool.closeIdle(at: now) }
        }
    }

    public var relaysBytes: Bool { !backendSpeaksHTTP2 }

    public var backend: HostAndPort? { HostAndPort(host: backendHost, port: backendPort) }

    public var backendURL: String {
        "\(backendSpeaksHTTP2 ? "h2c" : "http")://\(HostAndPort(host: backendHost, port: backendPort))"
    }

    public func leaseBytes(
        _ route: ProxyRoute,
        on eventLoop: any EventLoop,
        fresh: Bool
    ) -> EventLoopFuture<UpstreamLease> {
        connecting(route, on: eventLoop) { bytes.lease(host: $0, port: $1, on: eventLoop, fresh: fresh) }
    }

    /// `fresh` does not apply to an HTTP/2 backend: each request is a stream of its own.
    public func lease(_ route: ProxyRoute, on eventLoop: any EventLoop, fresh: Bool) -> EventLoopFuture<UpstreamLease> {
        if case .local = route, backendSpeaksHTTP2 {
            return http2.lease(address: HostAndPort(host: backendHost, port: backendPort).description, on: eventLoop)
        }
        return connecting(route, on: eventLoop) { http1.lease(host: $0, port: $1, on: eventLoop, fresh: fresh) }
    }

    public func freshConnection(_ route: ProxyRoute, on eventLoop: any EventLoop) -> EventLoopFuture<any Channel> {
        if case .local = route, backendSpeaksHTTP2 {
            return eventLoop.makeFailedFuture(
                ProxyRefusal(status: .notImplemented, message: "upgrades are not passed to an HTTP/2 backend")
            )
        }
        return connecting(route, on: eventLoop) { http1.freshConnection(host: $0, port: $1, on: eventLoop) }
    }

    /// `connect(host, port)` for the HTTP/1.1 endpoint of `route`: the backend, or a peer's cluster port.
    private func connecting<Value>(
        _ route: ProxyRoute,
        on eventLoop: any EventLoop,
        _ connect: (String, Int) -> EventLoopFuture<Value>
    ) -> EventLoopFuture<Value> {
        switch route {
        case .local:
            return connect(backendHost, backendPort)
        case .peer(_, let address):
            guard let target = HostAndPort(address) else {
                return eventLoop.makeFailedFuture(
                    ProxyRefusal(status: .badGateway, message: "bad peer address \(address)")
                )
            }
            return connect(target.host, target.port)
        }
    }

    /// Closes every pooled connection.
    public func shutdown() {
        idleSweep.cancel()
        http1.shutdown()
        bytes.shutdown()
        http2.shutdown()
    }
}
