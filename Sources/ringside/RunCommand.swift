import ArgumentParser
import Foundation
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Prometheus
import RingsideCluster
import RingsideProxy
import ServiceLifecycle
import UnixSignals

struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Runs a Ringside node.",
        discussion: """
            Every setting can also come from the YAML file given with --config (same names) and from RINGSIDE_* \
            environment variables (RINGSIDE_NODE_NAME for --node-name, …). Flags win over the environment, the \
            environment over the file. An invalid value stops ringside with exit status 2 and names the key.
            """
    )

    // Each flag takes the next argument as its value, as getopt does, so that `--event-loops -1` is a bad value of
    // event-loops (exit status 2, naming it) rather than a flag without one.
    @Option(parsing: .unconditional, help: "A YAML file of settings.")
    var config: String?
    @Option(parsing: .unconditional, help: "This node's unique name (default: the host name).")
    var nodeName: String?
    @Option(parsing: .unconditional, help: "Where the application sends keyed requests (default 127.0.0.1:7400).")
    var listen: String?
    @Option(
        parsing: .unconditional,
        help: "Where other nodes send gossip and forwarded requests (default 0.0.0.0:7401)."
    )
    var clusterListen: String?
    @Option(parsing: .unconditional, help: "Health, readiness, metrics and the JSON API (default 127.0.0.1:7402).")
    var adminListen: String?
    @Option(parsing: .unconditional, help: "The host:port other nodes dial.")
    var advertise: String?
    @Option(parsing: .unconditional, help: "Seeds, comma-separated: host:port or dnssrv+NAME.")
    var join: String?
    @Option(parsing: .unconditional, help: "The cluster's label (default ringside).")
    var clusterName: String?
    @Option(parsing: .unconditional, help: "The local backend (default http://127.0.0.1:8080).")
    var backend: String?
    @Option(parsing: .unconditional, help: "The header that carries the shard key (default X-Shard-Key).")
    var keyHeader: String?
    @Option(parsing: .unconditional, help: "Owners that /v1/lookup reports by default (default 1).")
    var replicas: String?
    @Option(parsing: .unconditional, help: "participant or viewer (default participant).")
    var role: String?
    @Option(parsing: .unconditional, help: "Requests without a key: local or reject (default local).")
    var missingKey: String?
    @Option(parsing: .unconditional, help: "ring, rendezvous or maglev (default ring).")
    var sharder: String?
    @Option(parsing: .unconditional, help: "End-to-end request timeout (default 60s).")
    var requestTimeout: String?
    @Option(parsing: .unconditional, help: "Connect timeout to the backend and peers (default 2s).")
    var connectTimeout: String?
    @Option(parsing: .unconditional, help: "Time allowed to send a request head (default 10s).")
    var headerReadTimeout: String?
    @Option(parsing: .unconditional, help: "Idle keep-alive timeout (default 75s).")
    var idleTimeout: String?
    @Option(parsing: .unconditional, help: "How long a drain waits for requests under way (default 30s).")
    var drainTimeout: String?
    @Option(parsing: .unconditional, help: "Members to see before being ready and taking part (default 1).")
    var waitForSize: String?
    @Option(parsing: .unconditional, help: "How long to wait for them and for the seeds (default 0s: for good).")
    var waitTimeout: String?
    @Option(parsing: .unconditional, help: "Own keys from the start, not once ready (default false).")
    var participateImmediately: String?
    @Option(parsing: .unconditional, help: "A path the backend's health check GETs (default: a connect).")
    var backendHealthPath: String?
    @Option(parsing: .unconditional, help: "How often seeds are joined again (default 30s).")
    var rejoinInterval: String?
    @Option(parsing: .unconditional, help: "Largest request head (default 64KiB).")
    var maxHeaderBytes: String?
    @Option(parsing: .unconditional, help: "Largest request body (default 1GiB).")
    var maxBodyBytes: String?
    @Option(parsing: .unconditional, help: "Whether responses carry X-Ringside-Node (default true).")
    var nodeHeader: String?
    @Option(parsing: .unconditional, help: "trace, debug, info, notice, warning, error, critical (default info).")
    var logLevel: String?
    @Option(parsing: .unconditional, help: "logfmt or json (default logfmt).")
    var logFormat: String?
    @Flag(help: "Write an access log line for every request to standard output (off by default).")
    var accessLog = false
    @Option(parsing: .unconditional, help: "Event loop threads (default: one per core).")
    var eventLoops: String?
    @Option(parsing: .unconditional, help: "How HTTP/1.1 is served: epoll or nio (default epoll on Linux).")
    var appIO: String?
    @Option(parsing: .unconditional, help: "A PEM certificate chain: TLS on the app plane.")
    var tlsCert: String?
    @Option(parsing: .unconditional, help: "The PEM private key of --tls-cert.")
    var tlsKey: String?
    @Option(parsing: .unconditional, help: "This node's PEM certificate for mutual TLS between peers.")
    var clusterTlsCert: String?
    @Option(parsing: .unconditional, help: "The PEM private key of --cluster-tls-cert.")
    var clusterTlsKey: String?
    @Option(parsing: .unconditional, help: "The cluster's CA bundle (PEM).")
    var clusterTlsCa: String?
    @Option(parsing: .unconditional, help: "The CA bundle an https:// backend is checked against.")
    var backendTlsCa: String?
    @Option(parsing: .unconditional, help: "A file holding the admin plane's bearer token.")
    var adminTokenFile: String?

    var flags: [String: String] {
        let given: [(String, String?)] = [
            ("node-name", nodeName), ("listen", listen), ("cluster-listen", clusterListen),
            ("admin-listen", adminListen),
            ("advertise", advertise), ("join", join), ("cluster-name", clusterName), ("backend", backend),
            ("key-header", keyHeader), ("replicas", replicas), ("role", role), ("missing-key", missingKey),
            ("sharder", sharder), ("request-timeout", requestTimeout), ("connect-timeout", connectTimeout),
            ("header-read-timeout", headerReadTimeout), ("idle-timeout", idleTimeout), ("drain-timeout", drainTimeout),
            ("rejoin-interval", rejoinInterval), ("max-header-bytes", maxHeaderBytes), ("max-body-bytes", maxBodyBytes),
            ("node-header", nodeHeader), ("log-level", logLevel), ("log-format", logFormat),
            ("event-loops", eventLoops),
            ("app-io", appIO), ("wait-for-size", waitForSize), ("wait-timeout", waitTimeout),
            ("participate-immediately", participateImmediately), ("backend-health-path", backendHealthPath),
            ("tls-cert", tlsCert), ("tls-key", tlsKey), ("cluster-tls-cert", clusterTlsCert),
            ("cluster-tls-key", clusterTlsKey), ("cluster-tls-ca", clusterTlsCa), ("backend-tls-ca", backendTlsCa),
            ("admin-token-file", adminTokenFile), ("access-log", accessLog ? "true" : nil),
        ]
        return Dictionary(uniqueKeysWithValues: given.compactMap { key, value in value.map { (key, $0) } })
    }

    func run() async throws {
        let settings: RingsideSettings
        do {
            settings = try RingsideSettings.load(
                configFile: config ?? ProcessInfo.processInfo.environment["RINGSIDE_CONFIG"],
                environment: ProcessInfo.processInfo.environment,
                flags: flags
            )
        } catch {
            FileHandle.standardError.write(Data("ringside: \(error)\n".utf8))
            throw ExitCode(2)
        }
        try await Self.serve(settings)
    }

    /// Runs a node with `settings` until SIGTERM or SIGINT.
    static func serve(_ settings: RingsideSettings) async throws {
        let (level, format) = (settings.logLevel, settings.logFormat)
        LoggingSystem.bootstrap { label in LineLogHandler(label: label, format: format, level: level) }
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        var logger = Logger(label: "ringside")
        logger[metadataKey: "ringside.node"] = "\(settings.nodeName)"
        for (name, nearest) in settings.unknownVariables {
            logger.warning(
                "an environment variable names no setting and is ignored",
                metadata: ["ringside.variable": "\(name)", "ringside.did_you_mean": "\(nearest ?? "")"]
            )
        }
        // Loaded once metrics are bootstrapped: the planes count their handshakes.
        let security: NodeSecurity
        do {
            security = try NodeSecurity(settings, logger: logger)
        } catch {
            FileHandle.standardError.write(Data("ringside: \(error)\n".utf8))
            throw ExitCode(2)
        }

        let group = MultiThreadedEventLoopGroup(numberOfThreads: settings.eventLoops)
        let server = makeServer(settings, security: security, group: group, logger: logger)
        let events = ClusterEventLog()
        let gauges = NodeGauges()
        let admin: any Channel
        do {
            admin = try await AdminServer.bind(
                host: settings.adminListen.host,
                port: settings.adminListen.port,
                group: group,
                node: server.node,
                sources: AdminSources(
                    metricsText: {
                        gauges.update(node: server.node, drain: server.drain)
                        return registry.emitToString()
                    },
                    notReadyReason: { server.notReadyReason },
                    lookupReplicas: settings.replicas,
                    drain: server.drain,
                    token: security.adminToken,
                    events: events
                ),
                tls: AdvertisedHost.isLoopback(settings.adminListen.host) ? nil : security.app
            )
        } catch {
            Self.cannotListen(
                ListenError(setting: "admin-listen", address: "\(settings.adminListen)", underlying: error),
                logger
            )
        }
        logger.info(
            "admin listener started",
            metadata: ["ringside.setting": "admin-listen", "ringside.address": "\(settings.adminListen)"]
        )
        if !AdvertisedHost.isLoopback(settings.adminListen.host), security.adminToken == nil {
            // TLS alone keeps the admin plane's traffic private but does not say who may drain the node.
            logger.warning(
                "the admin plane beyond loopback has TLS but no token: any client that reaches it can drain this node",
                metadata: ["ringside.setting": "admin-token-file", "ringside.address": "\(settings.adminListen)"]
            )
        }
        // The node stops by draining: SIGTERM or SIGINT starts a drain, a second one during it stops at once. The
        // group ends when the node has stopped. Certificates reload when their files change, and on SIGHUP.
        var configured: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: server, successTerminationBehavior: .gracefullyShutdownGroup),
            .init(service: SignalDrain(drain: server.drain, logger: logger)),
            .init(service: ClusterEventFollower(log: events, node: server.node)),
        ]
        // SIGHUP reloads certificates; without any it is taken and logged, so that `systemctl reload` never ends
        // the process.
        let reloader = security.planes.isEmpty ? nil : TLSReloader(planes: security.planes, logger: logger)
        if let reloader { configured.append(.init(service: reloader)) }
        configured.append(.init(service: SignalReload(reloader: reloader, logger: logger)))
        let services = ServiceGroup(configuration: .init(services: configured, logger: logger))
        do {
            try await services.run()
        } catch {
            try? await admin.close()
            if let listen = error as? ListenError { Self.cannotListen(listen, logger) }
            if let cluster = error as? ClusterError, cluster.code == .listenFailed {
                Self.cannotListen(
                    ListenError(
                        setting: "cluster-listen",
                        address: "\(settings.clusterListen)",
                        underlying: cluster.underlying ?? cluster
                    ),
                    logger
                )
            }
            logger.critical("ringside stopped", metadata: ["ringside.error": "\(error)"])
            throw ExitCode(1)
        }
        // A moment for `ringside drain` to read the final report before the admin plane goes.
        if server.drain.phase == .stopped { try? await Task.sleep(for: .milliseconds(300)) }
        try? await admin.close()
        let exitCode = server.drain.exitCode
        if exitCode != 0 { throw ExitCode(exitCode) }
    }

    /// A listener that cannot start: logged naming the setting, exit status 1.
    static func cannotListen(_ error: ListenError, _ logger: Logger) -> Never {
        logger.critical(
            "cannot listen",
            metadata: [
                "ringside.setting": "\(error.setting)", "ringside.address": "\(error.address)",
                "ringside.error": "\(ConnectionFailureText.reason(error.underlying))",
            ]
        )
        FileHandle.standardError.write(Data("ringside: \(error)\n".utf8))
        Foundation.exit(1)
    }

    static func makeServer(
        _ settings: RingsideSettings,
        security: NodeSecurity,
        group: any EventLoopGroup,
        logger: Logger
    ) -> RingsideServer {
        var cluster = ClusterConfiguration(nodeName: settings.nodeName)
        cluster.clusterName = settings.clusterName
        cluster.listenAddress = settings.clusterListen.description
        cluster.advertiseAddress = settings.advertise
        cluster.seeds = settings.join
        // A participant starts as a viewer and takes part once ready (the gate, a healthy backend).
        cluster.initialState = settings.participateImmediately ? settings.role : .viewer
        var readiness = ReadinessConfiguration()
        readiness.waitForSize = settings.waitForSize
        readiness.waitTimeout = settings.waitTimeout
        readiness.participatesWhenReady = settings.role == .participant && !settings.participateImmediately
        readiness.backendHealthPath = settings.backendHealthPath
        cluster.sharding = settings.sharder
        cluster.rejoinInterval = settings.rejoinInterval
        cluster.tls = security.cluster
        var proxy = ProxyConfiguration(nodeName: settings.nodeName)
        proxy.keyHeader = settings.keyHeader
        proxy.missingKey = settings.missingKey
        proxy.appIO = settings.appIO
        proxy.addsNodeHeader = settings.nodeHeader
        proxy.maxHeaderBytes = settings.maxHeaderBytes
        proxy.maxBodyBytes = settings.maxBodyBytes
        if settings.accessLog {
            // Its own logger, on standard output: every request whatever the log level, apart from the diagnostics.
            let format = settings.logFormat
            proxy.accessLog = Logger(label: "ringside.access") {
                LineLogHandler(label: $0, format: format, level: .info, output: STDOUT_FILENO)
            }
        }
        proxy.headerReadTimeout = settings.headerReadTimeout
        proxy.idleTimeout = settings.idleTimeout
        proxy.requestTimeout = settings.requestTimeout
        proxy.connectTimeout = settings.connectTimeout
        proxy.drainTimeout = settings.drainTimeout
        return RingsideServer(
            cluster: cluster,
            proxy: proxy,
            appHost: settings.listen.host,
            appPort: settings.listen.port,
            backendHost: settings.backend.host,
            backendPort: settings.backend.port,
            backendSpeaksHTTP2: settings.backendSpeaksHTTP2,
            appTLS: security.app,
            backendTLS: security.backend,
            readiness: readiness,
            group: group,
            logger: logger
        )
    }
}

/// Turns SIGTERM and SIGINT into a drain: the first starts it, a second one during it stops the node at once.
struct SignalDrain: Service {
    let drain: NodeDrain
    let logger: Logger

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
        await cancelWhenGracefulShutdown {
            for await signal in signals {
                logger.info("signal received", metadata: ["ringside.signal": "\(signal)"])
                if drain.signal("\(signal)") {
                    let cut = drain.progress.cut
                    logger.warning(
                        "a second signal during the drain: stopping at once, cutting the requests under way",
                        metadata: ["ringside.cut": "\(cut)"]
                    )
                    Foundation.exit(drain.exitCode)
                }
            }
        }
    }
}

/// Reloads certificates on SIGHUP, whether or not their files changed; with none, says there is nothing to reload.
struct SignalReload: Service {
    let reloader: TLSReloader?
    let logger: Logger

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        await cancelWhenGracefulShutdown {
            for await _ in signals {
                if let reloader {
                    reloader.reload(force: true, trigger: "SIGHUP")
                } else {
                    logger.info("SIGHUP: nothing to reload (no TLS files); settings are read at start only")
                }
            }
        }
    }
}
