import NIOCore
import NIOHTTP1

/// The client side of one proxied HTTP/2 stream (h2c on the app plane; HTTP/1.1 connections run on the engine,
/// ``HTTP1Connection``): takes the stream's request, routes it by its key, and streams it to the chosen upstream and
/// the response back, with backpressure both ways.
///
/// A stream carries one request:
///
/// 1. The head is checked (a length with a transfer encoding is 400, a declared length over the limit is 413), cleaned
///    (``HeaderHygiene``), and routed. Reads pause until an upstream is connected.
/// 2. The head and the body stream to the upstream. A body of up to 64 KiB is also kept, so that the request can be
///    replayed on the next owner if the first one provably never handled it (connect failure, a peer's 421 "not
///    owner"); a larger body streams without a copy and is not replayed.
/// 3. The response streams back, cleaned, with `X-Ringside-Node`.
///
/// When the client cannot take more, the upstream's reads pause, and the other way round.
final class ProxyHandler: ChannelDuplexHandler, RemovableChannelHandler, ReadGated {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    /// Which listener a connection came to, for metrics.
    typealias Plane = ProxyPlane

    private let configuration: ProxyConfiguration
    private let plane: Plane
    private let metrics: ProxyMetrics
    private let router: any ProxyRouter
    private let upstreams: any UpstreamProvider
    private let scheme: String
    private(set) var context: ChannelHandlerContext?
    private var exchange: Exchange?
    /// Set while answering a request ourselves; the rest of its body is dropped.
    private var refusing = false
    var gate = ReadGate()
    private var nextRequestNumber: UInt64 = 0
    private var deadlineCheck: RepeatedTask?
    /// Makes this connection's request ids unique across connections and restarts, without a random number a request.
    private let connectionTag = String(UInt32.random(in: 0 ... .max), radix: 36)

    /// One request and its response.
    private final class Exchange {
        let head: HTTPRequestHead
        let clientKeepAlive: Bool
        let routes: [ProxyRoute]
        var attempt = 0
        var upstream: UpstreamHandler?
        var lease: UpstreamLease?
        /// Body parts that arrived before the upstream was connected.
        var pending: [HTTPClientRequestPart] = []
        /// The body kept for a replay, while small enough; nil once it is not.
        var replay: [ByteBuffer]? = []
        var requestEnded = false
        var requestTrailers: HTTPHeaders?
        var responseStarted = false
        var bodyBytes = 0
        /// Response bytes relayed to the client, for the access log.
        var responseBytes = 0
        var status: HTTPResponseStatus = .ok
        let started = NIODeadline.now()
        let deadline: NIODeadline
        /// Counts the request as under way until the exchange is over.
        private let inFlight: InFlightRequests

        init(
            head: HTTPRequestHead,
            clientKeepAlive: Bool,
            routes: [ProxyRoute],
            deadline: NIODeadline,
            inFlight: InFlightRequests
        ) {
            self.head = head
            self.clientKeepAlive = clientKeepAlive
            self.routes = routes
            self.deadline = deadline
            self.inFlight = inFlight
            inFlight.began(.appHTTP2)
        }

        deinit { inFlight.ended(.appHTTP2) }

        var route: ProxyRoute { routes[attempt] }

        /// Gives the upstream connection back closed, if there is one.
        func dropLease() {
            lease?.release(false)
            lease = nil
        }

        /// Times the head went out, to one route or another.
        var sends = 0
        private var freshRetry = FreshConnectionRetry()

        /// The request can be sent again: its body was kept, or none of it was sent.
        var canReplay: Bool {
            replay != nil
                || (bodyBytes == 0
                    && pending.allSatisfy {
                        if case .body = $0 { false } else { true }
                    })
        }

        /// Whether to send the request once more to the same route on a new connection, after its connection closed
        /// before answering (``FreshConnectionRetry``).
        func retriesOnFreshConnection() -> Bool {
            freshRetry.allows(
                reusedConnection: lease?.reused == true,
                idempotent: HTTP1Parsing.isIdempotent(head.method.rawValue),
                canReplay: canReplay
            )
        }
    }

    init(
        configuration: ProxyConfiguration,
        plane: Plane,
        metrics: ProxyMetrics,
        router: any ProxyRouter,
        upstreams: any UpstreamProvider,
        scheme: String
    ) {
        self.configuration = configuration
        self.plane = plane
        self.metrics = metrics
        self.router = router
        self.upstreams = upstreams
        self.scheme = scheme
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadlineCheck?.cancel()
        self.context = nil
    }

    // MARK: Requests

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            begin(head, context: context)
        case .body(let buffer):
            if refusing { return }
            guard let exchange else { return }
            exchange.bodyBytes += buffer.readableBytes
            if exchange.bodyBytes > configuration.maxBodyBytes {
                fail(
                    exchange,
                    status: .payloadTooLarge,
                    message: "the request body is larger than \(configuration.maxBodyBytes) bytes"
                )
                return
            }
            if let kept = exchange.replay {
                exchange.replay =
                    kept.reduce(buffer.readableBytes) { $0 + $1.readableBytes }
                        <= RingsideProxy.Exchange.replayableBodyBytes
                    ? kept + [buffer] : nil
            }
            send(.body(.byteBuffer(buffer)), in: exchange)
        case .end(let trailers):
            if refusing {
                refusing = false
                resumeReads()
                return
            }
            guard let exchange else { return }
            exchange.requestEnded = true
            exchange.requestTrailers = trailers
            send(.end(trailers), in: exchange)
            exchange.lease?.channel.flush()
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        exchange?.lease?.channel.flush()
        context.fireChannelReadComplete()
    }

    private func begin(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        var head = head
        if let refusal = RequestTarget.check(&head) {
            recordRefusal(refusal.status)
            refuse(refusal.status, refusal.message, closing: true)
            return
        }
        if head.headers[canonicalForm: configuration.keyHeader].count > 1 {
            recordRefusal(.badRequest)
            refuse(.badRequest, "more than one \(configuration.keyHeader) header", closing: true)
            return
        }
        if head.headers.contains(name: "content-length") && head.headers.contains(name: "transfer-encoding") {
            recordRefusal(.badRequest)
            refuse(.badRequest, "a request may not carry both Content-Length and Transfer-Encoding", closing: true)
            return
        }
        let codings = head.headers[canonicalForm: "transfer-encoding"]
        if !codings.isEmpty, !HeaderHygiene.isChunkedAlone(codings) {
            recordRefusal(.notImplemented)
            refuse(.notImplemented, "the only transfer coding this proxy passes on is chunked", closing: true)
            return
        }
        if let length = head.headers.first(name: "content-length").flatMap(Int.init),
            length > configuration.maxBodyBytes
        {
            refuse(
                .payloadTooLarge,
                "the request body is larger than \(configuration.maxBodyBytes) bytes",
                closing: true
            )
            return
        }
        // A refused request with a body is answered and the connection closed, rather than the body read and dropped.
        let hasBody =
            head.headers.contains(name: "transfer-encoding")
            || (head.headers.first(name: "content-length").flatMap(Int.init) ?? 0) > 0
        let routes: [ProxyRoute]
        switch router.routes(for: RoutingRequest(head: head, keyHeader: configuration.keyHeader)) {
        case .success(let found) where !found.isEmpty:
            routes = found
        case .success:
            recordRefusal(.serviceUnavailable)
            refuse(.serviceUnavailable, "no node owns this key", closing: hasBody || !head.isKeepAlive)
            return
        case .failure(let refusal):
            recordRefusal(refusal.status)
            refuse(
                refusal.status,
                refusal.message,
                closing: hasBody || !head.isKeepAlive,
                headers: refusal.headers
            )
            return
        }
        if head.headers[canonicalForm: "expect"].contains(where: { $0.lowercased() == "100-continue" }) {
            // This proxy takes the body; the upstream never sees the expectation.
            context.writeAndFlush(
                wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .continue))),
                promise: nil
            )
        }
        nextRequestNumber += 1
        let number = nextRequestNumber
        let nodeName = configuration.nodeName
        let tag = connectionTag
        var forwarded = HeaderHygiene.forwardedRequest(
            head,
            clientAddress: context.channel.remoteAddress?.ipAddress,
            scheme: scheme,
            via: "ringside-\(nodeName)",
            trustsForwardedProto: plane == .cluster,
            requestID: { "\(nodeName)-\(tag)-\(number)" }
        )
        forwarded.headers.remove(name: "expect")
        if !forwarded.headers.contains(name: "host") {
            forwarded.headers.add(name: "host", value: HeaderHygiene.authority(of: context.channel.localAddress))
        }
        // The request's time: this node's limit, or less if the node that forwarded it has less left.
        var budget = TimeAmount(configuration.requestTimeout)
        if let remaining = head.headers.first(name: HeaderHygiene.deadlineHeader).flatMap(Int64.init), remaining >= 0 {
            budget = min(budget, .milliseconds(remaining))
        }
        let exchange = Exchange(
            head: forwarded,
            clientKeepAlive: head.isKeepAlive,
            routes: routes,
            deadline: .now() + budget,
            inFlight: metrics.inFlight
        )
        self.exchange = exchange
        startDeadlineChecks(context: context)
        pauseReads()
        connect(exchange)
    }

    private func send(_ part: HTTPClientRequestPart, in exchange: Exchange) {
        if let lease = exchange.lease {
            lease.channel.write(part, promise: nil)
        } else {
            exchange.pending.append(part)
        }
    }

    // MARK: Upstreams

    /// Puts `exchange` on a connection to its route: a kept one, or (always when `fresh`) a new one.
    private func connect(_ exchange: Exchange, fresh: Bool = false) {
        guard let context else { return }
        let route = exchange.route
        upstreams.lease(route, on: context.eventLoop, fresh: fresh).hop(to: context.eventLoop).assumeIsolated()
            .whenComplete {
                [weak self] result in
                guard let self, self.exchange === exchange else {
                    // Not used (the stream went away, reset perhaps): it goes back for the next request.
                    if case .success(let lease) = result { lease.release(true) }
                    return
                }
                switch result {
                case .success(let lease):
                    self.attach(lease, to: exchange)
                case .failure(let error):
                    self.router.upstreamFailed(route, error: error)
                    self.tryNextRoute(exchange, reason: "cannot reach \(route): \(error)")
                }
            }
    }

    private func attach(_ lease: UpstreamLease, to exchange: Exchange) {
        // Every upstream channel carries its handler: a pooled connection keeps it between exchanges. (A new HTTP/2
        // stream is not active until its first frame goes out; the pool checks pooled connections.)
        guard let upstream = try? lease.channel.pipeline.syncOperations.handler(type: UpstreamHandler.self) else {
            lease.release(false)
            tryNextRoute(exchange, reason: "the upstream connection closed")
            return
        }
        upstream.bind(NIOLoopBound(self, eventLoop: lease.channel.eventLoop))
        exchange.lease = lease
        exchange.upstream = upstream
        var head = exchange.head
        if case .peer = exchange.route {
            head.headers.add(name: HeaderHygiene.hopHeader, value: configuration.nodeName)
            let remaining = max(0, (exchange.deadline - .now()).nanoseconds / 1_000_000)
            head.headers.add(name: HeaderHygiene.deadlineHeader, value: String(remaining))
            if exchange.attempt == exchange.routes.count - 1 {
                head.headers.add(name: HeaderHygiene.finalHeader, value: "1")
            }
        }
        lease.channel.write(HTTPClientRequestPart.head(head), promise: nil)
        exchange.sends += 1
        if exchange.sends > 1, let replay = exchange.replay {
            // A replay: the body parts kept from the first attempt, then the end if it came.
            for buffer in replay { lease.channel.write(HTTPClientRequestPart.body(.byteBuffer(buffer)), promise: nil) }
            if exchange.requestEnded {
                lease.channel.write(HTTPClientRequestPart.end(exchange.requestTrailers), promise: nil)
            }
        } else {
            for part in exchange.pending { lease.channel.write(part, promise: nil) }
        }
        exchange.pending = []
        lease.channel.flush()
        if lease.channel.isWritable { resumeReads() }
    }

    /// Moves to the next owner if the request provably never reached a backend and can be sent again; otherwise
    /// answers 502.
    private func tryNextRoute(_ exchange: Exchange, reason: String) {
        exchange.upstream = nil
        exchange.dropLease()
        guard exchange.attempt + 1 < exchange.routes.count, exchange.canReplay else {
            fail(exchange, status: .badGateway, message: reason)
            return
        }
        exchange.attempt += 1
        metrics.retries.increment()
        connect(exchange)
    }

    // MARK: Responses (called by UpstreamHandler on this event loop)

    func upstreamRead(_ part: HTTPClientResponsePart) {
        guard let exchange, let context else { return }
        switch part {
        case .head(let head):
            if head.status == .misdirectedRequest, head.headers.contains(name: HeaderHygiene.notOwnerHeader),
                !exchange.responseStarted
            {
                metrics.misroutes.increment()
                exchange.upstream?.detach(reusable: false)
                tryNextRoute(exchange, reason: "no owner accepted the request")
                return
            }
            exchange.responseStarted = true
            exchange.status = head.status
            let servedBy: String? =
                switch exchange.route {
                case .local: configuration.nodeName
                case .peer: nil
                }
            var response = HeaderHygiene.returnedResponse(
                head,
                via: "ringside-\(configuration.nodeName)",
                servedBy: configuration.addsNodeHeader ? servedBy : nil
            )
            if !configuration.addsNodeHeader { response.headers.remove(name: HeaderHygiene.nodeHeader) }
            response.version = exchange.head.version
            if !exchange.clientKeepAlive { response.headers.replaceOrAdd(name: "connection", value: "close") }
            context.write(wrapOutboundOut(.head(response)), promise: nil)
        case .body(let buffer):
            guard exchange.responseStarted else { return }
            exchange.responseBytes += buffer.readableBytes
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        case .end(let trailers):
            guard exchange.responseStarted else { return }
            finish(exchange, trailers: trailers)
        }
    }

    func upstreamReadComplete() {
        context?.flush()
    }

    func upstreamWritabilityChanged(isWritable: Bool) {
        if isWritable { resumeReads() } else { pauseReads() }
    }

    /// The upstream closed or failed before the response was complete.
    func upstreamFailed(_ error: (any Error)?) {
        guard let exchange, let context else { return }
        exchange.upstream = nil
        if !exchange.responseStarted, exchange.retriesOnFreshConnection() {
            // A kept connection the upstream closed as idle while the request was on its way: once more, anew.
            exchange.dropLease()
            metrics.retries.increment()
            connect(exchange, fresh: true)
            return
        }
        if !exchange.responseStarted {
            router.upstreamFailed(exchange.route, error: error)
            // Idempotent requests may go to the next owner even though the first may have seen them.
            if HTTP1Parsing.isIdempotent(exchange.head.method.rawValue) {
                tryNextRoute(exchange, reason: "the upstream closed before answering")
            } else {
                fail(exchange, status: .badGateway, message: "the upstream closed before answering")
            }
        } else {
            // Mid-response there is no way to tell the client but to close.
            exchange.dropLease()
            self.exchange = nil
            context.close(promise: nil)
        }
    }

    private func finish(_ exchange: Exchange, trailers: HTTPHeaders?) {
        guard let context else { return }
        record(exchange, status: exchange.status)
        let reusable = exchange.requestEnded
        exchange.upstream?.detach(reusable: reusable)
        exchange.upstream = nil
        exchange.lease?.release(reusable)
        exchange.lease = nil
        self.exchange = nil
        let requestEnded = exchange.requestEnded
        let promise: EventLoopPromise<Void>? =
            (!requestEnded || !exchange.clientKeepAlive) ? context.eventLoop.makePromise() : nil
        context.writeAndFlush(wrapOutboundOut(.end(trailers)), promise: promise)
        if let promise {
            // The client is still sending a body nobody will read, or asked to close.
            promise.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        }
    }

    /// Starts, once a connection, a check of the current request's deadline every tenth of the request timeout (at
    /// most a second): a request costs a deadline comparison, not a timer.
    private func startDeadlineChecks(context: ChannelHandlerContext) {
        guard deadlineCheck == nil else { return }
        let tenth = TimeAmount(configuration.requestTimeout).nanoseconds / 10
        let interval = TimeAmount.nanoseconds(max(10_000_000, min(tenth, 1_000_000_000)))
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        // Cancelled when the connection closes, which ends the cycle it forms with this handler.
        deadlineCheck = context.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            bound.value.checkDeadline()
        }
    }

    private func checkDeadline() {
        guard let exchange, NIODeadline.now() >= exchange.deadline else { return }
        fail(exchange, status: .gatewayTimeout, message: "no answer from the upstream in time")
    }

    private func record(_ exchange: Exchange, status: HTTPResponseStatus) {
        let nanoseconds = (NIODeadline.now() - exchange.started).nanoseconds
        metrics.record(ProxyMetrics.Path(plane: plane, route: exchange.route), status: status, nanoseconds: nanoseconds)
        if configuration.accessLog != nil {
            AccessLog.write(
                configuration,
                plane,
                facts: AccessFacts(exchange.head, keyHeader: configuration.keyHeader),
                route: exchange.route,
                status: Int(status.code),
                bytes: exchange.responseBytes,
                nanoseconds: nanoseconds
            )
        }
    }

    /// Records a request answered before it had a route.
    private func recordRefusal(_ status: HTTPResponseStatus) {
        metrics.record(ProxyMetrics.Path(unroutedOn: plane), status: status, nanoseconds: 0)
        AccessLog.write(
            configuration,
            plane,
            facts: nil,
            route: nil,
            status: Int(status.code),
            bytes: 0,
            nanoseconds: 0
        )
    }

    // MARK: Answering ourselves

    private func fail(_ exchange: Exchange, status: HTTPResponseStatus, message: String) {
        guard self.exchange === exchange, let context else { return }
        exchange.upstream?.detach(reusable: false)
        exchange.upstream = nil
        exchange.dropLease()
        self.exchange = nil
        record(exchange, status: exchange.responseStarted ? exchange.status : status)
        if exchange.responseStarted {
            context.close(promise: nil)
        } else {
            refuse(
                status,
                message,
                closing: !exchange.requestEnded || !exchange.clientKeepAlive,
                awaitingEnd: !exchange.requestEnded
            )
        }
    }

    /// Answers the request with `status` and `message`. `awaitingEnd`: the request's end has not arrived yet, and what
    /// is left of it is dropped (unless `closing`, when the connection closes instead).
    private func refuse(
        _ status: HTTPResponseStatus,
        _ message: String,
        closing: Bool,
        awaitingEnd: Bool = true,
        headers extra: HTTPHeaders = [:]
    ) {
        guard let context else { return }
        let body = ByteBuffer(string: message + "\n")
        var headers = extra
        headers.add(name: "content-type", value: "text/plain; charset=utf-8")
        headers.add(name: "content-length", value: String(body.readableBytes))
        headers.add(name: HeaderHygiene.nodeHeader, value: configuration.nodeName)
        if closing { headers.add(name: "connection", value: "close") }
        refusing = !closing && awaitingEnd
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))),
            promise: nil
        )
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            if closing { context.close(promise: nil) }
        }
        resumeReads()
    }

    // MARK: Connection events

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            exchange?.upstream?.resumeReads()
        } else {
            exchange?.upstream?.pauseReads()
        }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadlineCheck?.cancel()
        if let exchange {
            exchange.upstream?.detach(reusable: false)
            exchange.dropLease()
            self.exchange = nil
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A stream error (a malformed request) has reset the stream already.
        context.close(promise: nil)
    }

    // MARK: Backpressure

    func read(context: ChannelHandlerContext) { gatedRead(context: context) }
}
