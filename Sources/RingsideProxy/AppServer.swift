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
        let relay = RelaySettings(
            configuration: configuration,
            plane: .app,
            metrics: metrics,
            router: router,
            backend: upstreams.backendURL,
            logger: logger
        )
        let http1 = relaySetup(relay, upstreams)
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
        if configuration.appIO == .epoll, let backend = upstreams.backend {
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

    /// How an HTTP/1.1 connection is set up to be proxied (on the engine's NIO driver, ``HTTP1Relay``), made once a
    /// listener.
    static func http1Setup(
        configuration: ProxyConfiguration,
        plane: ProxyHandler.Plane,
        metrics: ProxyMetrics,
        router: any ProxyRouter,
        upstreams: any UpstreamProvider,
        logger: Logger
    ) -> @Sendable (any Channel) throws -> Void {
        relaySetup(
            RelaySettings(
                configuration: configuration,
                plane: plane,
                metrics: metrics,
                router: router,
                backend: upstreams.backendURL,
                logger: logger
            ),
            upstreams
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
