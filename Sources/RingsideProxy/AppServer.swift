import NIOCore
import NIOHTTP1
import NIOPosix

/// The app plane: the listener the local application sends keyed requests to.
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
                    let pipeline = channel.pipeline.syncOperations
                    try pipeline.addHandler(
                        ConnectionGuard(
                            maxHeaderBytes: configuration.maxHeaderBytes,
                            headerTimeout: configuration.headerReadTimeout,
                            idleTimeout: configuration.idleTimeout
                        )
                    )
                    try pipeline.configureHTTPServerPipeline(withPipeliningAssistance: true, withErrorHandling: true)
                    try pipeline.addHandler(
                        ProxyHandler(
                            configuration: configuration,
                            plane: .app,
                            metrics: metrics,
                            router: router,
                            upstreams: upstreams,
                            scheme: "http"
                        )
                    )
                }
            }
            .bind(host: host, port: port)
            .get()
    }
}
