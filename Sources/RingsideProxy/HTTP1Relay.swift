import NIOCore
import NIOHTTP1

/// What every ``HTTP1Relay`` of one listener shares: the settings, and the bytes it writes on every request, made once.
final class RelaySettings: Sendable {
    let configuration: ProxyConfiguration
    let plane: ProxyHandler.Plane
    let metrics: ProxyMetrics
    let router: any ProxyRouter
    let upstreams: any UpstreamProvider
    /// Sets the general HTTP/1.1 pipeline (NIO's codec and ``ProxyHandler``) up behind the relay.
    let handOff: @Sendable (any Channel) throws -> Void
    let keyName: [UInt8]
    let viaLine: [UInt8]
    let protoAndViaLines: [UInt8]
    let nodeLine: [UInt8]
    let viaAndNodeLines: [UInt8]
    let hopLine: [UInt8]
    let deadlinePrefix: [UInt8]
    let finalLine: [UInt8]
    let requestIDPrefix: [UInt8]
    let headerTimeout: TimeAmount
    let idleTimeout: TimeAmount
    let requestTimeout: TimeAmount
    /// How often a connection checks its deadlines: one timer a connection, a clock read a request.
    let checkInterval: TimeAmount

    init(
        configuration: ProxyConfiguration,
        plane: ProxyHandler.Plane,
        metrics: ProxyMetrics,
        router: any ProxyRouter,
        upstreams: any UpstreamProvider,
        handOff: @escaping @Sendable (any Channel) throws -> Void
    ) {
        self.configuration = configuration
        self.plane = plane
        self.metrics = metrics
        self.router = router
        self.upstreams = upstreams
        self.handOff = handOff
        let name = configuration.nodeName
        keyName = Array(configuration.keyHeader.lowercased().utf8)
        viaLine = Array("via: 1.1 ringside-\(name)\r\n".utf8)
        nodeLine = Array("\(HeaderHygiene.nodeHeader): \(name)\r\n".utf8)
        protoAndViaLines = Array("x-forwarded-proto: http\r\n".utf8) + viaLine
        viaAndNodeLines = viaLine + nodeLine
        hopLine = Array("\(HeaderHygiene.hopHeader): \(name)\r\n".utf8)
        deadlinePrefix = Array("\(HeaderHygiene.deadlineHeader): ".utf8)
        finalLine = Array("\(HeaderHygiene.finalHeader): 1\r\n".utf8)
        requestIDPrefix = Array("x-request-id: \(name)-".utf8)
        headerTimeout = TimeAmount(configuration.headerReadTimeout)
        idleTimeout = TimeAmount(configuration.idleTimeout)
        requestTimeout = TimeAmount(configuration.requestTimeout)
        let shortest = min(headerTimeout, idleTimeout, requestTimeout).nanoseconds
        checkInterval = .nanoseconds(max(10_000_000, min(shortest / 8, 1_000_000_000)))
    }
}

extension RelaySettings {
    /// The lines a route adds to a request head, then the blank line that ends it: towards a peer, the hop headers
    /// (`x-ringside-hop`, the time left, and `x-ringside-final` on the last candidate).
    func routeLines(_ route: ProxyRoute, isLast: Bool, deadline: NIODeadline, into head: inout ByteBuffer) {
        if case .peer = route {
            head.writeBytes(hopLine)
            let remaining = max(0, (deadline - .now()).nanoseconds / 1_000_000)
            head.writeBytes(deadlinePrefix)
            HTTP1Parsing.writeDecimal(UInt64(remaining), into: &head)
            head.writeStaticString("\r\n")
            if isLast { head.writeBytes(finalLine) }
        }
        head.writeStaticString("\r\n")
    }

    /// The relay's own answer: `status` with `message` as plain text.
    func answer(
        _ status: Int,
        _ message: String,
        headers: [(String, String)],
        closing: Bool,
        allocator: ByteBufferAllocator
    ) -> ByteBuffer {
        let reason = HTTPResponseStatus(statusCode: status).reasonPhrase
        let body = message + "\n"
        var out = allocator.buffer(capacity: 256 + body.utf8.count)
        out.writeString("HTTP/1.1 \(status) \(reason)\r\n")
        for (name, value) in headers { out.writeString("\(name): \(value)\r\n") }
        out.writeString("content-type: text/plain; charset=utf-8\r\ncontent-length: \(body.utf8.count)\r\n")
        out.writeBytes(nodeLine)
        if closing { out.writeStaticString("connection: close\r\n") }
        out.writeStaticString("\r\n")
        out.writeString(body)
        return out
    }
}

/// The HTTP/1.1 data plane's hot path: relays requests and responses as bytes, the way nginx and HAProxy do, instead
/// of decoding them into header objects and encoding them again.
///
/// For each request on a client connection:
///
/// 1. The head is located and checked in the bytes as they came (``HTTP1Parsing``): a malformed head is 400, a head
///    over the limit 431, a head that does not arrive in time 408. The key header is read, the request routed, and
///    the head rewritten in one pass into the upstream's head (hop-by-hop and internal headers out; `Via`,
///    `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Request-Id` and, towards a peer, the hop headers in).
/// 2. The body (`Content-Length`) streams to the upstream as the slices it arrived in; up to 64 KiB of it is also kept
///    so that the request can go to the next owner if the first provably never handled it.
/// 3. The response head is rewritten the same way (`Via`, `X-Ringside-Node`), and its body passes through unchanged
///    whatever its framing (``ByteUpstream`` finds its end).
///
/// A request this path does not carry (HTTP/1.0, a chunked or `Expect` request body, a protocol upgrade) hands the
/// connection over to the general pipeline, NIO's HTTP/1.1 codec and ``ProxyHandler``, once nothing is under way:
/// the relay steps aside and passes the request's bytes on. Pipelined requests wait their turn with reads paused.
final class HTTP1Relay: ChannelDuplexHandler, RemovableChannelHandler, ReadGated {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let settings: RelaySettings
    private(set) var context: ChannelHandlerContext?
    /// Reads, routes and rewrites heads, for this connection's addresses.
    private var rewriter: HeadRewriter
    /// What the client sent and is not handled yet, and how long it has waited.
    private var reader: RequestReader
    private var exchange: Exchange?
    var gate = ReadGate()
    private var timer: RepeatedTask?
    /// Whether response bytes were written to the client since the last flush.
    private var clientUnflushed = false
    private var closing = false
    /// The upstream connection of the last request, kept for the next one to the same route: back-to-back requests
    /// skip the pool. It goes back to the pool when the client connection idles, closes, or needs another route.
    private var spare: (route: ProxyRoute, lease: UpstreamLease, upstream: ByteUpstream)?

    /// A pooled upstream connection and its handler, for one exchange.
    private struct Leased {
        let lease: UpstreamLease
        let handler: ByteUpstream

        /// Ends the handler's part and gives the connection back, closed unless `reusable`.
        func release(reusable: Bool) {
            handler.detach()
            lease.release(reusable)
        }
    }

    private typealias Exchange = RelayExchange<Leased>

    /// A relay for `channel`, whose first bytes have told it is HTTP/1.1.
    init(settings: RelaySettings, channel: any Channel) {
        self.settings = settings
        rewriter = HeadRewriter(settings: settings, client: channel.remoteAddress, allocator: channel.allocator)
        // The sniffer in front has told HTTP/2 apart already.
        reader = RequestReader(maxHeadBytes: settings.configuration.maxHeaderBytes, sniffsHTTP2: false, now: .now())
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // Added once the first bytes have told HTTP/1.1 from HTTP/2: the channel is usually active already.
        if context.channel.isActive { startTimer(context: context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        startTimer(context: context)
        context.fireChannelActive()
    }

    private func startTimer(context: ChannelHandlerContext) {
        guard timer == nil else { return }
        reader.requestDone(at: .now())  // The first wait starts with the connection.
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        // Cancelled when the connection closes or the relay steps aside, which ends the cycle with this handler.
        timer = context.eventLoop.scheduleRepeatedTask(
            initialDelay: settings.checkInterval,
            delay: settings.checkInterval
        ) { _ in bound.value.checkDeadlines() }
    }

    // MARK: Requests

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closing else { return }
        reader.append(unwrapInboundIn(data))
        if let exchange {
            if exchange.bodyRemaining > 0 { feedBody(exchange) }
            // What follows the body is the next request: it waits.
            if exchange.bodyRemaining == 0, reader.inbound != nil { pauseReads() }
        } else {
            processInbound(context: context)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        exchange?.upstream?.handler.flush()
        context.fireChannelReadComplete()
    }

    /// Handles the heads waiting in the reader until one of them is under way, or more bytes are needed.
    private func processInbound(context: ChannelHandlerContext) {
        while exchange == nil, !closing {
            switch reader.next(&rewriter, now: .now()) {
            case .needMore, .http2:
                return
            case .refuse(let status, let message):
                answer(status, message)
            case .head(let startLineEnd, let length):
                begin(startLineEnd: startLineEnd, length: length, context: context)
            }
        }
    }

    /// Acts on the complete head at the start of the reader's bytes.
    private func begin(startLineEnd: Int, length: Int, context: ChannelHandlerContext) {
        // Switched on as it comes, so that no copy of the plan holds on to its head.
        switch reader.inbound!.withUnsafeReadableBytes({
            rewriter.request($0, startLineEnd: startLineEnd, length: length)
        }) {
        case .handOff:
            handOff(context: context)
        case .refuse(let status, let message, let headers, let closing):
            reader.consume(length)
            settings.metrics.record(ProxyMetrics.Path(unroutedOn: settings.plane), code: status, nanoseconds: 0)
            answer(status, message, headers: headers, closing: closing)
            requestDone()
        case .forward(var plan):
            // Timed from the head's first byte, as nginx's request time is.
            let exchange = Exchange(&plan, started: reader.waitingSince)
            reader.consume(length)
            self.exchange = exchange
            if exchange.bodyRemaining > 0 { feedBody(exchange) }
            // Reads wait while a body has nowhere to go yet, or while the next request is here already; a request
            // without a body leaves them running (one read fewer to pass down the pipeline a request).
            if exchange.bodyRemaining > 0 || reader.inbound != nil { pauseReads() }
            connect(exchange)
        }
    }

    /// Passes the body bytes waiting in the reader on, up to the end of the current request's body.
    private func feedBody(_ exchange: Exchange) {
        guard let slice = exchange.takeBody(from: &reader.inbound), let upstream = exchange.upstream?.handler else {
            return
        }
        upstream.write(slice)
        if exchange.requestEnded { upstream.flush() }
    }

    // MARK: Upstreams

    /// Puts `exchange` on a connection to its route: the one kept from this client's last request, one from the pool,
    /// or (always when `fresh`) a new one.
    private func connect(_ exchange: Exchange, fresh: Bool = false) {
        guard let context else { return }
        let route = exchange.route
        if let spare {
            self.spare = nil
            if spare.route == route && spare.lease.channel.isActive && !fresh {
                attach(spare.lease, upstream: spare.upstream, to: exchange)
                return
            }
            spare.lease.release(true)
        }
        // The callback holds the relay strongly (until the lease or the connect timeout), never weakly: a weak
        // reference would move the relay's reference count to a side table and slow every retain of it.
        settings.upstreams.leaseBytes(route, on: context.eventLoop, fresh: fresh).hop(to: context.eventLoop)
            .assumeIsolated()
            .whenComplete { result in
                guard self.exchange === exchange else {
                    if case .success(let lease) = result { lease.release(false) }
                    return
                }
                switch result {
                case .success(let lease):
                    self.attach(lease, to: exchange)
                case .failure(let error):
                    self.settings.router.upstreamFailed(route, error: error)
                    self.tryNextRoute(exchange, reason: "cannot reach \(route): \(error)")
                }
            }
    }

    private func attach(_ lease: UpstreamLease, to exchange: Exchange) {
        guard let upstream = try? lease.channel.pipeline.syncOperations.handler(type: ByteUpstream.self) else {
            lease.release(false)
            tryNextRoute(exchange, reason: "the upstream connection closed")
            return
        }
        attach(lease, upstream: upstream, to: exchange)
    }

    private func attach(_ lease: UpstreamLease, upstream: ByteUpstream, to exchange: Exchange) {
        upstream.bind(self, expectsBody: exchange.expectsBody)
        exchange.upstream = Leased(lease: lease, handler: upstream)
        for part in exchange.opening(settings) { upstream.write(part) }
        upstream.flush()
        if upstream.isWritable { resumeReads() }
    }

    /// Gives the exchange's upstream connection up (closed).
    private func dropUpstream(_ exchange: Exchange) {
        guard let upstream = exchange.upstream else { return }
        exchange.upstream = nil
        upstream.release(reusable: false)
    }

    /// Moves to the next owner if the request provably never reached a backend and can be sent again; otherwise
    /// answers 502.
    private func tryNextRoute(_ exchange: Exchange, reason: String) {
        dropUpstream(exchange)
        guard exchange.advance() else {
            fail(exchange, status: 502, message: reason)
            return
        }
        settings.metrics.retries.increment()
        connect(exchange)
    }

    // MARK: Responses (called by ByteUpstream on this event loop)

    /// A response head from the upstream, with the body bytes that came with it.
    func upstreamHead(_ head: ByteBuffer, facts: ResponseFacts, fields: [HeaderField], body: ByteBuffer?) {
        guard let exchange, let context else { return }
        if exchange.isMisrouted(facts) {
            settings.metrics.misroutes.increment()
            tryNextRoute(exchange, reason: "no owner accepted the request")
            return
        }
        let closing = exchange.responseHead(facts)
        let (head, body) = rewriter.clientResponse(
            head,
            facts: facts,
            fields: fields,
            body: body,
            route: exchange.route,
            closing: closing
        )
        clientUnflushed = true
        context.write(wrapOutboundOut(head), promise: nil)
        if let body { context.write(wrapOutboundOut(body), promise: nil) }
    }

    func upstreamBody(_ buffer: ByteBuffer) {
        guard let exchange, exchange.responseStarted, let context else { return }
        context.write(wrapOutboundOut(buffer), promise: nil)
        clientUnflushed = true
    }

    func upstreamEnd(reusable: Bool) {
        guard let exchange, let context else { return }
        guard exchange.responseStarted else {
            // Only interim responses, then the end: nothing the client can use.
            upstreamFailed("the upstream sent only interim responses")
            return
        }
        let now = NIODeadline.now()
        exchange.record(in: settings.metrics, on: settings.plane, at: now)
        let requestEnded = exchange.requestEnded
        let closes = !requestEnded || !exchange.clientKeepAlive || exchange.closesAfter
        if let upstream = exchange.upstream, reusable, !closes {
            spare = (exchange.route, upstream.lease, upstream.handler)
        } else {
            exchange.upstream?.release(reusable: reusable && requestEnded)
        }
        exchange.upstream = nil
        self.exchange = nil
        if closes {
            // The client is still sending a body nobody will read, asked to close, or reads the body to the close.
            closeAfterWrites(context: context)
            return
        }
        flushClient(context)
        requestDone(at: now)
        resumeReads()
        processInbound(context: context)
    }

    func upstreamReadComplete() {
        if let context { flushClient(context) }
    }

    private func flushClient(_ context: ChannelHandlerContext) {
        guard clientUnflushed else { return }
        clientUnflushed = false
        context.flush()
    }

    func upstreamWritabilityChanged(isWritable: Bool) {
        if isWritable { resumeReads() } else { pauseReads() }
    }

    /// The upstream closed or failed before the response was complete; `reason` says how, for the client's 502.
    func upstreamFailed(_ reason: String) {
        guard let exchange, let context else { return }
        let reused = (exchange.upstream?.handler.exchanges ?? 0) > 1
        dropUpstream(exchange)
        if !exchange.responseStarted, exchange.retriesOnFreshConnection(after: reused) {
            settings.metrics.retries.increment()
            connect(exchange, fresh: true)
            return
        }
        if exchange.responseStarted {
            // Mid-response there is no way to tell the client but to close.
            self.exchange = nil
            exchange.record(in: settings.metrics, on: settings.plane, at: .now(), failing: 502)
            context.close(promise: nil)
            return
        }
        settings.router.upstreamFailed(exchange.route, error: nil)
        // Idempotent requests may go to the next owner even though the first may have seen them.
        if exchange.idempotent {
            tryNextRoute(exchange, reason: reason)
        } else {
            fail(exchange, status: 502, message: reason)
        }
    }

    // MARK: Answering ourselves

    private func fail(_ exchange: Exchange, status: Int, message: String) {
        guard self.exchange === exchange else { return }
        dropUpstream(exchange)
        self.exchange = nil
        exchange.record(in: settings.metrics, on: settings.plane, at: .now(), failing: status)
        if exchange.responseStarted {
            context?.close(promise: nil)
            return
        }
        answer(status, message, closing: !exchange.requestEnded || !exchange.clientKeepAlive)
        if !closing {
            requestDone()
            resumeReads()
            if let context { processInbound(context: context) }
        }
    }

    /// Answers with `status` and `message` as plain text; `closing` closes the connection once it is written.
    private func answer(_ status: Int, _ message: String, headers: [(String, String)] = [], closing: Bool = true) {
        guard let context, !self.closing else { return }
        let out = settings.answer(
            status,
            message,
            headers: headers,
            closing: closing,
            allocator: context.channel.allocator
        )
        context.write(wrapOutboundOut(out), promise: nil)
        if closing {
            closeAfterWrites(context: context)
        } else {
            context.flush()
        }
    }

    private func closeAfterWrites(context: ChannelHandlerContext) {
        closing = true
        reader.inbound = nil
        timer?.cancel()
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0))).assumeIsolated()
            .whenComplete { _ in context.close(promise: nil) }
    }

    /// A request is over: the next head's time starts now.
    private func requestDone(at now: NIODeadline = .now()) {
        reader.requestDone(at: now)
    }

    private func releaseSpare() {
        guard let spare else { return }
        self.spare = nil
        spare.lease.release(true)
    }

    private func checkDeadlines() {
        guard !closing, let context else { return }
        let now = NIODeadline.now()
        if exchange == nil, reader.waited(at: now) >= settings.checkInterval { releaseSpare() }
        if let exchange {
            if now >= exchange.deadline { fail(exchange, status: 504, message: "no answer from the upstream in time") }
        } else {
            switch reader.expiry(at: now, headTimeout: settings.headerTimeout, idleTimeout: settings.idleTimeout) {
            case .head:
                answer(408, "the request head did not arrive in time")
            case .idle:
                closing = true
                context.close(promise: nil)
            case nil:
                break
            }
        }
    }

    // MARK: Handing over to the general pipeline

    /// Sets the general pipeline up behind this handler, gives it the bytes not handled yet, and steps aside.
    private func handOff(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        releaseSpare()
        do {
            try settings.handOff(context.channel)
        } catch {
            closing = true
            context.close(promise: nil)
            return
        }
        let bytes = reader.takeAll()
        closing = true
        if let bytes { context.fireChannelRead(wrapInboundOut(bytes)) }
        context.fireChannelReadComplete()
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        // A read this handler held back is the general pipeline's to issue.
        context.channel.read()
    }

    // MARK: Connection events

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            exchange?.upstream?.handler.resumeReads()
        } else {
            exchange?.upstream?.handler.pauseReads()
        }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        releaseSpare()
        if let exchange {
            dropUpstream(exchange)
            self.exchange = nil
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    // MARK: Backpressure

    func read(context: ChannelHandlerContext) { gatedRead(context: context) }
}
