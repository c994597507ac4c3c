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
