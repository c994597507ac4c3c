import NIOCore
import RingsideCluster

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
