import NIOCore

/// What the engine asks its driver to do, in the order it asks.
package enum HTTP1Action {
    /// Write these bytes to the client.
    case writeClient(ByteBuffer)
    /// Take a kept connection to the route from the pool, or open one (always a new one when `fresh`), and report
    /// ``HTTP1Connection/upstreamConnected(reused:now:)`` or ``HTTP1Connection/upstreamConnectFailed(_:now:)``.
    case connect(ProxyRoute, fresh: Bool)
    /// Write these bytes to the upstream connection.
    case writeUpstream(ByteBuffer)
    /// Give the upstream connection up: back to the pool when `reusable`, closed otherwise (one being opened is
    /// abandoned). Nothing more is reported about it.
    case releaseUpstream(reusable: Bool)
    /// Close the client connection once what was written to it has gone out; nothing more is read from it.
    case closeClient
    /// The client speaks HTTP/2 with prior knowledge: hand the connection, with these bytes read of it, to the HTTP/2
    /// server.
    case handOffHTTP2(ByteBuffer?)
}

/// One client connection's HTTP/1.1 life, the one engine of the data plane: every request head read, checked and
/// rewritten once (``HeadRewriter``), routed, its body framed (`Content-Length` or chunked) and passed on with
/// `100 Continue` answered here, the response framed (``ResponseFramer``) and rewritten, keep-alive and pipelining,
/// failover to the next owner and one retry on a fresh connection, deadlines, upgrades (a raw tunnel after a 101, any
/// other answer relayed as a response), drain, and the engine's own answers.
///
/// It does no I/O and reads no clock: a driver (``EpollClient`` on Linux's relay loops, ``HTTP1Relay`` on NIO
/// channels) feeds it events with the time, performs the ``HTTP1Action``s it queues (`nextAction()` until nil, after
/// every event), reads the client while ``readsClient`` says so, and moves bytes. It holds at most one upstream
/// connection at a time: being opened, carrying the current request, or kept between requests for the next one to the
/// same route.
///
/// After any refusal the connection closes and nothing behind the refused request is read: a request that cannot be
/// framed without guessing never reaches an upstream, and neither does anything pipelined behind it.
package struct HTTP1Connection {
    private enum State {
        /// Between requests, or reading a head.
        case idle
        /// A request under way.
        case exchange(Exchange)
        /// Switched protocols: bytes pass both ways as they come (counted while open).
        case tunnel(OpenTunnel)
        /// Done: what was queued for the client goes out, nothing more comes in.
        case closing
    }

    private enum Upstream {
        case none
        /// Asked for with ``HTTP1Action/connect(_:fresh:)``; given up at `deadline`.
        case connecting(ProxyRoute, deadline: NIODeadline)
        /// Carrying the current request; `reused` when it carried requests before.
        case attached(ProxyRoute, reused: Bool)
        /// Kept after a request for the next one to the same route.
        case kept(ProxyRoute)
    }

    package let settings: RelaySettings
    private let client: SocketAddress?
    private var rewriter: HeadRewriter
    private var reader: RequestReader
    private var framer = ResponseFramer()
    private var state = State.idle
    private var upstream = Upstream.none
    private var actions: [HTTP1Action] = []
    private var taken = 0
    /// The node drains: every response says `Connection: close`, and the connection closes after it.
    private(set) var draining = false
    /// Requests this connection has begun (refusals apart): none yet means it may have been opened for one on its way.
    private var requestsBegun = 0

    /// Request body bytes that may wait for an upstream before the client is no longer read.
    static let pendingLimit = 256 << 10

    private static let continueLine = ByteBuffer(string: "HTTP/1.1 100 Continue\r\n\r\n")

    /// A connection from `client`, which reached `local`; `sniffsHTTP2` when nothing has told HTTP/2 apart before it.
    package init(
        settings: RelaySettings,
        client: SocketAddress?,
        local: SocketAddress?,
        sniffsHTTP2: Bool,
        allocator: ByteBufferAllocator,
        now: NIODeadline
    ) {
        self.settings = settings
        self.client = client
        rewriter = HeadRewriter(settings: settings, client: client, local: local, allocator: allocator)
        reader = RequestReader(
            maxHeadBytes: settings.configuration.maxHeaderBytes,
            sniffsHTTP2: sniffsHTTP2,
            now: now
        )
    }

    /// The next thing to do, in order; nil when there is nothing left.
    package mutating func nextAction() -> HTTP1Action? {
        guard taken < actions.count else {
            if taken > 0 {
                actions.removeAll(keepingCapacity: true)
                taken = 0
            }
            return nil
        }
        defer { taken += 1 }
        return actions[taken]
    }

    private mutating func emit(_ action: HTTP1Action) { actions.append(action) }

    /// Whether the driver should read the client now: not while a pipelined request waits its turn, nor while too
    /// much of a body waits for an upstream, nor once the connection is closing.
    package var readsClient: Bool {
        switch state {
        case .idle, .tunnel: true
        case .closing: false
        case .exchange(let exchange):
            exchange.requestEnded ? reader.inbound == nil : exchange.pendingBytes < Self.pendingLimit
        }
    }

    /// Whether the connection is done with (closing, or handed over).
    package var isClosing: Bool {
        if case .closing = state { return true }
        return false
    }

    /// Whether nothing is under way: no request, and no part of a head.
    package var isIdle: Bool {
        if case .idle = state { return !reader.headStarted }
        return false
    }

    private var isAttached: Bool {
        if case .attached = upstream { return true }
        return false
    }

    // MARK: Client events

    /// Bytes from the client.
    package mutating func clientBytes(_ bytes: ByteBuffer, now: NIODeadline) {
        switch state {
        case .closing:
            return
        case .tunnel:
            emit(.writeUpstream(bytes))
        case .idle:
            reader.append(bytes)
            processInbound(now)
        case .exchange(let exchange):
            reader.append(bytes)
            feedBody(exchange, now)
        }
    }

    /// The client closed its side or the connection broke: whatever is under way is given up (the driver closes the
    /// connection itself).
    package mutating func clientClosed(now: NIODeadline) {
        if case .exchange(let exchange) = state {
            exchange.record(settings, at: now, failing: 499)
        }
        state = .closing
        reader.inbound = nil
        dropUpstream(reusable: isKept)
    }

    /// Starts draining: every response from now on says `Connection: close` and the connection closes after it; an
    /// idle keep-alive connection closes now. A connection that has not begun a request yet (it may have been opened
    /// for one that is on its way, as a client told to close does for its next request) is given that one request.
    /// When the listener closes (`closingUnused`, once no request is under way), the connections kept alive after a
    /// request close, and so do those with only part of a head (not a request yet) and tunnels after an upgrade, which
    /// no HTTP means can drain; one that has sent nothing yet is left for the listener's last moment (its client may
    /// be about to send the request it connected for) and closed with it.
    package mutating func drain(now: NIODeadline, closingUnused: Bool = false) {
        draining = true
        switch state {
        case .idle where requestsBegun > 0 || (closingUnused && reader.headStarted):
            guard isIdle || closingUnused else { return }
            close()
        case .tunnel where closingUnused:
            close()
        default:
            break
        }
    }

    /// Checks the connection's deadlines, as the driver does every ``RelaySettings/checkInterval``.
    package mutating func tick(now: NIODeadline) {
        switch state {
        case .idle:
            if isKept, reader.waited(at: now) >= settings.checkInterval { dropUpstream(reusable: true) }
            switch reader.expiry(at: now, headTimeout: settings.headerTimeout, idleTimeout: settings.idleTimeout) {
            case .head: refuse(408, "the request head did not arrive in time", headers: [], closing: true, now)
            case .idle: close()
            case nil: break
            }
        case .exchange(let exchange):
            if case .connecting(let route, let deadline) = upstream, now >= deadline {
                dropUpstream(reusable: false)
                settings.router.upstreamFailed(route, error: nil)
                tryNextRoute(exchange, reason: "cannot reach \(settings.describe(route)): connect timed out", now)
            } else if now >= exchange.deadline {
                fail(exchange, status: 504, message: "no answer from \(settings.describe(exchange.route)) in time", now)
            }
        case .tunnel, .closing:
            break
        }
    }

    // MARK: Requests

    /// Handles the heads waiting in the reader until one of them is under way, or more bytes are needed.
    private mutating func processInbound(_ now: NIODeadline) {
        while case .idle = state {
            switch reader.next(&rewriter, now: now) {
            case .needMore:
                return
            case .http2:
                state = .closing
                emit(.handOffHTTP2(reader.takeAll()))
            case .refuse(let status, let message):
                refuse(status, message, headers: [], closing: true, now)
            case .head(let startLineEnd, let length):
                begin(startLineEnd: startLineEnd, length: length, now)
            }
        }
    }

    /// Acts on the complete head at the start of the reader's bytes.
    private mutating func begin(startLineEnd: Int, length: Int, _ now: NIODeadline) {
        // Switched on as it comes, so that no copy of the plan holds on to its head.
        switch reader.inbound!.withUnsafeReadableBytes({
            rewriter.request($0, startLineEnd: startLineEnd, length: length)
        }) {
        case .refuse(let status, let message, let headers, let closing):
            reader.consume(length)
            refuse(status, message, headers: headers, closing: closing || draining, now)
        case .forward(var plan):
            // Timed from the head's first byte, as nginx's request time is.
            let exchange = Exchange(
                &plan,
                started: reader.waitingSince,
                inFlight: settings.metrics.inFlight,
                entry: settings.inFlightEntry
            )
            requestsBegun += 1
            reader.consume(length)
            state = .exchange(exchange)
            if plan.expectsContinue { emit(.writeClient(Self.continueLine)) }
            connect(exchange, fresh: false, now)
            feedBody(exchange, now)
        }
    }

    /// Passes the body bytes waiting in the reader on, up to the end of the current request's body.
    private mutating func feedBody(_ exchange: Exchange, _ now: NIODeadline) {
        switch exchange.takeBody(
            from: &reader.inbound,
            attached: isAttached,
            limit: settings.configuration.maxBodyBytes
        ) {
        case .none:
            break
        case .bytes(let bytes):
            emit(.writeUpstream(bytes))
        case .malformed:
            fail(exchange, status: 400, message: "malformed request: the chunked body's framing is broken", now)
        case .tooLarge:
            let limit = settings.configuration.maxBodyBytes
            fail(exchange, status: 413, message: "the request body is larger than \(limit) bytes", now)
        }
    }

    // MARK: Upstreams

    /// Puts `exchange` on a connection to its route: the one kept from this connection's last request, or one the
    /// driver takes from its pool or opens (always a new one when `fresh`, and for an upgrade).
    private mutating func connect(_ exchange: Exchange, fresh: Bool, _ now: NIODeadline) {
        let route = exchange.route
        let fresh = fresh || exchange.upgrade
        if case .kept(let kept) = upstream {
            if kept == route && !fresh {
                upstream = .attached(route, reused: true)
                send(exchange, now)
                return
            }
            dropUpstream(reusable: true)
        }
        upstream = .connecting(route, deadline: now + settings.connectTimeout)
        emit(.connect(route, fresh: fresh))
    }

    /// Writes the request, as far as it has come, to the upstream just attached.
    private mutating func send(_ exchange: Exchange, _ now: NIODeadline) {
        framer.begin(expectsBody: exchange.expectsBody)
        for part in exchange.opening(settings, now: now) { emit(.writeUpstream(part)) }
    }

    /// The connection asked for with ``HTTP1Action/connect(_:fresh:)`` is ready; `reused` when it was kept from an
    /// earlier request.
    package mutating func upstreamConnected(reused: Bool, now: NIODeadline) {
        guard case .connecting(let route, _) = upstream, case .exchange(let exchange) = state else { return }
        upstream = .attached(route, reused: reused)
        send(exchange, now)
    }

    /// The connection asked for could not be made.
    package mutating func upstreamConnectFailed(_ error: any Error, now: NIODeadline) {
        guard case .connecting(let route, _) = upstream, case .exchange(let exchange) = state else { return }
        upstream = .none
        if let busy = error as? UpstreamBusy {
            // Too many requests already wait for this upstream: the request is refused, not moved elsewhere.
            fail(exchange, status: 503, message: "\(settings.describe(route)) is busy: \(busy)", now)
            return
        }
        settings.router.upstreamFailed(route, error: error)
        tryNextRoute(exchange, reason: "cannot reach \(settings.describe(route)): \(settings.describe(error))", now)
    }

    private var isKept: Bool {
        if case .kept = upstream { return true }
        return false
    }

    /// Gives the upstream connection up, if there is one.
    private mutating func dropUpstream(reusable: Bool) {
        switch upstream {
        case .none: return
        case .connecting: emit(.releaseUpstream(reusable: false))
        case .attached, .kept: emit(.releaseUpstream(reusable: reusable))
        }
        upstream = .none
    }

    /// Moves to the next owner if the request provably never reached a backend and can be sent again; otherwise
    /// answers 502.
    private mutating func tryNextRoute(_ exchange: Exchange, reason: String, _ now: NIODeadline) {
        dropUpstream(reusable: false)
        guard exchange.advance() else {
            fail(exchange, status: 502, message: reason, now)
            return
        }
        settings.metrics.retries.increment()
        connect(exchange, fresh: false, now)
    }

    // MARK: Responses

    /// Bytes from the upstream connection.
    package mutating func upstreamBytes(_ bytes: ByteBuffer, now: NIODeadline) {
        switch state {
        case .tunnel:
            emit(.writeClient(bytes))
        case .exchange(let exchange) where isAttached && !framer.isIdle:
            respond(exchange, bytes, now)
        default:
            // Bytes nobody asked for: the connection cannot be trusted with another request.
            if isKept || isAttached { dropUpstream(reusable: false) }
        }
    }

    private mutating func respond(_ exchange: Exchange, _ bytes: ByteBuffer, _ now: NIODeadline) {
        var buffer = bytes
        while case .exchange(let current) = state, current === exchange,
            case .attached(let route, let reused) = upstream,
            let event = framer.next(&buffer)
        {
            switch event {
            case .interim(let head, let facts):
                // An HTTP/1.0 client is never sent a 1xx (RFC 9110 §15.2): it is dropped, the final response follows.
                guard exchange.takesInterimResponses else { break }
                emit(
                    .writeClient(
                        rewriter.response(
                            head,
                            facts: facts,
                            fields: framer.fields,
                            servedHere: false,
                            closing: false,
                            bodyBytes: 0
                        )
                    )
                )
            case .head(let head, let facts, let body):
                if exchange.isMisrouted(facts) {
                    settings.metrics.misroutes.increment()
                    tryNextRoute(exchange, reason: "no owner accepted the request", now)
                    return
                }
                if facts.status == 101 {
                    guard exchange.upgrade else {
                        upstreamFailed(exchange, reason: "the upstream switched protocols unasked", reused: false, now)
                        return
                    }
                    startTunnel(exchange, head: head, facts: facts, body: body, rest: buffer, now)
                    return
                }
                let closing = exchange.responseHead(facts) || draining
                let (head, body) = rewriter.clientResponse(
                    head,
                    facts: facts,
                    fields: framer.fields,
                    body: body,
                    route: route,
                    closing: closing
                )
                exchange.relayed(head.readableBytes + (body?.readableBytes ?? 0))
                emit(.writeClient(head))
                if let body { emit(.writeClient(body)) }
            case .body(let body):
                exchange.relayed(body.readableBytes)
                emit(.writeClient(body))
            case .end(let reusable):
                finish(exchange, reusable: reusable, now)
            case .failed(let reason):
                upstreamFailed(exchange, reason: reason, reused: reused, now)
            }
        }
    }

    /// The upstream accepted an upgrade: its 101 goes to the client, and from now on bytes pass both ways as they
    /// come, those that came with the 101 and those the client sent after its request first.
    private mutating func startTunnel(
        _ exchange: Exchange,
        head: ByteBuffer,
        facts: ResponseFacts,
        body: ByteBuffer?,
        rest: ByteBuffer,
        _ now: NIODeadline
    ) {
        _ = exchange.responseHead(facts)
        exchange.record(settings, at: now)
        let (head, body) = rewriter.clientResponse(
            head,
            facts: facts,
            fields: framer.fields,
            body: body,
            route: exchange.route,
            closing: false,
            upgraded: true
        )
        framer.reset()
        state = .tunnel(OpenTunnel(settings.metrics.inFlight))
        emit(.writeClient(head))
        if let body { emit(.writeClient(body)) }
        if rest.readableBytes > 0 { emit(.writeClient(rest)) }
        if let early = reader.takeAll() { emit(.writeUpstream(early)) }
    }

    /// The response is complete.
    private mutating func finish(_ exchange: Exchange, reusable: Bool, _ now: NIODeadline) {
        exchange.record(settings, at: now)
        let closes = !exchange.requestEnded || !exchange.clientKeepAlive || exchange.closesAfter || draining
        let upstreamReusable = reusable && exchange.requestEnded && exchange.upstreamKeepAlive
        if upstreamReusable, !closes, case .attached(let route, _) = upstream {
            upstream = .kept(route)
        } else {
            dropUpstream(reusable: upstreamReusable)
        }
        state = .idle
        if closes {
            // The client is still sending a body nobody will read, asked to close, or reads the body to the close.
            close()
            return
        }
        reader.requestDone(at: now)
        processInbound(now)
    }

    /// The upstream connection closed (the driver has closed it).
    package mutating func upstreamClosed(now: NIODeadline) {
        switch upstream {
        case .none:
            return
        case .kept:
            upstream = .none
        case .connecting(let route, _):
            upstream = .none
            guard case .exchange(let exchange) = state else { return }
            settings.router.upstreamFailed(route, error: nil)
            tryNextRoute(exchange, reason: "cannot reach \(settings.describe(route)): the connection closed", now)
        case .attached(_, let reused):
            upstream = .none
            switch state {
            case .tunnel:
                close()
            case .exchange(let exchange):
                switch framer.closed() {
                case .end: finish(exchange, reusable: false, now)
                case .failed(let reason): upstreamFailed(exchange, reason: reason, reused: reused, now)
                default: break
                }
            case .idle, .closing:
                break
            }
        }
    }

    /// The upstream's answer cannot be used: it closed before the response was complete, or broke the framing;
    /// `reason` says how, for the client's 502.
    private mutating func upstreamFailed(_ exchange: Exchange, reason: String, reused: Bool, _ now: NIODeadline) {
        dropUpstream(reusable: false)
        if !exchange.responseStarted, exchange.retriesOnFreshConnection(after: reused) {
            settings.metrics.retries.increment()
            connect(exchange, fresh: true, now)
            return
        }
        if exchange.responseStarted {
            // Mid-response there is no way to tell the client but to close.
            exchange.record(settings, at: now, failing: 502)
            close()
            return
        }
        settings.router.upstreamFailed(exchange.route, error: nil)
        // Idempotent requests may go to the next owner even though the first may have seen them.
        if exchange.idempotent {
            tryNextRoute(exchange, reason: reason, now)
        } else {
            fail(exchange, status: 502, message: reason, now)
        }
    }

    // MARK: Answering here

    /// Ends `exchange` with the engine's own answer (or, once its response has started, with a close).
    private mutating func fail(_ exchange: Exchange, status: Int, message: String, _ now: NIODeadline) {
        guard case .exchange(let current) = state, current === exchange else { return }
        dropUpstream(reusable: false)
        exchange.record(settings, at: now, failing: status)
        if exchange.responseStarted {
            close()
            return
        }
        state = .idle
        let closing = !exchange.requestEnded || !exchange.clientKeepAlive || draining
        answer(status, message, headers: [], closing: closing, route: exchange.route, now)
        processInbound(now)
    }

    /// Answers a request that got no route (the caller reads on, unless the connection closes).
    private mutating func refuse(
        _ status: Int,
        _ message: String,
        headers: [(String, String)],
        closing: Bool,
        _ now: NIODeadline
    ) {
        settings.metrics.record(ProxyMetrics.Path(unroutedOn: settings.plane), code: status, nanoseconds: 0)
        AccessLog.write(
            settings.configuration,
            settings.plane,
            facts: nil,
            route: nil,
            status: status,
            bytes: 0,
            nanoseconds: 0
        )
        answer(status, message, headers: headers, closing: closing, route: nil, now)
    }

    /// Every answer the engine makes itself goes out here, counted and logged.
    private mutating func answer(
        _ status: Int,
        _ message: String,
        headers: [(String, String)],
        closing: Bool,
        route: ProxyRoute?,
        _ now: NIODeadline
    ) {
        settings.generated(status, message, route: route, client: client)
        emit(
            .writeClient(
                settings.answer(status, message, headers: headers, closing: closing, allocator: ByteBufferAllocator())
            )
        )
        if closing {
            close()
        } else {
            reader.requestDone(at: now)
        }
    }

    /// Closes the client connection once what is queued has gone out; nothing more is read.
    private mutating func close() {
        guard !isClosing else { return }
        state = .closing
        reader.inbound = nil
        dropUpstream(reusable: isKept)
        emit(.closeClient)
    }
}

/// An upgraded connection, counted in ``InFlightRequests/tunnels`` for as long as the engine holds it.
final class OpenTunnel {
    private let inFlight: InFlightRequests

    init(_ inFlight: InFlightRequests) {
        self.inFlight = inFlight
        inFlight.tunnelOpened()
    }

    deinit { inFlight.tunnelClosed() }
}
