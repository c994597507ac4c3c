import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import RingsideCluster

/// When a node is ready for traffic and takes part in the ring.
public struct ReadinessConfiguration: Sendable {
    /// The members (this node included; viewers and participants, alive) a node waits to see before it is ready and
    /// takes part (Alloy's `--cluster.wait-for-size`). Members, not participants: nodes that wait start as viewers, and
    /// would wait for each other for good.
    public var waitForSize = 1
    /// How long it waits for them, and for its seeds to answer, at most; nil waits for good.
    public var waitTimeout: Duration?
    /// Start as a viewer (owning nothing) and become a participant once ready and the backend accepts connections.
    public var participatesWhenReady = false
    /// The backend's health check: a path to GET (any status below 500 is healthy), or nil for a connect.
    public var backendHealthPath: String?
    /// How often the backend is checked.
    public var backendHealthInterval: Duration = .seconds(2)

    public init() {}
}

/// Why a node that waits for its cluster is not ready yet, decided from what it sees (no I/O).
enum ReadinessGate {
    /// The reason, or nil once the gate is passed: the seeds (when there are any) have answered and the `members`
    /// seen (alive, not terminating, this node included) reach `waitForSize`; or the wait timed out.
    static func problem(seeds: [String], joined: Bool, members: Int, waitForSize: Int, waitedOut: Bool) -> String? {
        guard !waitedOut else { return nil }
        if !seeds.isEmpty, !joined {
            return "its seeds (\(seeds.joined(separator: ", "))) have not answered"
        }
        if members < waitForSize { return "it sees \(members) of the \(waitForSize) members it waits for" }
        return nil
    }
}

/// Checks the backend every interval: a connection (and its TLS handshake, for an `https://` backend), or a GET of a
/// path; the node is not ready while it fails.
final class BackendHealth: Sendable {
    private let host: String
    private let port: Int
    private let path: String?
    private let interval: Duration
    private let tls: UpstreamSecurity?
    private let state = NIOLockedValueBox<String?>("the backend has not been checked yet")

    init(host: String, port: Int, path: String?, interval: Duration, tls: UpstreamSecurity?) {
        self.host = host
        self.port = port
        self.path = path
        self.interval = interval
        self.tls = tls
    }

    /// Why the backend is not healthy, or nil.
    var problem: String? { state.withLockedValue { $0 } }

    func run(logger: Logger) async {
        while !Task.isCancelled {
            let found = await check()
            let previous = state.withLockedValue { state in
                defer { state = found }
                return state
            }
            if found != previous, previous != "the backend has not been checked yet" || found != nil {
                if let found {
                    logger.warning("the backend is unhealthy", metadata: ["ringside.reason": "\(found)"])
                } else {
                    logger.info("the backend is healthy")
                }
            }
            try? await Task.sleep(for: interval)
        }
    }

    private func check() async -> String? {
        let target = "\(tls == nil ? "http" : "https")://\(HostAndPort(host: host, port: port))\(path ?? "")"
        let reader = StatusLineReader()
        // Completed whatever happens (a promise left open is a leak; a second completion is ignored).
        defer { reader.fail() }
        do {
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.seconds(1))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(reader) }
                }
                .connect(host: host, port: port)
                .get()
            defer { channel.close(promise: nil) }
            if let tls {
                try await tls.tls.connect(
                    channel,
                    role: tls.role,
                    serverHostname: tls.serverHostname,
                    timeout: .seconds(1)
                ).get()
            }
            guard let path else { return nil }
            let request =
                "GET \(path) HTTP/1.1\r\nHost: \(HostAndPort(host: host, port: port))\r\nConnection: close\r\n\r\n"
            try await channel.writeAndFlush(ByteBuffer(string: request)).get()
            let timeout = channel.eventLoop.scheduleTask(in: .seconds(1)) { reader.fail() }
            defer { timeout.cancel() }
            let status = try await reader.status.futureResult.get()
            return status < 500 ? nil : "the backend answered \(status) to GET \(target)"
        } catch {
            return "the backend at \(target) does not answer: \(ConnectionFailureText.reason(error))"
        }
    }
}

/// Reads the status code of the first response on a connection.
private final class StatusLineReader: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer

    let status = MultiThreadedEventLoopGroup.singleton.next().makePromise(of: Int.self)
    private let received = NIOLockedValueBox<[UInt8]>([])

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = received.withLockedValue { received in
            received += unwrapInboundIn(data).readableBytesView.prefix(64 - min(64, received.count))
            return received
        }
        // "HTTP/1.1 200 …"
        guard bytes.count >= 12 else { return }
        let code = Int(String(decoding: bytes[9..<12], as: UTF8.self))
        if let code, bytes.starts(with: Array("HTTP/1.".utf8)) {
            status.succeed(code)
        } else {
            status.fail(ChannelError.inappropriateOperationForState)
        }
    }

    func channelInactive(context: ChannelHandlerContext) { fail() }

    func fail() { status.fail(ChannelError.ioOnClosedChannel) }
}
