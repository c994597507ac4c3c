import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix

/// Sets up a connection of the cluster port that speaks HTTP/1.1 (requests other nodes forwarded), once its first
/// bytes have told it from gossip's HTTP/2: called on the connection's event loop, it adds the handlers that serve it.
public typealias ClusterConnectionInitializer = @Sendable (any Channel) throws -> Void

/// A bound cluster listener: the port it got, and how it closes (every connection with it).
public protocol ClusterListener: Sendable {
    /// The bound port.
    var port: Int? { get }
    /// Stops accepting and closes every connection.
    func close() async
}

/// Binds the cluster port at an address in a way of its own (the data plane's relay loops): `connection` sets up a
/// connection the listener does not serve itself, whose first bytes it has read, as the node's default listener
/// would (gossip over HTTP/2).
public typealias ClusterListenerBinder =
    @Sendable (_ address: HostAndPort, _ connection: @escaping @Sendable (any Channel) throws -> Void) async throws ->
    any ClusterListener

/// The cluster listener. HTTP/2 with prior knowledge (h2c) carries gossip: envelopes arrive as `POST /ringside/v1/gossip`
/// streams; any other stream is answered 404. An HTTP/1.1 connection (told apart by its first bytes) carries requests
/// other nodes forwarded, and goes to the `forwardedConnections` initializer; without one it is closed.
///
/// A gossip body is collected up to the decoder's limit (anything longer is answered 413 and dropped) and handed to
/// `receive`, which answers whether the frame was accepted: 204 if so, 400 if it was not a valid frame (or, under
/// mutual TLS, it came from a node whose certificate does not carry the sender's name).
///
/// With `tls`, every connection is mutual TLS first (``TLSRole/clusterServer``): a peer without a certificate of the
/// cluster's CA is refused at the handshake, and ALPN tells gossip (`h2`) from forwarded requests (`http/1.1`).
enum GossipServer {
    static let path = "/ringside/v1/gossip"

    /// How long a new connection to the cluster port has to say whether it speaks HTTP/2 or HTTP/1.1.
    static let prefaceTimeout = TimeAmount.seconds(10)

    /// Binds the listener.
    static func bind(
        to address: HostAndPort,
        group: any EventLoopGroup,
        maxBodyBytes: Int,
        idleTimeout: Duration,
        forwardedConnections: ClusterConnectionInitializer?,
        tls: PlaneTLS?,
        receive: @escaping @Sendable ([UInt8], GossipSource) -> Bool
    ) async throws -> GossipListener {
        let connections = NIOLockedValueBox<[ObjectIdentifier: any Channel]>([:])
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                let id = ObjectIdentifier(channel)
                connections.withLockedValue { $0[id] = channel }
                channel.closeFuture.whenComplete { _ in _ = connections.withLockedValue { $0.removeValue(forKey: id) } }
                return channel.eventLoop.makeCompletedFuture {
                    try configure(
                        channel,
                        maxBodyBytes: maxBodyBytes,
                        idleTimeout: idleTimeout,
                        forwardedConnections: forwardedConnections,
                        tls: tls,
                        receive: receive
                    )
                }
            }
            .bind(host: address.host, port: address.port)
            .get()
        return GossipListener(channel: channel, connections: connections)
    }

    /// Sets up a connection of the cluster port: told HTTP/2 (gossip) from HTTP/1.1 (forwarded requests, for
    /// `forwardedConnections`; closed without one) by ALPN under `tls`, by its first bytes otherwise.
    static func configure(
        _ channel: any Channel,
        maxBodyBytes: Int,
        idleTimeout: Duration,
        forwardedConnections: ClusterConnectionInitializer?,
        tls: PlaneTLS?,
        receive: @escaping @Sendable ([UInt8], GossipSource) -> Bool
    ) throws {
        let http1: (any Channel) throws -> Void = { channel in
            guard let forwardedConnections else { throw ChannelError.inappropriateOperationForState }
            try forwardedConnections(channel)
        }
        func http2(_ identity: PeerIdentity?) -> (any Channel) throws -> Void {
            { channel in
                let source = GossipSource(identity: identity, budget: InflateBudget())
                try ProtocolSniffer.configureHTTP2Streams(channel, idleTimeout: .init(idleTimeout)) {
                    GossipRequestHandler(maxBodyBytes: maxBodyBytes) { receive($0, source) }
                }
            }
        }
        guard let tls else {
            try channel.pipeline.syncOperations.addHandler(
                ProtocolSniffer(timeout: prefaceTimeout, http1: http1, http2: http2(nil))
            )
            return
        }
        try tls.accept(channel, role: .clusterServer, timeout: prefaceTimeout) { channel, negotiated, identity in
            switch negotiated {
            case "h2": try http2(identity)(channel)
            case "http/1.1": try http1(channel)
            default:
                try channel.pipeline.syncOperations.addHandler(
                    ProtocolSniffer(timeout: prefaceTimeout, http1: http1, http2: http2(identity))
                )
            }
        }
    }
}

/// A bound cluster listener and the connections it accepted.
struct GossipListener: ClusterListener {
    let channel: any Channel
    let connections: NIOLockedValueBox<[ObjectIdentifier: any Channel]>

    /// The bound port.
    var port: Int? { channel.localAddress?.port }

    /// Stops accepting and closes every accepted connection, so that peers see what they would see of a process that
    /// is gone: their next connection attempt is refused.
    func close() async {
        try? await channel.close()
        let open = connections.withLockedValue { Array($0.values) }
        for connection in open { try? await connection.close() }
    }
}

/// Collects one gossip request and answers it.
final class GossipRequestHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let maxBodyBytes: Int
    private let receive: ([UInt8]) -> Bool
    private var body: [UInt8] = []
    private var status: HTTPResponseStatus?

    init(maxBodyBytes: Int, receive: @escaping ([UInt8]) -> Bool) {
        self.maxBodyBytes = maxBodyBytes
        self.receive = receive
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            body.removeAll(keepingCapacity: true)
            if head.uri != GossipServer.path {
                status = .notFound
            } else if head.method != .POST {
                status = .methodNotAllowed
            } else {
                status = nil
            }
        case .body(var buffer):
            guard status == nil else { return }
            if body.count + buffer.readableBytes > maxBodyBytes {
                status = .payloadTooLarge
                body = []
                return
            }
            body += buffer.readBytes(length: buffer.readableBytes) ?? []
        case .end:
            let answer = status ?? (receive(body) ? .noContent : .badRequest)
            body = []
            var headers = HTTPHeaders()
            headers.add(name: "content-length", value: "0")
            context.write(
                wrapOutboundOut(.head(HTTPResponseHead(version: .http2, status: answer, headers: headers))),
                promise: nil
            )
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
