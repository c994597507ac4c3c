import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import RingsideCluster

/// The app plane: the listener the local application sends keyed requests to, in HTTP/1.1 or in HTTP/2 with prior
/// knowledge (h2c; gRPC clients do this), told apart by the first bytes.
public enum AppServer {
    /// Binds the app listener at `host:port`; each connection routes its requests through `router` to `upstreams`.
    public static func bind(
        host: String,
        port: Int,
        group: any EventLoopGroup,
        configuration: ProxyConfiguration,
        router: any ProxyRouter,
        upstreams: any UpstreamProvider,
        metrics: ProxyMetrics = ProxyMetrics()
    ) async throws -> any Channel {
        try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let makeProxy: @Sendable () -> ProxyHandler = {
                        ProxyHandler(
                            configuration: configuration,
                            plane: .app,
                            metrics: metrics,
                            router: router,
                            upstreams: upstreams,
                            scheme: "http"
                        )
                    }
                    try channel.pipeline.syncOperations.addHandler(
                        ProtocolSniffer(
                            http1: { channel in
                                try configureHTTP1(
                                    channel,
                                    configuration: configuration,
                                    router: router,
                                    upstreams: upstreams,
                                    proxy: makeProxy()
                                )
                            },
                            http2: { channel in
                                _ = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
                                    mode: .server,
                                    connectionConfiguration: .init(),
                                    streamConfiguration: .init(),
                                    inboundStreamInitializer: { stream in
                                        stream.eventLoop.makeCompletedFuture {
                                            try stream.pipeline.syncOperations.addHandlers([
                                                HTTP2FramePayloadToHTTP1ServerCodec(), makeProxy(),
                                            ])
                                        }
                                    }
                                )
                            }
                        )
                    )
                }
            }
            .bind(host: host, port: port)
            .get()
    }

    /// Sets an HTTP/1.1 connection up to be proxied: the byte-level guard, NIO's HTTP/1.1 server handlers (with
    /// WebSocket upgrades relayed to the key's owner), and `proxy`.
    static func configureHTTP1(
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
