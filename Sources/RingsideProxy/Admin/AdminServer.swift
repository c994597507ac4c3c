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
    /// The node's membership events, for `GET /v1/watch` and the status page; nil: no watch API.
    public var events: ClusterEventLog?

    /// Creates the sources.
    public init(
        metricsText: @escaping @Sendable () -> String = { "" },
        notReadyReason: @escaping @Sendable () -> String? = { nil },
        lookupReplicas: Int = 1,
        drain: NodeDrain? = nil,
        token: [UInt8]? = nil,
        events: ClusterEventLog? = nil
    ) {
        self.token = token
        self.events = events
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
                        // A connection that sends nothing for a minute is closed (a watch only writes, so it stays).
                        try channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: .seconds(60)))
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

    static let jsonType = "application/json"

    /// The key whose owner is the leader (`GET /v1/leader`): a fixed key, so every node with the same view names the
    /// same participant.
    static let leaderKey = "ringside.leader"

    /// The answer to `method uri` with `body`: status, content type and body.
    static func answer(
        _ method: HTTPMethod,
        _ uri: String,
        body: [UInt8] = [],
        node: ClusterNode,
        sources: AdminSources
    ) -> (
        HTTPResponseStatus, String, String
    ) {
        let (path, query) = split(uri)
        let json = jsonType
        // HEAD is GET without the body (the handler leaves it out); a stream has no HEAD.
        if method == .HEAD, path == "/v1/watch" {
            return (.methodNotAllowed, json, error("/v1/watch answers GET only"))
        }
        switch (method == .HEAD ? .GET : method, path) {
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
            return (.ok, json, peersJSON(node) + "\n")
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
                let longest = NodeDrain.longestTimeout.components.seconds * 1000
                guard let milliseconds = Int64(text), (1...longest).contains(milliseconds) else {
                    return (
                        .badRequest, json,
                        error("timeout_ms must be a whole number from 1 to \(longest) (a day), not \"\(text)\"")
                    )
                }
                timeout = .milliseconds(milliseconds)
            }
            return (.accepted, json, progressJSON(drain.start(by: "admin", timeout: timeout)))
        case (.GET, "/v1/meta"):
            if let prefix = query["prefix"] {
                // Across the cluster: every live member's entries under the prefix, by member.
                let members = node.members.filter { $0.status.isActive }.sorted { $0.name < $1.name }
                let body = JSONWriter.object(
                    members.map { member in
                        (
                            member.name,
                            JSONWriter.object(
                                member.metadataValues.filter { $0.key.hasPrefix(prefix) }.sorted { $0.key < $1.key }
                                    .map { ($0.key, JSONWriter.quoted($0.value)) }
                            )
                        )
                    }
                )
                return (.ok, json, body + "\n")
            }
            return (.ok, json, metadataJSON(ownMetadata(node)) + "\n")
        case (.PUT, _) where path.hasPrefix("/v1/meta/"), (.DELETE, _) where path.hasPrefix("/v1/meta/"):
            let key = percentDecoded(String(path.dropFirst("/v1/meta/".count)))
            if let refusal = MetadataLimits.problem(key: key) { return (.badRequest, json, error(refusal.message)) }
            do {
                if method == .PUT {
                    try node.setMetadata(key, to: String(decoding: body, as: UTF8.self))
                } else {
                    guard ownMetadata(node)[key] != nil else {
                        return (.notFound, json, error("this node has no metadata entry \(key)"))
                    }
                    try node.deleteMetadata(key)
                }
            } catch let refusal as MetadataRefusal {
                return (refusal.reason == .tooLarge ? .payloadTooLarge : .badRequest, json, error(refusal.message))
            } catch {
                return (.serviceUnavailable, json, self.error("\(error)"))
            }
            return (.ok, json, metadataJSON(ownMetadata(node)) + "\n")
        case (.GET, "/v1/watch"):
            // Streamed by the handler; here only when the node keeps no event log.
            return (.notFound, json, error("this node has no watch API"))
        case (.GET, "/v1/leader"):
            do {
                guard let leader = try node.lookup(leaderKey).first else {
                    return (.serviceUnavailable, json, error("no participant owns keys"))
                }
                let body = JSONWriter.object([
                    ("name", JSONWriter.quoted(leader.name)),
                    ("address", JSONWriter.quoted(leader.address)),
                    ("self", leader.isSelf ? "true" : "false"),
                    ("epoch", JSONWriter.quoted(String(node.sharder.checksum, radix: 16))),
                    ("partition_safe", "false"),
                ])
                return (.ok, json, body + "\n")
            } catch {
                return (.serviceUnavailable, json, self.error(error.message))
            }
        case (.GET, "/"):
            return (.ok, "text/html; charset=utf-8", StatusPage.html(node: node, events: sources.events))
        case (_, "/v1/drain"):
            return (.methodNotAllowed, json, error("/v1/drain answers GET and POST only"))
        case (_, _) where path.hasPrefix("/v1/meta/"):
            return (.methodNotAllowed, json, error("/v1/meta/KEY answers PUT and DELETE only"))
        case (_, "/livez"), (_, "/readyz"), (_, "/metrics"), (_, "/v1/peers"), (_, "/v1/state"), (_, "/v1/lookup"),
            (_, "/v1/meta"), (_, "/v1/leader"), (_, "/v1/watch"), (_, "/"):
            return (.methodNotAllowed, json, error("\(path) answers GET only"))
        default:
            return (
                .notFound, json,
                error(
                    "no admin path \(path); see /, /v1/peers, /v1/state, /v1/lookup, /v1/drain, /v1/watch, /v1/meta, "
                        + "/v1/leader, /livez, /readyz, /metrics"
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

    /// Every member in the view, by name, as `/v1/peers` and the watch API's `view` event show them, each with its
    /// share of the key space.
    static func peersJSON(_ node: ClusterNode) -> String {
        let local = node.configuration.nodeName
        let shares = node.sharder.keyShares()
        return JSONWriter.array(
            node.members.sorted { $0.name < $1.name }.map {
                JSONWriter.object(
                    ClusterEventLog.memberFields($0, local: local) + [("key_share", String(shares[$0.name] ?? 0))]
                )
            }
        )
    }

    /// This node's live metadata entries.
    static func ownMetadata(_ node: ClusterNode) -> [String: String] {
        node.members.first { $0.name == node.configuration.nodeName }?.metadataValues ?? [:]
    }

    static func metadataJSON(_ entries: [String: String]) -> String {
        JSONWriter.object(entries.sorted { $0.key < $1.key }.map { ($0.key, JSONWriter.quoted($0.value)) })
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

/// Answers admin requests. A body is read only for `PUT /v1/meta/KEY` (up to ``maxBody`` bytes); `GET /v1/watch`
/// keeps the connection and streams.
final class AdminHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    /// The largest request body the admin plane reads (a metadata value and then some).
    static let maxBody = 4096

    private let node: ClusterNode
    private let sources: AdminSources
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var watch: Task<Void, Never>?
    private var closing = false

    init(node: ClusterNode, sources: AdminSources) {
        self.node = node
        self.sources = sources
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // After a response that closes the connection, nothing read behind it is acted on (a pipelined request
        // decoded from the same bytes would otherwise run unanswered).
        guard !closing else { return }
        switch unwrapInboundIn(data) {
        case .head(let request):
            head = request
            body = []
            let declared = request.headers.first(name: "content-length").flatMap { Int($0) } ?? 0
            if declared > Self.maxBody { refuseTooLarge(context) }
        case .body(let chunk):
            guard head != nil else { return }
            if body.count + chunk.readableBytes > Self.maxBody {
                refuseTooLarge(context)
            } else {
                body += chunk.readableBytesView
            }
        case .end:
            guard let request = head, watch == nil else { return }
            head = nil
            let authorized = AdminServer.authorized(
                request.uri,
                authorization: request.headers.first(name: "authorization"),
                token: sources.token
            )
            guard authorized else {
                respond(
                    context,
                    request,
                    (.unauthorized, AdminServer.jsonType, AdminServer.error("this admin plane needs a bearer token"))
                )
                return
            }
            if request.method == .GET, AdminServer.split(request.uri).0 == "/v1/watch", let events = sources.events {
                startWatch(context, request, events)
                return
            }
            respond(
                context,
                request,
                AdminServer.answer(request.method, request.uri, body: body, node: node, sources: sources)
            )
        }
    }

    /// A body beyond ``maxBody``, declared or sent: refused at once, before the rest arrives, and the connection
    /// closed (what is still on its way is not read).
    private func refuseTooLarge(_ context: ChannelHandlerContext) {
        guard let request = head else { return }
        head = nil
        body = []
        let message = AdminServer.error("the admin plane reads bodies up to \(Self.maxBody) bytes")
        respond(context, request, (.payloadTooLarge, AdminServer.jsonType, message), close: true)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read, watch == nil {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        watch?.cancel()
        watch = nil
        context.fireChannelInactive()
    }

    private func respond(
        _ context: ChannelHandlerContext,
        _ request: HTTPRequestHead,
        _ answer: (HTTPResponseStatus, String, String),
        close: Bool = false
    ) {
        let (status, type, text) = answer
        let body = ByteBuffer(string: text)
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: type)
        headers.add(name: "content-length", value: String(body.readableBytes))
        let keepAlive = request.isKeepAlive && !close
        if !keepAlive { closing = true }
        if !keepAlive { headers.add(name: "connection", value: "close") }
        if status == .unauthorized { headers.add(name: "www-authenticate", value: "Bearer") }
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))),
            promise: nil
        )
        if request.method != .HEAD { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            if !keepAlive { context.close(promise: nil) }
        }
    }

    /// Streams the watch API: the view (or, with a `Last-Event-ID` still kept, what was missed), then each event as it
    /// comes, and a comment every 15 s so that idle proxies keep the connection. A reader too slow to take what is
    /// written is disconnected (it resumes with `Last-Event-ID`).
    private func startWatch(_ context: ChannelHandlerContext, _ request: HTTPRequestHead, _ events: ClusterEventLog) {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "text/event-stream")
        headers.add(name: "cache-control", value: "no-cache")
        context.writeAndFlush(
            wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: .ok, headers: headers))),
            promise: nil
        )
        let lastSeen = request.headers.first(name: "last-event-id").flatMap { Int($0) }
        let (missed, current, stream) = events.subscribe(after: lastSeen)
        var opening = "retry: 1000\n\n"
        if let missed {
            for entry in missed { opening += WatchFormat.event(entry) }
        } else {
            opening += WatchFormat.view(id: current, node: node)
        }
        let channel = context.channel
        let send: @Sendable (String) -> Bool = { text in
            guard channel.isActive else { return false }
            // Unflushed bytes beyond the high-water mark: the reader is not reading.
            guard channel.isWritable else {
                channel.close(promise: nil)
                return false
            }
            let buffer = ByteBuffer(string: text)
            channel.writeAndFlush(HTTPServerResponsePart.body(.byteBuffer(buffer)), promise: nil)
            return true
        }
        _ = send(opening)
        watch = Task {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    var lastSent = missed?.last?.id ?? current
                    for await entry in stream {
                        // The stream dropped events for a reader this slow: end, so that it resumes from what it has.
                        guard entry.id == lastSent + 1 else {
                            channel.close(promise: nil)
                            return
                        }
                        guard send(WatchFormat.event(entry)) else { return }
                        lastSent = entry.id
                    }
                }
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: .seconds(15))
                        guard !Task.isCancelled, send(": keep-alive\n\n") else { return }
                    }
                }
                await group.next()
                group.cancelAll()
            }
        }
    }
}

/// The watch API's wire format (server-sent events).
enum WatchFormat {
    static func event(_ entry: ClusterEventLog.Entry) -> String {
        "id: \(entry.id)\nevent: \(entry.name)\ndata: \(entry.data)\n\n"
    }

    /// The whole view as one `view` event (the `/v1/peers` list), numbered with the last event it includes.
    static func view(id: Int, node: ClusterNode) -> String {
        "id: \(id)\nevent: view\ndata: \(AdminServer.peersJSON(node))\n\n"
    }
}
