import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import RingsideCluster
import ServiceLifecycle

/// One Ringside node: cluster membership, the app listener that routes keyed requests, and the cluster port's
/// forwarded requests, which go to this node's backend.
public final class RingsideServer: Service, Sendable {
    /// The cluster node (membership, peers, lookups).
    public let node: ClusterNode
    /// The data plane's settings.
    public let proxy: ProxyConfiguration
    private let appHost: String
    private let appPort: Int
    private let group: any EventLoopGroup
    private let upstreams: ClusterUpstreams
    private let logger: Logger
    private let metrics: ProxyMetrics
    private let appAddress = NIOLockedValueBox<SocketAddress?>(nil)

    /// A node that listens for the app at `appHost:appPort` and proxies to the backend at `backendHost:backendPort`,
    /// in HTTP/1.1, or in HTTP/2 with prior knowledge when `backendSpeaksHTTP2` (a gRPC server).
    public init(
        cluster: ClusterConfiguration,
        proxy: ProxyConfiguration,
        appHost: String,
        appPort: Int,
        backendHost: String,
        backendPort: Int,
        backendSpeaksHTTP2: Bool = false,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "ringside")
    ) {
        let upstreams = ClusterUpstreams(
            backendHost: backendHost,
            backendPort: backendPort,
            backendSpeaksHTTP2: backendSpeaksHTTP2,
            configuration: proxy
        )
        let metrics = ProxyMetrics()
        let forwarded = ForwardedSetup()
        self.node = ClusterNode(
            configuration: cluster,
            group: group,
            logger: logger,
            forwardedConnections: { connection in
                guard let setup = forwarded.setup else { throw ChannelError.ioOnClosedChannel }
                try setup(connection)
            }
        )
        forwarded.setup = AppServer.http1Setup(
            configuration: proxy,
            plane: .cluster,
            metrics: metrics,
            router: ForwardedRouter(node: node),
            upstreams: upstreams,
            logger: logger
        )
        self.proxy = proxy
        self.appHost = appHost
        self.appPort = appPort
        self.group = group
        self.upstreams = upstreams
        self.logger = logger
        self.metrics = metrics
    }

    /// Runs the node and the app listener until a graceful shutdown, then leaves the cluster and closes.
    public func run() async throws {
        let app = try await AppServer.bind(
            host: appHost,
            port: appPort,
            group: group,
            configuration: proxy,
            router: ClusterRouter(node: node, configuration: proxy),
            upstreams: upstreams,
            metrics: metrics,
            logger: logger
        )
        appAddress.withLockedValue { $0 = app.localAddress }
        logger.info(
            "app listener started",
            metadata: [
                "ringside.address": "\(app.localAddress.flatMap(HostAndPort.init)?.description ?? "")",
                "ringside.io": "\(proxy.appIO.rawValue)",
            ]
        )
        do {
            try await node.run()
        } catch {
            try? await app.close()
            upstreams.shutdown()
            throw error
        }
        try? await app.close()
        upstreams.shutdown()
    }

    /// Stops the node (leaving the cluster) and the app listener.
    public func stop() async { await node.stop() }

    /// The app listener's bound port, once it listens.
    public var appPortBound: Int? { appAddress.withLockedValue { $0?.port } }
}

/// Holds the cluster port's HTTP/1.1 setup (the engine, routing forwarded requests), which needs the node that needs it.
private final class ForwardedSetup: Sendable {
    private let box = NIOLockedValueBox<(@Sendable (any Channel) throws -> Void)?>(nil)
    var setup: (@Sendable (any Channel) throws -> Void)? {
        get { box.withLockedValue { $0 } }
        set { box.withLockedValue { $0 = newValue } }
    }
}
