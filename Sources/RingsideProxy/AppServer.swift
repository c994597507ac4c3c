import Logging
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import RingsideCluster

#if os(Linux)
import Glibc
#endif

/// The app plane: the listener the local application sends keyed requests to, in HTTP/1.1 or in HTTP/2 with prior
/// knowledge (h2c; gRPC clients do this), told apart by the first bytes.
public enum AppServer {
    /// Binds the app listener at `host:port`; each connection routes its requests through `router` to `upstreams`.
    ///
    /// HTTP/1.1 connections run on the engine (``HTTP1Connection``). On Linux, with an HTTP/1.1 backend and
    /// ``ProxyConfiguration/appIO`` `.epoll`, its epoll driver serves them (``EpollLoop``, as many loops as `group` has
    /// threads), handing HTTP/2 connections over to NIO; otherwise every connection is a NIO channel from the start,
    /// HTTP/1.1 on the engine's NIO driver (``HTTP1Relay``).
    ///
    /// With `tls` (``TLSRole/appServer``) every connection is TLS, served on NIO channels: ALPN tells HTTP/2 from
    /// HTTP/1.1 (the first bytes do when the client offers no ALPN), and requests carry `X-Forwarded-Proto: https`.
    public static func bind(
        host: String,
        port: Int,
        group: any EventLoopGroup,
        configuration: ProxyConfiguration,
        router: any ProxyRouter,
        upstreams: any UpstreamProvider,
        tls: PlaneTLS? = nil,
        metrics: ProxyMetrics = ProxyMetrics(),
        logger: Logger = Logger(label: "ringside.proxy")
    ) async throws -> any AppListener {
        let scheme = tls == nil ? "http" : "https"
        let relay = RelaySettings(
            configuration: configuration,
            plane: .app,
            metrics: metrics,
            router: router,
            backend: upstreams.backendURL,
            scheme: scheme,
            logger: logger
        )
        let connections = ConnectionTracker()
        let http1 = relaySetup(relay, upstreams, connections)
        let http2: @Sendable (any Channel) throws -> Void = { channel in
            defer { connections.quiesceIfDraining(channel) }
            try ProtocolSniffer.configureHTTP2Streams(
                channel,
                idleTimeout: TimeAmount(configuration.idleTimeout),
                maxHeaderListSize: configuration.maxHeaderBytes
            ) {
                ProxyHandler(
                    configuration: configuration,
                    plane: .app,
                    metrics: metrics,
                    router: router,
                    upstreams: upstreams,
                    scheme: scheme
                )
            }
        }
        let headerTimeout = TimeAmount(configuration.headerReadTimeout)
        let sniffer: @Sendable () -> ProtocolSniffer = {
            ProtocolSniffer(timeout: headerTimeout, http1: http1, http2: http2)
        }
        let pipeline: @Sendable (any Channel) throws -> Void = { channel in
            connections.track(channel)
            guard let tls else {
                try channel.pipeline.syncOperations.addHandler(sniffer())
                return
            }
            try tls.accept(channel, role: .appServer, timeout: headerTimeout) { channel, negotiated, _ in
                switch negotiated {
                case "h2": try http2(channel)
                case "http/1.1": try http1(channel)
                default: try channel.pipeline.syncOperations.addHandler(sniffer())
                }
            }
        }
        #if os(Linux)
        if configuration.appIO == .epoll, tls == nil, let backend = upstreams.backend {
            return try EpollAppListener(
                host: host,
                port: port,
                loops: Array(group.makeIterator()).count,
                settings: relay,
                backend: backend,
                handedOff: connections,
                handOff: { fd, bytes in adopt(fd, bytes: bytes, group: group, setup: pipeline) }
            )
        }
        #endif
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try pipeline(channel) }
            }
            .bind(host: host, port: port)
            .get()
        return ChannelAppListener(channel: channel, connections: connections, inFlight: metrics.inFlight)
    }

    /// Puts an ``HTTP1Relay`` with `settings` on a connection, which drains from the start if `connections` drain.
    static func relaySetup(
        _ settings: RelaySettings,
        _ upstreams: any UpstreamProvider,
        _ connections: ConnectionTracker
    ) -> @Sendable (any Channel) throws -> Void {
        { channel in
            try channel.pipeline.syncOperations.addHandler(
                HTTP1Relay(settings: settings, upstreams: upstreams, channel: channel)
            )
            connections.quiesceIfDraining(channel)
        }
    }
}

/// A listener of the app plane, whichever way it serves its connections.
public protocol AppListener: Sendable {
    /// The address it is bound to.
    var localAddress: SocketAddress? { get }
    /// Starts draining: every connection closes after its current response (HTTP/2: GOAWAY), idle ones now; the
    /// listener goes on accepting, and serves each new connection one request.
    func quiesce()
    /// Stops accepting, lets the requests under way finish until `deadline`, and closes every connection; returns
    /// how many requests were still under way at the deadline (cut).
    @discardableResult
    func close(waitingUntil deadline: NIODeadline) async throws -> Int
}

extension AppListener {
    /// Stops accepting and closes, letting the requests under way finish within the longest a request may take.
    public func close() async throws { try await close(waitingUntil: .now() + .seconds(60)) }
}

extension AppServer {
    #if os(Linux)
    /// Makes a NIO channel of a connection a relay loop hands over (`fd`, and `bytes`, what the loop read of it), set up
    /// by `setup`; the descriptor is closed if that fails.
    static func adopt(
        _ fd: CInt,
        bytes: ByteBuffer?,
        group: any EventLoopGroup,
        setup: @escaping @Sendable (any Channel) throws -> Void
    ) {
        ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AdoptedBytes(bytes))
                    try setup(channel)
                }
            }
            .withConnectedSocket(fd)
            .whenFailure { _ in _ = Glibc.close(fd) }
    }
    #endif

    /// How long a closing listener's connections get to close by themselves after their last responses (an HTTP/2
    /// connection's second GOAWAY waits for a PING's answer): a second at least when nothing was cut, none otherwise.
    static func closingGrace(_ deadline: NIODeadline, cut: Int) -> NIODeadline {
        cut > 0 ? .now() : max(deadline, .now() + .seconds(1))
    }
}

/// The app listener as a NIO server channel.
struct ChannelAppListener: AppListener {
    let channel: any Channel
    let connections: ConnectionTracker
    let inFlight: InFlightRequests
    var localAddress: SocketAddress? { channel.localAddress }

    func quiesce() { connections.quiesce() }

    func close(waitingUntil deadline: NIODeadline) async throws -> Int {
        // Draining first, so that a connection accepted before the listener stops is set up drained.
        connections.quiesce()
        try? await channel.close()
        await inFlight.waitUntilNone(of: [.appHTTP1, .appHTTP2], deadline: deadline)
        let cut = inFlight.count(of: [.appHTTP1, .appHTTP2])
        await connections.close(deadline: AppServer.closingGrace(deadline, cut: cut))
        return cut
    }
}

/// Gives a connection that a relay loop handed over the bytes the loop read of it, before anything read from the
/// socket, and steps aside.
final class AdoptedBytes: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private var bytes: ByteBuffer?

    init(_ bytes: ByteBuffer?) { self.bytes = bytes }

    func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        if let bytes {
            self.bytes = nil
            context.fireChannelRead(wrapInboundOut(bytes))
            context.fireChannelReadComplete()
        }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}
