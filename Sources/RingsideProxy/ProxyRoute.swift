import NIOCore
import NIOHTTP1

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
    /// The routes for the request `head` with `key` (nil when it has none), best first; a refusal when it cannot be
    /// routed.
    func routes(for head: HTTPRequestHead, key: String?) -> Result<[ProxyRoute], ProxyRefusal>
    /// An upstream could not be reached, or closed before answering.
    func upstreamFailed(_ route: ProxyRoute, error: (any Error)?)
}

extension ProxyRouter {
    public func upstreamFailed(_ route: ProxyRoute, error: (any Error)?) {}
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
    /// An upstream channel for `route`, on `eventLoop`.
    func lease(_ route: ProxyRoute, on eventLoop: any EventLoop) -> EventLoopFuture<UpstreamLease>

    /// A new HTTP/1.1 connection for `route`, outside any pool, for a protocol upgrade.
    func freshConnection(_ route: ProxyRoute, on eventLoop: any EventLoop) -> EventLoopFuture<any Channel>
}

extension UpstreamProvider {
    public func freshConnection(_ route: ProxyRoute, on eventLoop: any EventLoop) -> EventLoopFuture<any Channel> {
        eventLoop.makeFailedFuture(
            ProxyRefusal(status: .notImplemented, message: "this proxy does not pass upgrades on")
        )
    }
}

/// An upstream channel and how to give it back.
public struct UpstreamLease: Sendable {
    /// The channel.
    public var channel: any Channel
    /// Called once, when the exchange is over: `reusable` when the connection can carry another request.
    public var release: @Sendable (_ reusable: Bool) -> Void

    /// Creates a lease.
    public init(channel: any Channel, release: @escaping @Sendable (_ reusable: Bool) -> Void) {
        self.channel = channel
        self.release = release
    }
}
