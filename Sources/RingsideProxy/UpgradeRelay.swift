import NIOCore
import NIOHTTP1

/// Passes protocol upgrades (WebSocket) through: the upgrade request goes to the key's owner on a fresh connection, and
/// when the owner answers 101, both connections stop speaking HTTP and relay bytes to each other.
///
/// It plugs into NIO's server upgrade handler, which accepts an upgrade only as the first request of a connection and
/// lets `buildUpgradeResponse` wait for a future: there the request is routed and sent upstream, and the upstream's
/// 101 headers become this node's 101. On the cluster port the same relay, with the forwarded-request router, carries
/// the upgrade on to the owner's backend, so a WebSocket crosses a forward hop as a chain of byte relays.
final class UpgradeRelay: HTTPServerProtocolUpgrader {
    let supportedProtocol: String
    let requiredUpgradeHeaders: [String] = []

    private let configuration: ProxyConfiguration
    private let router: any ProxyRouter
    private let upstreams: any UpstreamProvider
    /// The upstream connection that answered 101, between the two calls (one upgrader per client connection).
    private var upstream: (any Channel)?

    init(
        protocol name: String,
        configuration: ProxyConfiguration,
        router: any ProxyRouter,
        upstreams: any UpstreamProvider
    ) {
        self.supportedProtocol = name
        self.configuration = configuration
        self.router = router
        self.upstreams = upstreams
    }

    func buildUpgradeResponse(
        channel: any Channel,
        upgradeRequest: HTTPRequestHead,
        initialResponseHeaders: HTTPHeaders
    ) -> EventLoopFuture<HTTPHeaders> {
        let route: ProxyRoute
        switch router.routes(for: RoutingRequest(head: upgradeRequest, keyHeader: configuration.keyHeader)) {
        case .success(let routes) where !routes.isEmpty:
            route = routes[0]
        case .success:
            return channel.eventLoop.makeFailedFuture(ProxyRefusal(status: .serviceUnavailable, message: "no owner"))
        case .failure(let refusal):
            return channel.eventLoop.makeFailedFuture(refusal)
        }
        var head = HeaderHygiene.forwardedRequest(
            upgradeRequest,
            clientAddress: channel.remoteAddress?.ipAddress,
            scheme: "http",
            via: "ringside-\(configuration.nodeName)",
            requestID: { "\(self.configuration.nodeName)-upgrade-\(UInt32.random(in: 0 ... .max))" }
        )
        // The one time Connection and Upgrade cross a proxy: they are what is being passed on.
        head.headers.replaceOrAdd(name: "connection", value: "upgrade")
        head.headers.replaceOrAdd(
            name: "upgrade",
            value: upgradeRequest.headers.first(name: "upgrade") ?? supportedProtocol
        )
        if case .peer = route {
            head.headers.add(name: HeaderHygiene.hopHeader, value: configuration.nodeName)
            head.headers.add(name: HeaderHygiene.finalHeader, value: "1")
        }
        let servedBy: String? = {
            if case .local = route { return configuration.nodeName }
            return nil
        }()
        let request = head
        let addsNodeHeader = configuration.addsNodeHeader
        // Everything below runs on the client connection's event loop, where the upstream connection is opened too.
        return upstreams.freshConnection(route, on: channel.eventLoop).assumeIsolated().flatMap { upstream in
            let answer = upstream.eventLoop.makePromise(of: HTTPResponseHead.self)
            do {
                try upstream.pipeline.syncOperations.addHandler(UpgradeAnswer(promise: answer))
            } catch {
                answer.fail(error)
            }
            upstream.write(HTTPClientRequestPart.head(request), promise: nil)
            upstream.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
            return answer.futureResult.assumeIsolated().flatMapThrowing { response in
                guard response.status == .switchingProtocols else {
                    throw ProxyRefusal(
                        status: .badGateway,
                        message: "the upstream refused the upgrade: \(response.status)"
                    )
                }
                self.upstream = upstream
                // NIO's Connection and Upgrade headers, then the upstream's own (Sec-WebSocket-Accept, …).
                var headers = initialResponseHeaders
                for (name, value) in response.headers where !["connection", "upgrade"].contains(name.lowercased()) {
                    headers.add(name: name, value: value)
                }
                if let servedBy, addsNodeHeader, !headers.contains(name: HeaderHygiene.nodeHeader) {
                    headers.add(name: HeaderHygiene.nodeHeader, value: servedBy)
                }
                return headers
            }.flatMapErrorThrowing { error in
                upstream.close(promise: nil)
                throw error
            }.nonisolated()
        }.nonisolated()
    }

    func upgrade(context: ChannelHandlerContext, upgradeRequest: HTTPRequestHead) -> EventLoopFuture<Void> {
        guard let upstream else {
            return context.eventLoop.makeFailedFuture(ChannelError.inappropriateOperationForState)
        }
        self.upstream = nil
        let clientSide = ByteRelay()
        let upstreamSide = ByteRelay()
        clientSide.partner = NIOLoopBound(upstreamSide, eventLoop: context.eventLoop)
        upstreamSide.partner = NIOLoopBound(clientSide, eventLoop: context.eventLoop)
        do {
            // The client side: NIO has taken its HTTP handlers off; the proxy's own go too.
            let client = context.pipeline.syncOperations
            try client.addHandler(clientSide)
            Self.remove(ProxyHandler.self, from: client)
            Self.remove(ConnectionGuard.self, from: client)
            // The upstream side: its HTTP handlers go, the decoder last, so that bytes that came right after the 101
            // flow on to the relay.
            let server = upstream.pipeline.syncOperations
            try server.addHandler(upstreamSide)
            Self.remove(UpgradeAnswer.self, from: server)
            Self.remove(UpstreamHandler.self, from: server)
            Self.remove(HTTPRequestEncoder.self, from: server)
            Self.remove(NIOHTTPRequestHeadersValidator.self, from: server)
            Self.remove(ByteToMessageHandler<HTTPResponseDecoder>.self, from: server)
        } catch {
            upstream.close(promise: nil)
            return context.eventLoop.makeFailedFuture(error)
        }
        return context.eventLoop.makeSucceededVoidFuture()
    }

    private static func remove<Handler: RemovableChannelHandler>(
        _ type: Handler.Type,
        from pipeline: ChannelPipeline.SynchronousOperations
    ) {
        if let handler = try? pipeline.handler(type: type) { pipeline.removeHandler(handler, promise: nil) }
    }
}

/// Waits for the upstream's answer to an upgrade request.
final class UpgradeAnswer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart

    private let promise: EventLoopPromise<HTTPResponseHead>

    init(promise: EventLoopPromise<HTTPResponseHead>) { self.promise = promise }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head(let head) = unwrapInboundIn(data) { promise.succeed(head) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(ChannelError.ioOnClosedChannel)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        promise.fail(error)
    }
}

/// One side of an upgraded connection: bytes read here are written to the partner (the other side, on the same event
/// loop), and reads pause while the partner cannot take more. When either side closes, so does the other.
final class ByteRelay: ChannelDuplexHandler, RemovableChannelHandler, ReadGated {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    var partner: NIOLoopBound<ByteRelay>?
    private(set) var context: ChannelHandlerContext?
    var gate = ReadGate()

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        partner?.value.context?.write(wrapOutboundOut(unwrapInboundIn(data)), promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        partner?.value.context?.flush()
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { partner?.value.resumeReads() } else { partner?.value.pauseReads() }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        let other = partner
        partner = nil
        other?.value.partner = nil
        other?.value.context?.close(promise: nil)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func read(context: ChannelHandlerContext) { gatedRead(context: context) }
}
