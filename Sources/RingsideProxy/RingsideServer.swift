import Atomics
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import RingsideCluster
import ServiceLifecycle

/// One Ringside node: cluster membership, the app listener that routes keyed requests, and the cluster port's
/// forwarded requests, which go to this node's backend.
///
/// It stops by draining (``drain``; a graceful shutdown of the task that runs it starts one): readiness fails, the
/// node becomes `terminating` and tells its peers, connections close after their responses, and once nothing is under
/// way (or at ``ProxyConfiguration/drainTimeout``) it leaves the cluster, closes the app listener, and closes the
/// cluster port last.
public final class RingsideServer: Service, Sendable {
    /// The cluster node (membership, peers, lookups).
    public let node: ClusterNode
    /// The data plane's settings.
    public let proxy: ProxyConfiguration
    /// This node's drain: start one, follow it, wait for its end.
    public let drain: NodeDrain
    private let appHost: String
    private let appPort: Int
    private let appTLS: PlaneTLS?
    private let group: any EventLoopGroup
    private let upstreams: ClusterUpstreams
    private let logger: Logger
    private let metrics: ProxyMetrics
    private let dataPlane: DataPlane
    private let readiness: ReadinessConfiguration
    private let backendHealth: BackendHealth
    /// When ``run()`` began, for the readiness wait's timeout.
    private let started = NIOLockedValueBox<NIODeadline?>(nil)
    /// The readiness gate passed once: it is a start-up gate, so a member that leaves later does not close it again.
    private let gatePassed = ManagedAtomic(false)

    /// A node that listens for the app at `appHost:appPort` and proxies to the backend at `backendHost:backendPort`,
    /// in HTTP/1.1, or in HTTP/2 with prior knowledge when `backendSpeaksHTTP2` (a gRPC server).
    ///
    /// With `appTLS` the app listener speaks TLS (``TLSRole/appServer``); with `backendTLS` the backend is spoken to
    /// over TLS (``TLSRole/backendClient``); the cluster plane's mutual TLS is `cluster.tls`, which forwards to peers
    /// use too. Connections that carry TLS are served on NIO channels.
    public init(
        cluster: ClusterConfiguration,
        proxy: ProxyConfiguration,
        appHost: String,
        appPort: Int,
        backendHost: String,
        backendPort: Int,
        backendSpeaksHTTP2: Bool = false,
        appTLS: PlaneTLS? = nil,
        backendTLS: PlaneTLS? = nil,
        readiness: ReadinessConfiguration = .init(),
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "ringside")
    ) {
        self.readiness = readiness
        let upstreams = ClusterUpstreams(
            backendHost: backendHost,
            backendPort: backendPort,
            backendSpeaksHTTP2: backendSpeaksHTTP2,
            backendTLS: backendTLS,
            peerTLS: cluster.tls,
            configuration: proxy
        )
        backendHealth = BackendHealth(
            host: backendHost,
            port: backendPort,
            path: readiness.backendHealthPath,
            interval: readiness.backendHealthInterval,
            tls: upstreams.backendSecurity
        )
        let metrics = ProxyMetrics()
        let drain = NodeDrain(inFlight: metrics.inFlight, defaultTimeout: proxy.drainTimeout)
        let dataPlane = DataPlane(drain: drain, requestTimeout: proxy.requestTimeout)
        // On Linux with a plaintext HTTP/1.1 backend and cluster, the cluster port runs on relay loops too (forwarded
        // requests on the engine's epoll driver; gossip's HTTP/2 connections handed over to the node), as the app plane
        // does.
        var bindListener: ClusterListenerBinder?
        #if os(Linux)
        if proxy.appIO == .epoll, cluster.tls == nil, let backend = upstreams.backend {
            bindListener = { address, connection in
                try dataPlane.bindClusterPort(address, backend: backend, group: group, connection: connection)
            }
        }
        #endif
        self.node = ClusterNode(
            configuration: cluster,
            group: group,
            logger: logger,
            forwardedConnections: { connection in
                guard let setup = dataPlane.forwardedSetup else { throw ChannelError.ioOnClosedChannel }
                dataPlane.forwarded.track(connection)
                try setup(connection)
            },
            beforeClosingListener: { await dataPlane.close() },
            stopsOnGracefulShutdown: false,
            bindListener: bindListener
        )
        let forwardedRelay = RelaySettings(
            configuration: proxy,
            plane: .cluster,
            metrics: metrics,
            router: ForwardedRouter(node: node),
            backend: upstreams.backendURL,
            logger: logger
        )
        dataPlane.clusterRelay = forwardedRelay
        dataPlane.forwardedSetup = AppServer.relaySetup(forwardedRelay, upstreams, dataPlane.forwarded)
        self.proxy = proxy
        self.appTLS = appTLS
        self.drain = drain
        self.appHost = appHost
        self.appPort = appPort
        self.group = group
        self.upstreams = upstreams
        self.logger = logger
        self.metrics = metrics
        self.dataPlane = dataPlane
    }

    /// Runs the node and the app listener until the node stops: after a drain (which a graceful shutdown starts), or
    /// when ``stop()`` is called.
    public func run() async throws {
        let app: any AppListener
        do {
            app = try await AppServer.bind(
                host: appHost,
                port: appPort,
                group: group,
                configuration: proxy,
                router: ClusterRouter(node: node, configuration: proxy),
                upstreams: upstreams,
                tls: appTLS,
                metrics: metrics,
                logger: logger
            )
        } catch {
            throw ListenError(
                setting: "listen",
                address: "\(HostAndPort(host: appHost, port: appPort))",
                underlying: error
            )
        }
        dataPlane.app = app
        logger.info(
            "app listener started",
            metadata: [
                "ringside.setting": "listen",
                "ringside.address": "\(app.localAddress.flatMap(HostAndPort.init)?.description ?? "")",
                "ringside.io": "\(appTLS == nil && upstreams.backend != nil ? proxy.appIO.rawValue : "nio")",
                "ringside.tls": "\(appTLS != nil)",
            ]
        )
        warnIfClusterIsOpen()
        defer { upstreams.shutdown() }
        started.withLockedValue { $0 = .now() }
        try await withGracefulShutdownHandler {
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await self.node.run() }
                tasks.addTask { await self.performDrain() }
                // Ends only when cancelled, once the node has stopped.
                tasks.addTask {
                    await withDiscardingTaskGroup { checks in
                        checks.addTask { await self.backendHealth.run(logger: self.logger) }
                        checks.addTask { await self.takePartWhenReady() }
                    }
                }
                // The node stops last (after a drain, or when asked to); a drain that stops at once ends first.
                try await tasks.next()
                tasks.cancelAll()
                try await tasks.waitForAll()
            }
        } onGracefulShutdown: {
            self.drain.start(by: "shutdown")
        }
        _ = try? await app.close(waitingUntil: .now())
    }

    /// A cluster port reachable beyond loopback without mutual TLS admits anyone: said at start.
    private func warnIfClusterIsOpen() {
        guard node.configuration.tls == nil, let listen = HostAndPort(node.configuration.listenAddress),
            !AdvertisedHost.isLoopback(listen.host)
        else { return }
        logger.warning(
            "the cluster port has no TLS: any host that reaches it can join the cluster and reach the backend",
            metadata: [
                "ringside.setting": "cluster-listen", "ringside.address": "\(listen)", "ringside.cluster_auth": "none",
            ]
        )
    }

    /// Stops the node without a drain: it leaves the cluster, and the listeners close once what is under way is done.
    public func stop() async { await node.stop() }

    /// The app listener's bound port, once it listens.
    public var appPortBound: Int? { dataPlane.app?.localAddress?.port }

    /// Why the node is not ready for traffic, or nil: a drain, the wait for its cluster (its seeds, the participants
    /// it waits for), its backend.
    public var notReadyReason: String? {
        switch drain.phase {
        case .running: break
        case .draining: return "the node is draining"
        case .leaving, .stopped: return "the node is leaving the cluster"
        }
        return gateProblem ?? backendHealth.problem
    }

    /// What the readiness gate waits for, or nil once it has passed.
    private var gateProblem: String? {
        guard !gatePassed.load(ordering: .relaxed) else { return nil }
        let waitedOut =
            readiness.waitTimeout.map { timeout in
                started.withLockedValue { $0 }.map { NIODeadline.now() - $0 >= TimeAmount(timeout) } ?? false
            } ?? false
        let problem = ReadinessGate.problem(
            seeds: node.configuration.seeds,
            joined: node.hasJoined,
            members: node.members.count { $0.status.isActive && ($0.state == .viewer || $0.state == .participant) },
            waitForSize: readiness.waitForSize,
            waitedOut: waitedOut
        )
        if problem == nil { gatePassed.store(true, ordering: .relaxed) }
        return problem
    }

    /// A node that starts as a viewer to take part later becomes a participant once the gate has passed and its
    /// backend accepts connections.
    private func takePartWhenReady() async {
        guard readiness.participatesWhenReady else { return }
        while !Task.isCancelled, drain.phase == .running, node.state == .viewer {
            let running = node.members.contains { $0.name == node.configuration.nodeName }
            if running, gateProblem == nil, backendHealth.problem == nil {
                do {
                    try await node.changeState(to: .participant)
                    logger.info("taking part: this node owns keys from now on")
                    return
                } catch let error as ClusterError where error.code == .disseminationTimedOut {
                    logger.notice(
                        "became a participant without confirming that peers heard",
                        metadata: ["ringside.error": "\(error)"]
                    )
                    return
                } catch {
                    logger.debug("cannot become a participant yet", metadata: ["ringside.error": "\(error)"])
                }
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
    }

    // MARK: Draining

    /// Performs the drain's decisions until the node has stopped; a second signal (stop now) overtakes a drain under
    /// way.
    private func performDrain() async {
        await withTaskGroup(of: Void.self) { work in
            for await action in drain.decisions {
                switch action {
                case .beginDrain:
                    work.addTask { await self.drainThenLeave() }
                case .stopNow:
                    work.cancelAll()
                    await stopNow()
                    return
                case .leave:
                    break
                }
            }
        }
    }

    private func drainThenLeave() async {
        let start = drain.progress
        logger.info(
            "drain started",
            metadata: [
                "ringside.trigger": "\(start.trigger ?? "")",
                "ringside.timeout": "\(start.timeoutSeconds ?? 0)s",
                "ringside.in_flight": "\(metrics.inFlight.total)",
            ]
        )
        dataPlane.quiesce()
        let state = node.state
        if state == .viewer || state == .participant {
            do {
                try await node.changeState(to: .terminating)
            } catch {
                logger.notice(
                    "the drain goes on without confirming that peers heard of it",
                    metadata: ["ringside.error": "\(error)"]
                )
            }
        }
        drain.announced()
        while true {
            if drain.phase == .stopped {
                await stopNow()
                return
            }
            if case .leave = drain.check() { break }
            try? await Task.sleep(for: .milliseconds(5))
        }
        // Leaves, then (``DataPlane/close()``) closes the app listener and waits for the cluster port's requests, then
        // closes the port.
        let tunnels = metrics.inFlight.tunnels
        await node.stop()
        drain.stopped(cut: dataPlane.cut, tunnelsClosed: tunnels)
        let end = drain.progress
        let metadata: Logger.Metadata = [
            "ringside.finished": "\(end.finished)",
            "ringside.cut": "\(end.cut)",
            "ringside.tunnels_closed": "\(end.tunnelsClosed)",
            "ringside.seconds": "\(Double(Int(end.elapsedSeconds * 1000)) / 1000)",
        ]
        if end.cut > 0 {
            logger.warning("drain finished, cutting requests still under way at its deadline", metadata: metadata)
        } else {
            logger.info("drain finished", metadata: metadata)
        }
    }

    /// A second signal: everything closes now.
    private func stopNow() async {
        logger.warning(
            "stopping at once; requests under way are cut",
            metadata: ["ringside.cut": "\(drain.progress.cut)"]
        )
        _ = try? await dataPlane.app?.close(waitingUntil: .now())
        await dataPlane.forwarded.closeAll()
        await node.halt()
    }
}

/// The parts of the data plane that a drain and the node's close reach: the app listener (once bound) and the
/// cluster port's forwarded connections.
private final class DataPlane: Sendable {
    private struct State {
        var app: (any AppListener)?
        var setup: (@Sendable (any Channel) throws -> Void)?
        var clusterRelay: RelaySettings?
        /// The cluster port's relay loops, when they serve it.
        var cluster: (any AppListener)?
        var cut = 0
    }

    private let state = NIOLockedValueBox(State())
    let forwarded = ConnectionTracker()
    let drain: NodeDrain
    let requestTimeout: Duration

    init(drain: NodeDrain, requestTimeout: Duration) {
        self.drain = drain
        self.requestTimeout = requestTimeout
    }

    var app: (any AppListener)? {
        get { state.withLockedValue { $0.app } }
        set { state.withLockedValue { $0.app = newValue } }
    }

    /// The cluster port's HTTP/1.1 setup, which needs the node that needs it.
    var forwardedSetup: (@Sendable (any Channel) throws -> Void)? {
        get { state.withLockedValue { $0.setup } }
        set { state.withLockedValue { $0.setup = newValue } }
    }

    /// What the cluster port's forwarded requests share on the engine.
    var clusterRelay: RelaySettings? {
        get { state.withLockedValue { $0.clusterRelay } }
        set { state.withLockedValue { $0.clusterRelay = newValue } }
    }

    #if os(Linux)
    /// Binds the cluster port on relay loops: forwarded requests on the engine, gossip (HTTP/2) handed to
    /// `connection`.
    func bindClusterPort(
        _ address: HostAndPort,
        backend: HostAndPort,
        group: any EventLoopGroup,
        connection: @escaping @Sendable (any Channel) throws -> Void
    ) throws -> any ClusterListener {
        guard let settings = clusterRelay else { throw ChannelError.ioOnClosedChannel }
        let gossip = ConnectionTracker()
        let listener = try EpollAppListener(
            host: address.host,
            port: address.port,
            loops: Array(group.makeIterator()).count,
            settings: settings,
            backend: backend,
            handedOff: gossip,
            handOff: { fd, bytes in
                AppServer.adopt(fd, bytes: bytes, group: group) { channel in
                    gossip.track(channel)
                    try connection(channel)
                }
            }
        )
        state.withLockedValue { $0.cluster = listener }
        return RelayClusterListener(listener: listener)
    }
    #endif

    /// Requests still under way when the listeners closed.
    var cut: Int { state.withLockedValue { $0.cut } }

    /// Every connection closes after its current response, idle ones now.
    func quiesce() {
        app?.quiesce()
        forwarded.quiesce()
        state.withLockedValue { $0.cluster }?.quiesce()
    }

    /// Closes the app listener, letting its requests finish, then waits for the cluster port's, until the drain's
    /// deadline (without a drain, the longest a request may take).
    func close() async {
        let deadline = drain.deadline ?? .now() + TimeAmount(requestTimeout)
        let appCut = (try? await app?.close(waitingUntil: deadline)) ?? 0
        forwarded.quiesce()
        await drain.inFlight.waitUntilNone(of: [.cluster], deadline: deadline)
        let clusterCut = drain.inFlight[.cluster]
        await forwarded.close(deadline: AppServer.closingGrace(deadline, cut: clusterCut))
        state.withLockedValue { $0.cut = appCut + clusterCut }
    }
}

/// A listener could not start: which setting names it, where, and why.
public struct ListenError: Error, CustomStringConvertible {
    /// The setting that gave the address (`listen`, `cluster-listen`, `admin-listen`).
    public var setting: String
    public var address: String
    public var underlying: any Error

    public init(setting: String, address: String, underlying: any Error) {
        self.setting = setting
        self.address = address
        self.underlying = underlying
    }

    public var description: String {
        "cannot listen on \(address) (\(setting)): \(ConnectionFailureText.reason(underlying))"
    }
}

/// The cluster port on relay loops, as the cluster node closes it: once the node has left and the data plane has let
/// its forwarded requests finish (``DataPlane/close()``), so nothing is waited for here but the connections' own close.
private struct RelayClusterListener: ClusterListener {
    let listener: any AppListener
    var port: Int? { listener.localAddress?.port }
    func close() async { _ = try? await listener.close(waitingUntil: .now() + .seconds(1)) }
}
