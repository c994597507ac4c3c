import Atomics
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix

/// Sends gossip envelopes to other nodes over one HTTP/2 connection per peer address, used for nothing else, so that
/// no bulk transfer ever queues in front of a probe.
///
/// A connection is opened on first use and forgotten when it closes; the next envelope opens a new one. A send that
/// fails reports whether the connection was refused, which the failure detector treats as strong evidence that no
/// process listens there.
final class GossipClient: Sendable {
    private let group: any EventLoopGroup
    private let connectTimeout: TimeAmount
    private let tls: PlaneTLS?
    private let connections = NIOLockedValueBox<[String: EventLoopFuture<Connection>]>([:])
    private let logger: Logger
    /// Envelopes handed over and not yet answered or failed.
    private let inFlight = ManagedAtomic(0)

    private struct Connection: Sendable {
        var channel: any Channel
        var multiplexer: NIOLoopBound<HTTP2StreamMultiplexer>
    }

    init(group: any EventLoopGroup, connectTimeout: Duration, tls: PlaneTLS?, logger: Logger) {
        self.group = group
        self.tls = tls
        self.connectTimeout = TimeAmount(connectTimeout)
        self.logger = logger
    }

    /// Sends `body` to the node at `address`; `onFailure` runs if it could not be delivered, with `refused` true
    /// when the connection was refused.
    ///
    /// A send that fails on a connection that was already open (the peer closed it, or reset it) is tried once more on
    /// a new one: a process that died leaves its old connections closed, and only a new attempt tells whether
    /// something still listens there.
    func send(_ body: ByteBuffer, to address: String, onFailure: @escaping @Sendable (_ refused: Bool) -> Void) {
        inFlight.wrappingIncrement(ordering: .relaxed)
        let first = connection(to: address)
        attempt(body, to: address, over: first).flatMapError { error -> EventLoopFuture<Void> in
            guard Self.isConnectionLost(error) else { return self.group.next().makeFailedFuture(error) }
            // Its close may not have been processed yet: make sure the retry does not pick the same connection.
            self.forget(address, first)
            return self.attempt(body, to: address, over: self.connection(to: address))
        }.whenComplete { [inFlight, logger] result in
            inFlight.wrappingDecrement(ordering: .relaxed)
            if case .failure(let error) = result {
                logger.debug(
                    "gossip send failed",
                    metadata: ["ringside.peer.address": "\(address)", "ringside.error": "\(error)"]
                )
                onFailure(Self.isRefused(error))
            }
        }
    }

    private func attempt(
        _ body: ByteBuffer,
        to address: String,
        over connecting: EventLoopFuture<Connection>
    ) -> EventLoopFuture<Void> {
        connecting.flatMap { connection -> EventLoopFuture<Void> in
            let response = connection.channel.eventLoop.makePromise(of: Void.self)
            let stream = connection.channel.eventLoop.makePromise(of: (any Channel).self)
            connection.multiplexer.value.createStreamChannel(promise: stream) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers([
                        HTTP2FramePayloadToHTTP1ClientCodec(httpProtocol: .http),
                        GossipResponseHandler(response: response),
                    ])
                }
            }
            // If the stream cannot be opened, the handler that completes `response` never runs.
            stream.futureResult.whenFailure { response.fail($0) }
            stream.futureResult.whenSuccess { channel in
                var headers = HTTPHeaders()
                headers.add(name: "host", value: address)
                headers.add(name: "content-type", value: "application/x-ringside-gossip")
                headers.add(name: "content-length", value: String(body.readableBytes))
                let head = HTTPRequestHead(version: .http2, method: .POST, uri: GossipServer.path, headers: headers)
                channel.write(HTTPClientRequestPart.head(head), promise: nil)
                channel.write(HTTPClientRequestPart.body(.byteBuffer(body)), promise: nil)
                channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
            }
            return response.futureResult
        }
    }

    /// Waits until every envelope handed over has been answered or has failed, or `timeout` has passed.
    func drain(timeout: Duration) async {
        let deadline = ContinuousClock.now + timeout
        while inFlight.load(ordering: .relaxed) > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Closes every connection.
    func shutdown() async {
        let open = connections.withLockedValue { connections in
            defer { connections = [:] }
            return Array(connections.values)
        }
        for connection in open {
            try? await connection.flatMap { $0.channel.close() }.get()
        }
    }

    private func connection(to address: String) -> EventLoopFuture<Connection> {
        connections.withLockedValue { connections in
            if let existing = connections[address] { return existing }
            let connecting = connect(to: address)
            connections[address] = connecting
            connecting.whenComplete { [weak self] result in
                switch result {
                case .success(let connection):
                    connection.channel.closeFuture.whenComplete { [weak self] _ in self?.forget(address, connecting) }
                case .failure:
                    self?.forget(address, connecting)
                }
            }
            return connecting
        }
    }

    private func forget(_ address: String, _ connection: EventLoopFuture<Connection>) {
        connections.withLockedValue { connections in
            if connections[address] === connection { connections[address] = nil }
        }
    }

    private func connect(to address: String) -> EventLoopFuture<Connection> {
        guard let target = HostAndPort(address) else {
            return group.next().makeFailedFuture(
                ClusterError(code: .invalidAddress, message: "\"\(address)\" is not a host:port address")
            )
        }
        let (tls, timeout) = (self.tls, connectTimeout)
        return ClientBootstrap(group: group)
            .connectTimeout(connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connect(host: target.host, port: target.port)
            .flatMap { @Sendable (channel: any Channel) -> EventLoopFuture<any Channel> in
                guard let tls else { return channel.eventLoop.makeSucceededFuture(channel) }
                return tls.connect(channel, role: .gossipClient, serverHostname: nil, timeout: timeout).map { channel }
            }
            .flatMap { channel in
                channel.configureHTTP2Pipeline(mode: .client, inboundStreamInitializer: { $0.close() })
                    .map { Connection(channel: channel, multiplexer: NIOLoopBound($0, eventLoop: channel.eventLoop)) }
            }
    }

    /// Whether `error` means an open connection was lost (closed or reset by the peer, or told to go away: the peer
    /// closes connections that sat idle), rather than that the peer refused a connection, timed out, or answered.
    static func isConnectionLost(_ error: any Error) -> Bool {
        if error is GossipRejectedError || isRefused(error) { return false }
        if let error = error as? ChannelError {
            return error == .ioOnClosedChannel || error == .alreadyClosed || error == .eof
                || error == .outputClosed
        }
        if let error = error as? IOError { return [ECONNRESET, EPIPE].contains(error.errnoCode) }
        return error is NIOHTTP2Errors.StreamClosed || error is NIOHTTP2Errors.NoSuchStream
            || error is NIOHTTP2Errors.CreatedStreamAfterGoaway || error is NIOHTTP2Errors.IOOnClosedConnection
    }

    /// Whether `error` says the connection was refused (ECONNREFUSED), as opposed to a timeout or a reset.
    static func isRefused(_ error: any Error) -> Bool {
        if let error = error as? IOError { return error.errnoCode == ECONNREFUSED }
        if let error = error as? NIOConnectionError {
            return !error.connectionErrors.isEmpty && error.connectionErrors.allSatisfy { isRefused($0.error) }
        }
        return false
    }
}

/// Completes `response` when the gossip request's answer has arrived.
final class GossipResponseHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    private let response: EventLoopPromise<Void>
    private var status: HTTPResponseStatus?

    init(response: EventLoopPromise<Void>) { self.response = response }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = head.status
        case .body:
            break
        case .end:
            if status == .noContent {
                response.succeed()
            } else {
                response.fail(GossipRejectedError(status: status))
            }
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        response.fail(ChannelError.ioOnClosedChannel)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        response.fail(error)
        context.close(promise: nil)
    }
}

/// The peer answered a gossip request with something other than 204.
struct GossipRejectedError: Error {
    var status: HTTPResponseStatus?
}
