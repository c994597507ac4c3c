import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import RingsideCluster

/// Keep-alive HTTP/1.1 connections, pooled per address and event loop, so that a request never leaves the event loop
/// of the connection it arrived on: to the backend, and to peers' cluster ports for forwarded requests.
///
/// Connections per address and event loop are bounded (``ProxyConfiguration/maxConnectionsPerUpstream``), as Envoy's
/// circuit breakers bound them: past the bound a lease waits for a connection to come back or close, in a queue of
/// ``ProxyConfiguration/maxPendingPerUpstream``, and past that it fails at once with ``UpstreamBusy`` (503).
final class HTTP1Pool: Sendable {
    private let connectTimeout: TimeAmount
    private let maxIdle: Int
    private let maxIdleTime: TimeAmount
    private let maxOpen: Int
    private let maxWaiting: Int
    private let speaksBytes: Bool
    private let slots = NIOLockedValueBox<[Key: Slot]>([:])

    private struct Key: Hashable {
        var host: String
        var port: Int
        var loop: ObjectIdentifier
        var security: UpstreamSecurity?
    }

    private struct Idle {
        var channel: any Channel
        var since: NIODeadline
    }

    private struct Waiter {
        var promise: EventLoopPromise<UpstreamLease>
        var eventLoop: any EventLoop
    }

    /// One address on one event loop: its idle connections (oldest first), how many are open or opening, and the
    /// leases waiting for one.
    private struct Slot {
        var idle: [Idle] = []
        var open = 0
        var waiting: [Waiter] = []
    }

    /// A pool whose connections carry NIO's HTTP/1.1 client handlers and an ``UpstreamHandler``, or, when
    /// `speaksBytes`, only a ``ByteUpstream`` (for the engine's NIO driver).
    init(configuration: ProxyConfiguration, speaksBytes: Bool = false) {
        connectTimeout = TimeAmount(configuration.connectTimeout)
        maxIdle = configuration.maxIdleConnectionsPerUpstream
        maxIdleTime = TimeAmount(configuration.upstreamIdleTimeout)
        maxOpen = configuration.maxConnectionsPerUpstream
        maxWaiting = configuration.maxPendingPerUpstream
        self.speaksBytes = speaksBytes
    }

    private enum Decision {
        case reuse(any Channel)
        case connect
        case wait(EventLoopFuture<UpstreamLease>)
        case busy(open: Int, waiting: Int)
    }

    /// A kept connection to `host:port` on `eventLoop`, or a new one (always when `fresh`, unless the bound is
    /// reached), or the next one free.
    /// With `security`, a new connection is TLS, handed out once its handshake is done.
    func lease(
        host: String,
        port: Int,
        security: UpstreamSecurity? = nil,
        on eventLoop: any EventLoop,
        fresh: Bool
    ) -> EventLoopFuture<UpstreamLease> {
        let key = Key(host: host, port: port, loop: ObjectIdentifier(eventLoop), security: security)
        let decision = slots.withLockedValue { slots -> Decision in
            var slot = slots[key, default: Slot()]
            defer { slots[key] = slot }
            while !fresh, let entry = slot.idle.popLast() {
                if entry.channel.isActive { return .reuse(entry.channel) }
            }
            if slot.open < maxOpen {
                slot.open += 1
                return .connect
            }
            guard slot.waiting.count < maxWaiting else { return .busy(open: slot.open, waiting: slot.waiting.count) }
            let promise = eventLoop.makePromise(of: UpstreamLease.self)
            slot.waiting.append(Waiter(promise: promise, eventLoop: eventLoop))
            return .wait(promise.futureResult)
        }
        switch decision {
        case .reuse(let channel):
            return eventLoop.makeSucceededFuture(lease(channel, key: key, reused: true))
        case .connect:
            return open(key, on: eventLoop)
        case .wait(let future):
            return future
        case .busy(let open, let waiting):
            return eventLoop.makeFailedFuture(UpstreamBusy(open: open, waiting: waiting))
        }
    }

    /// Opens a connection counted in `key`'s slot already; when it closes (or fails to open), the slot has room for
    /// the next lease waiting.
    private func open(_ key: Key, on eventLoop: any EventLoop) -> EventLoopFuture<UpstreamLease> {
        let opening = connect(host: key.host, port: key.port, security: key.security, on: eventLoop)
        opening.whenComplete { result in
            switch result {
            case .success(let channel): channel.closeFuture.whenComplete { _ in self.closed(key) }
            case .failure: self.closed(key)
            }
        }
        return opening.map { self.lease($0, key: key, reused: false) }
    }

    /// A connection of `key` closed: the first lease waiting gets a new one.
    private func closed(_ key: Key) {
        let waiter = slots.withLockedValue { slots -> Waiter? in
            guard var slot = slots[key] else { return nil }
            defer { slots[key] = slot.open == 0 && slot.idle.isEmpty && slot.waiting.isEmpty ? nil : slot }
            slot.open -= 1
            slot.idle.removeAll { !$0.channel.isActive }
            guard !slot.waiting.isEmpty else { return nil }
            slot.open += 1
            return slot.waiting.removeFirst()
        }
        if let waiter { open(key, on: waiter.eventLoop).cascade(to: waiter.promise) }
    }

    /// A new connection with this pool's handlers.
    private func connect(
        host: String,
        port: Int,
        security: UpstreamSecurity?,
        on eventLoop: any EventLoop
    ) -> EventLoopFuture<any Channel> {
        let (speaksBytes, timeout) = (speaksBytes, connectTimeout)
        return ClientBootstrap(group: eventLoop)
            .connectTimeout(connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if speaksBytes {
                        try channel.pipeline.syncOperations.addHandler(ByteUpstream())
                        return
                    }
                    try channel.pipeline.syncOperations.addHTTPClientHandlers(leftOverBytesStrategy: .forwardBytes)
                    try channel.pipeline.syncOperations.addHandler(UpstreamHandler())
                }
            }
            .connect(host: host, port: port)
            .flatMap { @Sendable (channel: any Channel) -> EventLoopFuture<any Channel> in
                guard let security else { return channel.eventLoop.makeSucceededFuture(channel) }
                return security.tls.connect(
                    channel,
                    role: security.role,
                    serverHostname: security.serverHostname,
                    expectedName: security.expectedName,
                    timeout: timeout
                ).map { channel }
            }
    }

    private func lease(_ channel: any Channel, key: Key, reused: Bool) -> UpstreamLease {
        UpstreamLease(channel: channel, reused: reused) { [self] reusable in
            guard reusable, channel.isActive else {
                channel.close(promise: nil)
                return
            }
            // To the first lease waiting, or to the idle ones while there is room.
            let (waiter, kept) = slots.withLockedValue { slots -> (Waiter?, Bool) in
                var slot = slots[key, default: Slot()]
                defer { slots[key] = slot }
                if !slot.waiting.isEmpty { return (slot.waiting.removeFirst(), true) }
                guard slot.idle.count < maxIdle else { return (nil, false) }
                slot.idle.append(Idle(channel: channel, since: .now()))
                return (nil, true)
            }
            if let waiter {
                waiter.promise.succeed(lease(channel, key: key, reused: true))
            } else if !kept {
                channel.close(promise: nil)
            }
        }
    }

    /// Closes the connections that have been idle for the pool's idle time at `now`.
    func closeIdle(at now: NIODeadline) {
        let old = slots.withLockedValue { slots in
            var old: [any Channel] = []
            for key in Array(slots.keys) {
                let entries = slots[key]!.idle
                let keep = entries.firstIndex { now - $0.since < maxIdleTime } ?? entries.count
                old += entries[..<keep].map(\.channel)
                slots[key]!.idle = Array(entries[keep...])
            }
            return old
        }
        for channel in old { channel.close(promise: nil) }
    }

    /// Closes every idle connection and fails the leases waiting.
    func shutdown() {
        let (channels, waiters) = slots.withLockedValue { slots in
            defer { slots = [:] }
            return (slots.values.flatMap { $0.idle.map(\.channel) }, slots.values.flatMap(\.waiting))
        }
        for channel in channels { channel.close(promise: nil) }
        for waiter in waiters { waiter.promise.fail(ChannelError.ioOnClosedChannel) }
    }
}

/// How an upstream connection is secured: TLS of `tls` in `role`, sending `serverHostname` (SNI, and the name checked
/// by the usual host-name rules), or requiring the certificate to carry `expectedName` exactly (a peer's node name).
struct UpstreamSecurity: Hashable, Sendable {
    var tls: PlaneTLS
    var role: TLSRole
    var serverHostname: String?
    var expectedName: String?

    static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.tls === rhs.tls && lhs.role == rhs.role && lhs.serverHostname == rhs.serverHostname
            && lhs.expectedName == rhs.expectedName
    }

    func hash(into hasher: inout Hasher) {
        hasher.combine(ObjectIdentifier(tls))
        hasher.combine(serverHostname)
        hasher.combine(expectedName)
    }
}

/// The connections to an upstream are at their bound and too many requests wait for one: answered 503.
struct UpstreamBusy: Error, CustomStringConvertible {
    var open: Int
    var waiting: Int
    var description: String { "\(open) connections open and \(waiting) requests waiting for one" }
}

/// HTTP/2 connections (h2c, prior knowledge) to a backend that speaks HTTP/2 (gRPC), one per address and event loop,
/// each request a stream of its own. (Peers are reached over HTTP/1.1 for forwards, and by the cluster node's own
/// connections for gossip.)
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

    /// A new stream to `address` on `eventLoop` that speaks HTTP/1-style parts (for ``UpstreamHandler``), or HTTP/1.1
    /// bytes (for a ``ByteUpstream``, through an ``HTTP2StreamBridge``) when `speaksBytes`.
    func lease(
        address: String,
        on eventLoop: any EventLoop,
        speaksBytes: Bool = false
    ) -> EventLoopFuture<UpstreamLease> {
        connection(to: address, on: eventLoop).flatMap { connection in
            let stream = eventLoop.makePromise(of: (any Channel).self)
            connection.multiplexer.value.createStreamChannel(promise: stream) { channel in
                channel.eventLoop.makeCompletedFuture {
                    let codec = HTTP2FramePayloadToHTTP1ClientCodec(httpProtocol: .http)
                    try channel.pipeline.syncOperations.addHandlers(
                        speaksBytes ? [codec, HTTP2StreamBridge(), ByteUpstream()] : [codec, UpstreamHandler()]
                    )
                }
            }
            // A stream carries one exchange: given back, it closes (a no-op once both sides have ended; a reset of a
            // stream given up half way or never used).
            return stream.futureResult.map { channel in
                UpstreamLease(channel: channel) { _ in channel.close(promise: nil) }
            }
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
    /// TLS towards the backend (an `https://` backend), and towards peers (the cluster's mutual TLS).
    let backendSecurity: UpstreamSecurity?
    private let peerTLS: PlaneTLS?
    /// Closes pooled connections idle for ``ProxyConfiguration/upstreamIdleTimeout``, a quarter of it at a time.
    private let idleSweep: RepeatedTask

    /// Upstreams for a backend at `backendHost:backendPort`, spoken to in HTTP/1.1 with keep-alive, or in HTTP/2
    /// (h2c, prior knowledge) when `backendSpeaksHTTP2`; over TLS when `backendTLS` is given (``TLSRole/backendClient``,
    /// `https://`). Peers are reached over `peerTLS` when given (``TLSRole/forwardClient``), each peer's certificate
    /// required to carry its node name.
    public init(
        backendHost: String,
        backendPort: Int,
        backendSpeaksHTTP2: Bool = false,
        backendTLS: PlaneTLS? = nil,
        peerTLS: PlaneTLS? = nil,
        configuration: ProxyConfiguration
    ) {
        self.backendHost = backendHost
        self.backendPort = backendPort
        self.backendSpeaksHTTP2 = backendSpeaksHTTP2
        self.peerTLS = peerTLS
        backendSecurity = backendTLS.map { tls in
            // SNI names a host, never an address.
            let isAddress = (try? SocketAddress(ipAddress: backendHost, port: 0)) != nil
            return UpstreamSecurity(tls: tls, role: .backendClient, serverHostname: isAddress ? nil : backendHost)
        }
        http1 = HTTP1Pool(configuration: configuration)
        bytes = HTTP1Pool(configuration: configuration, speaksBytes: true)
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

    /// The relay loops carry plaintext HTTP/1.1 only: with an HTTP/2 backend, a TLS backend or TLS between peers, the
    /// app plane runs on NIO channels.
    public var backend: HostAndPort? {
        backendSpeaksHTTP2 || backendSecurity != nil || peerTLS != nil
            ? nil : HostAndPort(host: backendHost, port: backendPort)
    }

    public var backendURL: String {
        let scheme = backendSpeaksHTTP2 ? "h2c" : backendSecurity != nil ? "https" : "http"
        return "\(scheme)://\(HostAndPort(host: backendHost, port: backendPort))"
    }

    /// A stream of its own for each request when the backend speaks HTTP/2 (`fresh` does not apply).
    public func leaseBytes(
        _ route: ProxyRoute,
        on eventLoop: any EventLoop,
        fresh: Bool
    ) -> EventLoopFuture<UpstreamLease> {
        if case .local = route, backendSpeaksHTTP2 {
            return http2.lease(address: backendAddress, on: eventLoop, speaksBytes: true)
        }
        return connecting(route, on: eventLoop) {
            bytes.lease(host: $0, port: $1, security: $2, on: eventLoop, fresh: fresh)
        }
    }

    private var backendAddress: String { HostAndPort(host: backendHost, port: backendPort).description }

    /// `fresh` does not apply to an HTTP/2 backend: each request is a stream of its own.
    public func lease(_ route: ProxyRoute, on eventLoop: any EventLoop, fresh: Bool) -> EventLoopFuture<UpstreamLease> {
        if case .local = route, backendSpeaksHTTP2 {
            return http2.lease(address: backendAddress, on: eventLoop)
        }
        return connecting(route, on: eventLoop) {
            http1.lease(host: $0, port: $1, security: $2, on: eventLoop, fresh: fresh)
        }
    }

    /// `connect(host, port, security)` for the HTTP/1.1 endpoint of `route`: the backend, or a peer's cluster port.
    private func connecting<Value>(
        _ route: ProxyRoute,
        on eventLoop: any EventLoop,
        _ connect: (String, Int, UpstreamSecurity?) -> EventLoopFuture<Value>
    ) -> EventLoopFuture<Value> {
        switch route {
        case .local:
            return connect(backendHost, backendPort, backendSecurity)
        case .peer(let name, let address):
            guard let target = HostAndPort(address) else {
                return eventLoop.makeFailedFuture(
                    ProxyRefusal(status: .badGateway, message: "bad peer address \(address)")
                )
            }
            let security = peerTLS.map {
                UpstreamSecurity(tls: $0, role: .forwardClient, serverHostname: nil, expectedName: name)
            }
            return connect(target.host, target.port, security)
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
