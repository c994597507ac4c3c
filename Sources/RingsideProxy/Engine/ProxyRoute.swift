import NIOCore
import NIOHTTP1
import RingsideCluster

/// Where a request goes.
public enum ProxyRoute: Hashable, Sendable {
    /// This node's backend.
    case local
    /// Another node, through its cluster port.
    case peer(name: String, address: String)
}

/// Decides where requests go: the owners of a key, in order of preference, so that the proxy can fail over; and
/// hears how that went.
public protocol ProxyRouter: Sendable {
    /// The routes for `request`, best first; a refusal when it cannot be routed.
    func routes(for request: RoutingRequest) -> Result<[ProxyRoute], ProxyRefusal>
    /// An upstream could not be reached, or closed before answering.
    func upstreamFailed(_ route: ProxyRoute, error: (any Error)?)
}

extension ProxyRouter {
    public func upstreamFailed(_ route: ProxyRoute, error: (any Error)?) {}
}

/// What routing needs to know of a request.
public struct RoutingRequest: Sendable {
    /// The value of the key header, nil when there is none.
    public var key: String?
    /// Whether it carries the hop header: another Ringside node forwarded it.
    public var isForwarded: Bool
    /// Whether the forwarding node marked it as its last candidate.
    public var isFinalCandidate: Bool

    /// A request with `key`, forwarded or not.
    public init(key: String?, isForwarded: Bool = false, isFinalCandidate: Bool = false) {
        self.key = key
        self.isForwarded = isForwarded
        self.isFinalCandidate = isFinalCandidate
    }

    /// What `head` says, with the key in `keyHeader`.
    init(head: HTTPRequestHead, keyHeader: String) {
        self.init(
            key: head.headers.first(name: keyHeader),
            isForwarded: head.headers.contains(name: HeaderHygiene.hopHeader),
            isFinalCandidate: head.headers.contains(name: HeaderHygiene.finalHeader)
        )
    }
}

/// A request the proxy answers itself, with a status and a sentence.
public struct ProxyRefusal: Error, Sendable {
    /// The status to answer with.
    public var status: HTTPResponseStatus
    /// What went wrong, for the response body and the log.
    public var message: String
    /// Extra response headers.
    public var headers: HTTPHeaders

    /// Creates a refusal.
    public init(status: HTTPResponseStatus, message: String, headers: HTTPHeaders = [:]) {
        self.status = status
        self.message = message
        self.headers = headers
    }
}

/// Opens upstream channels: pooled connections to the backend, streams to peers. A channel it gives speaks
/// `HTTPClientRequestPart` out and `HTTPClientResponsePart` in, on the event loop it was asked for.
public protocol UpstreamProvider: Sendable {
    /// An upstream channel for `route`, on `eventLoop`; a new connection, not a kept one, when `fresh`.
    func lease(_ route: ProxyRoute, on eventLoop: any EventLoop, fresh: Bool) -> EventLoopFuture<UpstreamLease>

    /// An upstream for the engine's NIO driver: a pooled HTTP/1.1 connection for `route` carrying only a
    /// ``ByteUpstream``, on `eventLoop` (a new one when `fresh`), or a stream to an HTTP/2 backend behind an
    /// ``HTTP2StreamBridge``. The relay writes requests as bytes and frames the responses it reads.
    func leaseBytes(_ route: ProxyRoute, on eventLoop: any EventLoop, fresh: Bool) -> EventLoopFuture<UpstreamLease>

    /// Where the backend is, for the app plane's relay loops (which resolve a name themselves); nil keeps the app
    /// plane on NIO channels.
    var backend: HostAndPort? { get }

    /// The backend's URL, as answers and logs name it.
    var backendURL: String { get }
}

extension UpstreamProvider {
    public var backend: HostAndPort? { nil }

    public var backendURL: String { "the local backend" }
}

/// An upstream channel and how to give it back.
public struct UpstreamLease: Sendable {
    /// The channel.
    public var channel: any Channel
    /// Called once, when the exchange is over: `reusable` when the connection can carry another request.
    public var release: @Sendable (_ reusable: Bool) -> Void
    /// The connection carried requests before: kept between them, the upstream may have closed it as idle just as
    /// this one went out.
    public var reused: Bool

    /// Creates a lease.
    public init(channel: any Channel, reused: Bool = false, release: @escaping @Sendable (_ reusable: Bool) -> Void) {
        self.channel = channel
        self.reused = reused
        self.release = release
    }
}
