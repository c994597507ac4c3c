import Logging

/// How the data plane treats requests.
public struct ProxyConfiguration: Sendable {
    /// What to do with a request that has no key header.
    public enum MissingKeyPolicy: String, Sendable, CaseIterable {
        /// Serve it from the local backend.
        case local
        /// Answer 400.
        case reject
    }

    /// How HTTP/1.1 connections are served: the app plane's, and the cluster port's forwarded requests.
    public enum AppIO: String, Sendable, CaseIterable {
        /// Relay loops of Ringside's own on epoll (Linux only), which hand what they do not carry over to NIO.
        case epoll
        /// NIO channels throughout.
        case nio
    }

    /// The header that carries the shard key.
    public var keyHeader = "X-Shard-Key"
    /// What to do without a key.
    public var missingKey = MissingKeyPolicy.local
    /// The name this node reports in `X-Ringside-Node` and `Via`.
    public var nodeName: String
    /// Whether proxied responses carry `X-Ringside-Node`.
    public var addsNodeHeader = true
    /// The largest request head (request line and headers) accepted; larger ones are answered 431.
    public var maxHeaderBytes = 64 << 10
    /// The largest request body accepted; larger ones are answered 413.
    public var maxBodyBytes = 1 << 30
    /// How long a client may take to send a request head.
    public var headerReadTimeout: Duration = .seconds(10)
    /// How long a keep-alive connection may sit idle between requests.
    public var idleTimeout: Duration = .seconds(75)
    /// How long a whole request may take, end to end, when the client sets no shorter deadline.
    public var requestTimeout: Duration = .seconds(60)
    /// How long to wait for a connection to the backend or a peer.
    public var connectTimeout: Duration = .seconds(2)
    /// Idle keep-alive connections kept per event loop and upstream.
    public var maxIdleConnectionsPerUpstream = 64
    /// Connections open or opening to one upstream from one event loop (NIO's pools); past that, requests wait.
    public var maxConnectionsPerUpstream = 256
    /// Requests that may wait for a connection to one upstream on one event loop; past that, 503.
    public var maxPendingPerUpstream = 256
    /// How long a kept upstream connection may sit idle in its pool before it is closed (nginx's upstream
    /// `keepalive_timeout` is 60 s too).
    public var upstreamIdleTimeout: Duration = .seconds(60)
    /// How long a drain waits for the requests under way before it leaves anyway, cutting them.
    public var drainTimeout: Duration = .seconds(30)
    /// Where the access log goes, one line a request (``AccessLog``); nil: no access log, and nothing of it on the hot
    /// path but one check.
    public var accessLog: Logger?
    /// How HTTP/1.1 connections are served (both planes): relay loops on epoll where there is epoll, NIO elsewhere.
    #if os(Linux)
    public var appIO = AppIO.epoll
    #else
    public var appIO = AppIO.nio
    #endif

    /// A configuration for the node named `nodeName`, defaults elsewhere.
    public init(nodeName: String) { self.nodeName = nodeName }

    /// Why `name` cannot be the key header, or nil when it can: it must be an RFC 9110 token (ASCII letters, digits
    /// and ``!#$%&'*+-.^_`|~``) that names no field the proxy itself reads or sets on the way: a framing field
    /// (`Content-Length`, `Transfer-Encoding`), `Host`, a hop-by-hop field, or an `x-ringside-*` field.
    public static func keyHeaderProblem(_ name: String) -> String? {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty, bytes.allSatisfy(HTTP1Parsing.isToken) else {
            return "is not a header name (an RFC 9110 token: letters, digits and !#$%&'*+-.^_`|~)"
        }
        let kind = bytes.withUnsafeBytes { HTTP1Parsing.kind(of: $0, name: 0..<$0.count, key: []) }
        if kind.describesFraming || kind == .host || kind.isHopByHop {
            return "names a field that frames or routes the message, or describes one connection; choose another"
        }
        if name.lowercased().hasPrefix("x-ringside-") { return "names a field Ringside keeps for itself" }
        return nil
    }
}
