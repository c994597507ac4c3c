import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import RingsideCluster
import RingsideMembership
import RingsideSharding

/// What the admin plane needs to know beyond the cluster node.
public struct AdminSources: Sendable {
    /// The Prometheus text of every metric, when a registry is installed.
    public var metricsText: @Sendable () -> String
    /// Why the node is not ready, or nil when it is (backend health, draining).
    public var notReadyReason: @Sendable () -> String?
    /// How many owners `/v1/lookup` reports when the query does not say (`replicas` in the configuration).
    public var lookupReplicas: Int
    /// The node's drain, for `POST /v1/drain` and `GET /v1/drain`.
    public var drain: NodeDrain?
    /// A bearer token every request but `/livez` and `/readyz` must carry (`Authorization: Bearer …`); nil: none.
    public var token: [UInt8]?

    /// Creates the sources.
    public init(
        metricsText: @escaping @Sendable () -> String = { "" },
        notReadyReason: @escaping @Sendable () -> String? = { nil },
        lookupReplicas: Int = 1,
        drain: NodeDrain? = nil,
        token: [UInt8]? = nil
    ) {
        self.token = token
        self.metricsText = metricsText
        self.notReadyReason = notReadyReason
        self.lookupReplicas = lookupReplicas
        self.drain = drain
    }
}

/// The admin plane: health, readiness, metrics and the JSON API (see the README for each path).
public enum AdminServer {
    /// Binds the admin listener; with `tls` (``TLSRole/adminServer``) it speaks HTTP/1.1 over TLS.
    public static func bind(
        host: String,
        port: Int,
        group: any EventLoopGroup,
        node: ClusterNode,
        sources: AdminSources,
        tls: PlaneTLS? = nil
    ) async throws -> any Channel {
        try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let http: (any Channel) throws -> Void = { channel in
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                        try channel.pipeline.syncOperations.addHandler(AdminHandler(node: node, sources: sources))
                    }
                    guard let tls else { return try http(channel) }
                    try tls.accept(channel, role: .adminServer, timeout: .seconds(10)) { channel, _, _ in
                        try http(channel)
                    }
                }
            }
            .bind(host: host, port: port)
            .get()
    }

    /// Whether a request for `uri` may be answered with the `authorization` it carries: always for `/livez` and
    /// `/readyz` (probes), otherwise only with the bearer token, when there is one (compared in constant time).
    static func authorized(_ uri: String, authorization: String?, token: [UInt8]?) -> Bool {
        guard let token else { return true }
        let path = split(uri).0
        if path == "/livez" || path == "/readyz" { return true }
        guard let authorization, authorization.lowercased().hasPrefix("bearer ") else { return false }
        let presented = Array(authorization.utf8.dropFirst(7))
        var difference = UInt8(truncatingIfNeeded: presented.count ^ token.count)
        for index in 0..<token.count {
            difference |= token[index] ^ (index < presented.count ? presented[index] : 0)
        }
        return difference == 0
    }

    /// The answer to `GET uri`: status, content type and body.
    static func answer(
        _ method: HTTPMethod,
        _ uri: String,
        node: ClusterNode,
        sources: AdminSources
    ) -> (
        HTTPResponseStatus, String, String
    ) {
        let (path, query) = split(uri)
        let json = "application/json"
        switch (method, path) {
        case (.GET, "/livez"):
            return (.ok, "text/plain; charset=utf-8", "ok\n")
        case (.GET, "/readyz"):
            if let reason = readiness(node: node, sources: sources) {
                return (.serviceUnavailable, "text/plain; charset=utf-8", "not ready: \(reason)\n")
            }
            return (.ok, "text/plain; charset=utf-8", "ready\n")
        case (.GET, "/metrics"):
            return (.ok, "text/plain; version=0.0.4; charset=utf-8", sources.metricsText())
        case (.GET, "/v1/peers"):
            let local = node.configuration.nodeName
            let peers = node.members.sorted { $0.name < $1.name }.map { member in
                JSONWriter.object([
                    ("name", JSONWriter.quoted(member.name)),
                    ("address", JSONWriter.quoted(member.address)),
                    ("state", JSONWriter.quoted(member.state.description)),
                    ("status", JSONWriter.quoted(member.status.description)),
                    ("self", member.name == local ? "true" : "false"),
                    ("incarnation", String(member.incarnation)),
                    (
                        "metadata",
                        JSONWriter.object(
                            member.metadataValues.sorted { $0.key < $1.key }.map {
                                ($0.key, JSONWriter.quoted($0.value))
                            }
                        )
                    ),
                ])
            }
            return (.ok, json, JSONWriter.array(peers) + "\n")
        case (.GET, "/v1/state"):
            let sharder = node.sharder
            var counts: [PeerState: Int] = [:]
            for peer in sharder.peers { counts[peer.state, default: 0] += 1 }
            let body = JSONWriter.object([
                ("name", JSONWriter.quoted(node.configuration.nodeName)),
                ("state", JSONWriter.quoted(node.state.description)),
                ("epoch", JSONWriter.quoted(String(sharder.checksum, radix: 16))),
                ("cluster_auth", JSONWriter.quoted(node.configuration.tls == nil ? "none" : "mtls")),
                (
                    "peers",
                    JSONWriter.object(
                        [PeerState.viewer, .participant, .terminating].map { ($0.description, String(counts[$0] ?? 0)) }
                    )
                ),
            ])
            return (.ok, json, body + "\n")
        case (.GET, "/v1/lookup"):
            guard let key = query["key"], !key.isEmpty else {
                return (.badRequest, json, error("the query needs a key: /v1/lookup?key=K[&replicas=N]"))
            }
            let replicas: Int
            if let text = query["replicas"] {
                guard let number = Int(text) else {
                    return (.badRequest, json, error("replicas must be a whole number, not \"\(text)\""))
                }
                replicas = number
            } else {
                replicas = sources.lookupReplicas
            }
            do {
                let owners = try node.lookup(key, replicas: replicas)
                let body = JSONWriter.object([
                    ("key", JSONWriter.quoted(key)),
                    (
                        "owners",
                        JSONWriter.array(
                            owners.map {
                                JSONWriter.object([
                                    ("name", JSONWriter.quoted($0.name)),
                                    ("address", JSONWriter.quoted($0.address)),
                                    ("state", JSONWriter.quoted($0.state.description)),
                                    ("self", $0.isSelf ? "true" : "false"),
                                ])
                            }
                        )
                    ),
                ])
                return (.ok, json, body + "\n")
            } catch {
                let status: HTTPResponseStatus = error.code == .invalidArgument ? .badRequest : .serviceUnavailable
                return (status, json, self.error(error.message))
            }
        case (.GET, "/v1/drain"), (.POST, "/v1/drain"):
            guard let drain = sources.drain else { return (.notFound, json, error("this node has no drain")) }
            guard method == .POST else { return (.ok, json, progressJSON(drain.progress)) }
            var timeout: Duration?
            if let text = query["timeout_ms"] {
                guard let milliseconds = Int64(text), (1...86_400_000).contains(milliseconds) else {
                    return (
                        .badRequest, json,
                        error("timeout_ms must be a whole number from 1 to 86400000 (a day), not \"\(text)\"")
                    )
                }
                timeout = .milliseconds(milliseconds)
            }
            return (.accepted, json, progressJSON(drain.start(by: "admin", timeout: timeout)))
        case (_, "/v1/drain"):
            return (.methodNotAllowed, json, error("/v1/drain answers GET and POST only"))
        case (_, "/livez"), (_, "/readyz"), (_, "/metrics"), (_, "/v1/peers"), (_, "/v1/state"), (_, "/v1/lookup"):
            return (.methodNotAllowed, json, error("\(path) answers GET only"))
        default:
            return (
                .notFound, json,
                error(
                    "no admin path \(path); see /v1/peers, /v1/state, /v1/lookup, /v1/drain, /livez, /readyz, /metrics"
                )
            )
        }
    }

    /// Why the node is not ready: not running, what `sources` says (a drain, the wait for the cluster, the backend),
    /// or no owner in the view.
    static func readiness(node: ClusterNode, sources: AdminSources) -> String? {
        guard node.members.contains(where: { $0.name == node.configuration.nodeName }) else {
            return "the cluster node is not running"
        }
        if let reason = sources.notReadyReason() { return reason }
        guard node.sharder.eligibleCount(for: .readWrite) > 0 else { return "no participant owns keys yet" }
        return nil
    }

    /// A drain's progress as `GET /v1/drain` shows it.
    static func progressJSON(_ progress: DrainProgress) -> String {
        JSONWriter.object([
            ("state", JSONWriter.quoted(progress.state)),
            ("trigger", progress.trigger.map(JSONWriter.quoted) ?? "null"),
            ("elapsed_seconds", String(progress.elapsedSeconds)),
            ("timeout_seconds", progress.timeoutSeconds.map { String($0) } ?? "null"),
            (
                "in_flight",
                JSONWriter.object(progress.inFlight.sorted { $0.key < $1.key }.map { ($0.key, String($0.value)) })
            ),
            ("tunnels", String(progress.tunnels)),
            ("finished", String(progress.finished)),
            ("cut", String(progress.cut)),
            ("tunnels_closed", String(progress.tunnelsClosed)),
            ("timed_out", progress.timedOut ? "true" : "false"),
        ]) + "\n"
    }

    static func error(_ message: String) -> String {
        JSONWriter.object([("error", JSONWriter.quoted(message))]) + "\n"
    }

    /// The path and the decoded query parameters of `uri`.
    static func split(_ uri: String) -> (String, [String: String]) {
        guard let mark = uri.firstIndex(of: "?") else { return (uri, [:]) }
        var query: [String: String] = [:]
        for pair in uri[uri.index(after: mark)...].split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1).map { percentDecoded(String($0)) }
            if let name = parts.first { query[name] = parts.count > 1 ? parts[1] : "" }
        }
        return (String(uri[..<mark]), query)
    }

    /// `text` with `%XX` escapes and `+` (a space) decoded, as HTML forms write a query; a `%` not followed by two
    /// hex digits stays as it is (as WHATWG URL parsers leave it).
    static func percentDecoded(_ text: String) -> String {
        let input = Array(text.utf8)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(input.count)
        var index = 0
        while index < input.count {
            let byte = input[index]
            if byte == UInt8(ascii: "%"), index + 2 < input.count, let high = hexValue(input[index + 1]),
                let low = hexValue(input[index + 2])
            {
                bytes.append(high << 4 | low)
                index += 3
                continue
            }
            bytes.append(byte == UInt8(ascii: "+") ? UInt8(ascii: " ") : byte)
            index += 1
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

/// Answers admin requests; bodies are ignored.
final class AdminHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let node: ClusterNode
    private let sources: AdminSources
    private var head: HTTPRequestHead?

    init(node: ClusterNode, sources: AdminSources) {
        self.node = node
        self.sources = sources
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let request):
            head = request
        case .body:
            break
        case .end:
            guard let request = head else { return }
            head = nil
            let authorized = AdminServer.authorized(
                request.uri,
                authorization: request.headers.first(name: "authorization"),
                token: sources.token
            )
            let (status, type, text) =
                authorized
                ? AdminServer.answer(request.method, request.uri, node: node, sources: sources)
                : (.unauthorized, "application/json", AdminServer.error("this admin plane needs a bearer token"))
            let body = ByteBuffer(string: text)
            var headers = HTTPHeaders()
            headers.add(name: "content-type", value: type)
            headers.add(name: "content-length", value: String(body.readableBytes))
            if !request.isKeepAlive { headers.add(name: "connection", value: "close") }
            if !authorized { headers.add(name: "www-authenticate", value: "Bearer") }
            context.write(
                wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))),
                promise: nil
            )
            if request.method != .HEAD { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
            let keepAlive = request.isKeepAlive
            context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
                if !keepAlive { context.close(promise: nil) }
            }
        }
    }
}
