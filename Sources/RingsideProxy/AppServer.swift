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
    /// On Linux, with an HTTP/1.1 backend and ``ProxyConfiguration/appIO`` `.epoll`, HTTP/1.1 connections are served by
    /// relay loops of Ringside's own (``EpollLoop``, as many as `group` has threads), which hand what they do not
    /// carry over to this pipeline; otherwise every connection is a NIO channel from the start.
    public static func bind(
        host: String,
        port: Int,
        group: any EventLoopGroup,
        configuration: ProxyConfiguration,
        router: any ProxyRouter,
        upstreams: any UpstreamProvider,
        metrics: ProxyMetrics = ProxyMetrics(),
        logger: Logger = Logger(label: "ringside.proxy")
    ) async throws -> any AppListener {
        let relay = relaySettings(
            configuration: configuration,
            plane: .app,
            metrics: metrics,
            router: router,
            upstreams: upstreams,
            logger: logger
        )
        let http1 =
            relay.map { relaySetup($0, upstreams) } ?? generalSetup(configuration, .app, metrics, router, upstreams)
        let pipeline: @Sendable (any Channel) throws -> Void = { channel in
            try channel.pipeline.syncOperations.addHandler(
                ProtocolSniffer(
                    timeout: TimeAmount(configuration.headerReadTimeout),
                    http1: http1,
                    http2: { channel in
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
                                scheme: "http"
                            )
                        }
                    }
                )
            )
        }
        #if os(Linux)
        if configuration.appIO == .epoll, let relay, let backend = upstreams.backend {
            return try EpollAppListener(
                host: host,
                port: port,
                loops: Array(group.makeIterator()).count,
                settings: relay,
                backend: backend,
                handOff: { fd, bytes in
                    ClientBootstrap(group: group)
                        .channelInitializer { channel in
                            channel.eventLoop.makeCompletedFuture {
                                try channel.pipeline.syncOperations.addHandler(AdoptedBytes(bytes))
                                try pipeline(channel)
                            }
                        }
                        .withConnectedSocket(fd)
                        .whenFailure { _ in _ = Glibc.close(fd) }
                }
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
        return ChannelAppListener(channel: channel)
    }

    /// How an HTTP/1.1 connection is set up to be proxied, made once a listener: the engine on NIO channels
    /// (``HTTP1Relay``) when every upstream speaks HTTP/1.1; otherwise (an `h2c://` backend) the general pipeline.
    static func http1Setup(
        configuration: ProxyConfiguration,
        plane: ProxyHandler.Plane,
        metrics: ProxyMetrics,
        router: any ProxyRouter,
        upstreams: any UpstreamProvider,
        logger: Logger
    ) -> @Sendable (any Channel) throws -> Void {
        let relay = relaySettings(
            configuration: configuration,
            plane: plane,
            metrics: metrics,
            router: router,
            upstreams: upstreams,
            logger: logger
        )
        return relay.map { relaySetup($0, upstreams) } ?? generalSetup(configuration, plane, metrics, router, upstreams)
    }

    /// What the engine's connections of a listener share; nil when an upstream does not speak HTTP/1.1 (an `h2c://`
    /// backend), so that the general pipeline serves every connection.
    static func relaySettings(
        configuration: ProxyConfiguration,
        plane: ProxyHandler.Plane,
        metrics: ProxyMetrics,
        router: any ProxyRouter,
        upstreams: any UpstreamProvider,
        logger: Logger
    ) -> RelaySettings? {
        guard upstreams.relaysBytes else { return nil }
        return RelaySettings(
            configuration: configuration,
            plane: plane,
            metrics: metrics,
            router: router,
            backend: upstreams.backendURL,
            logger: logger
        )
    }

    /// Puts an ``HTTP1Relay`` with `settings` on a connection.
    private static func relaySetup(
        _ settings: RelaySettings,
        _ upstreams: any UpstreamProvider
    ) -> @Sendable (any Channel) throws -> Void {
        { channel in
            try channel.pipeline.syncOperations.addHandler(
                HTTP1Relay(settings: settings, upstreams: upstreams, channel: channel)
            )
        }
    }

    /// Sets a connection up for the general HTTP/1.1 pipeline (NIO's codec and ``ProxyHandler``).
    private static func generalSetup(
        _ configuration: ProxyConfiguration,
        _ plane: ProxyHandler.Plane,
        _ metrics: ProxyMetrics,
        _ router: any ProxyRouter,
        _ upstreams: any UpstreamProvider
    ) -> @Sendable (any Channel) throws -> Void {
        { channel in
            try configureGeneralHTTP1(
                channel,
                configuration: configuration,
                router: router,
                upstreams: upstreams,
                proxy: ProxyHandler(
                    configuration: configuration,
                    plane: plane,
                    metrics: metrics,
                    router: router,
                    upstreams: upstreams,
                    scheme: "http"
                )
            )
        }
    }

    /// Sets an HTTP/1.1 connection up for the general path: the byte-level guard, NIO's HTTP/1.1 server handlers
    /// (with WebSocket upgrades relayed to the key's owner), and `proxy`.
    static func configureGeneralHTTP1(
        _ channel: any Channel,
        configuration: ProxyConfiguration,
        router: any ProxyRouter,
        upstreams: any UpstreamProvider,
        proxy: ProxyHandler
    ) throws {
        let pipeline = channel.pipeline.syncOperations
        try pipeline.addHandler(
            ConnectionGuard(
                maxHeaderBytes: configuration.maxHeaderBytes,
                headerTimeout: configuration.headerReadTimeout,
                idleTimeout: configuration.idleTimeout
            )
        )
        try pipeline.configureHTTPServerPipeline(
            withPipeliningAssistance: false,
            withServerUpgrade: (
                upgraders: [
                    UpgradeRelay(
                        protocol: "websocket",
                        configuration: configuration,
                        router: router,
                        upstreams: upstreams
                    )
                ],
                completionHandler: { _ in }
            ),
            withErrorHandling: true
        )
        try pipeline.addHandler(proxy)
    }
}

/// A listener of the app plane, whichever way it serves its connections.
public protocol AppListener: Sendable {
    /// The address it is bound to.
    var localAddress: SocketAddress? { get }
    /// Stops accepting connections.
    func close() async throws
}

/// The app listener as a NIO server channel.
struct ChannelAppListener: AppListener {
    let channel: any Channel
    var localAddress: SocketAddress? { channel.localAddress }
    func close() async throws { try await channel.close() }
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
