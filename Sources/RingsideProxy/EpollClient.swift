#if os(Linux)
import CEpoll
import Glibc
import NIOCore
import NIOHTTP1

/// A client connection on a relay loop: the app plane's hot path for HTTP/1.1, the same relay as ``HTTP1Relay``
/// (``HeadRewriter`` reads and rewrites heads, ``ResponseFramer`` finds where responses end) on the loop's own
/// sockets instead of NIO channels.
///
/// What it does not carry it hands over to the general pipeline, with the bytes read so far, once nothing of its own
/// is under way: HTTP/2 with prior knowledge, HTTP/1.0, chunked or `Expect` request bodies, protocol upgrades, and
/// routes whose address takes a name lookup.
final class EpollClient: EpollSocket {
    @exclusivity(unchecked) private var rewriter: HeadRewriter
    private let settings: RelaySettings
    /// What the client sent and is not handled yet, and how long it has waited.
    @exclusivity(unchecked) private var reader: RequestReader
    @exclusivity(unchecked) private var exchange: Exchange?
    @exclusivity(unchecked) private var out = OutboundQueue()
    /// Reads wait for the current exchange to end (the next request is here already).
    @exclusivity(unchecked) private var holdForTurn = false
    /// Reads wait for the upstream to take the body bytes queued for it.
    @exclusivity(unchecked) private var holdForUpstream = false
    /// The upstream's reads wait for the client to take the response bytes queued for it.
    @exclusivity(unchecked) private var upstreamHeld = false
    /// Closing once what is queued is written.
    @exclusivity(unchecked) private var closing = false
    /// Handing over to the general pipeline once what is queued is written.
    @exclusivity(unchecked) private var handingOff = false
    /// The upstream connection of the last request, kept for the next one to the same route.
    @exclusivity(unchecked) private var spare: EpollUpstream?

    /// How many response bytes may wait for the client before the upstream stops being read, and request bytes for
    /// the upstream before the client stops being read.
    static let highWater = 256 << 10

    private typealias Exchange = RelayExchange<EpollUpstream>

    init(fd: CInt, peer: SocketAddress?, loop: EpollLoop) {
        settings = loop.settings
        rewriter = HeadRewriter(settings: loop.settings, client: peer, allocator: ByteBufferAllocator())
        reader = RequestReader(
            maxHeadBytes: loop.settings.configuration.maxHeaderBytes,
            sniffsHTTP2: true,
            now: loop.now
        )
        super.init(fd: fd, loop: loop)
    }

    // MARK: Events

    override func ready(_ events: UInt32) {
        if note(events) { flushOut() }
        pumpReads()
    }

    override func resumed() { pumpReads() }

    private func pumpReads() {
        let open = pumpReads(
            while: { !self.holdForTurn && !self.holdForUpstream && !self.closing && !self.handingOff },
            into: { buffer in
                received(buffer)
                // Body bytes go on as they come; reads wait while too many of them wait for the upstream.
                guard let upstream = exchange?.upstream, upstream.queuedBytes > 0 else { return }
                upstream.flush()
                if upstream.queuedBytes > Self.highWater {
                    holdForUpstream = true
                    upstream.notifyWhenDrained()
                }
            }
        )
        if !open { close() }
    }

    /// The upstream took the request bytes queued for it.
    func upstreamDrained() {
        guard holdForUpstream else { return }
        holdForUpstream = false
        loop.later(self)
    }

    // MARK: Requests

    private func received(_ bytes: ByteBuffer) {
        reader.append(bytes)
        if let exchange {
            if exchange.bodyRemaining > 0 { feedBody(exchange) }
            // What follows the body is the next request: it waits.
            if exchange.bodyRemaining == 0, reader.inbound != nil { holdForTurn = true }
        } else {
            processInbound()
        }
    }

    /// Handles the heads waiting in the reader until one of them is under way, or more bytes are needed.
    private func processInbound() {
        while exchange == nil, !closing, !handingOff {
            switch reader.next(&rewriter, now: loop.now) {
            case .needMore:
                return
            case .http2:
                startHandOff()
            case .refuse(let status, let message):
                answer(status, message)
            case .head(let startLineEnd, let length):
                begin(startLineEnd: startLineEnd, length: length)
            }
        }
    }

    /// Acts on the complete head at the start of the reader's bytes.
    private func begin(startLineEnd: Int, length: Int) {
        // Switched on as it comes, so that no copy of the plan holds on to its head.
        switch reader.inbound!.withUnsafeReadableBytes({
            rewriter.request($0, startLineEnd: startLineEnd, length: length)
        }) {
        case .handOff:
            startHandOff()
        case .refuse(let status, let message, let headers, let closing):
            reader.consume(length)
            settings.metrics.record(ProxyMetrics.Path(unroutedOn: .app), code: status, nanoseconds: 0)
            answer(status, message, headers: headers, closing: closing)
            requestDone()
        case .forward(var plan):
            // A route whose address takes a name lookup goes the general way, which makes it.
            guard plan.routes.allSatisfy({ loop.address(of: $0) != nil }) else {
                startHandOff()
                return
            }
            // Timed from the head's first byte, as nginx's request time is.
            let exchange = Exchange(&plan, started: reader.waitingSince)
            reader.consume(length)
            self.exchange = exchange
            if exchange.bodyRemaining > 0 { feedBody(exchange) }
            if exchange.bodyRemaining == 0, reader.inbound != nil { holdForTurn = true }
            connect(exchange)
        }
    }

    /// Passes the body bytes waiting in the reader on, up to the end of the current request's body.
    private func feedBody(_ exchange: Exchange) {
        if let slice = exchange.takeBody(from: &reader.inbound) { exchange.upstream?.write(slice) }
    }

    // MARK: Upstreams

    /// Puts `exchange` on a connection to its route: the one kept from this client's last request, one from the pool,
    /// or (always when `fresh`) a new one.
    private func connect(_ exchange: Exchange, fresh: Bool = false) {
        let route = exchange.route
        if let spare {
            self.spare = nil
            if spare.route == route && spare.isOpen && !fresh {
                attach(spare, to: exchange)
                return
            }
            loop.release(spare, reusable: true)
        }
        do {
            guard let address = loop.address(of: route) else {
                throw ProxyRefusal(status: .badGateway, message: "\(route) needs a name lookup")
            }
            attach(try loop.upstream(for: route, at: address, fresh: fresh), to: exchange)
        } catch {
            settings.router.upstreamFailed(route, error: error)
            tryNextRoute(exchange, reason: "cannot reach \(route): \(error)")
        }
    }

    private func attach(_ upstream: EpollUpstream, to exchange: Exchange) {
        upstream.bind(self, expectsBody: exchange.expectsBody)
        exchange.upstream = upstream
        for part in exchange.opening(settings) { upstream.write(part) }
        upstream.flush()
    }

    /// The upstream could not be connected to.
    func upstreamConnectFailed(_ error: any Error) {
        guard let exchange else { return }
        exchange.upstream = nil
        settings.router.upstreamFailed(exchange.route, error: error)
        tryNextRoute(exchange, reason: "cannot reach \(exchange.route): \(error)")
    }

    /// Gives the exchange's upstream connection up (closed).
    private func dropUpstream(_ exchange: Exchange) {
        guard let upstream = exchange.upstream else { return }
        exchange.upstream = nil
        upstream.detach()
        loop.release(upstream, reusable: false)
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

    // MARK: Responses (called by EpollUpstream)

    /// A response head from the upstream, with the body bytes that came with it.
    func upstreamHead(_ head: ByteBuffer, facts: ResponseFacts, fields: [HeaderField], body: ByteBuffer?) {
        guard let exchange else { return }
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
        out.append(head)
        if let body { out.append(body) }
    }

    func upstreamBody(_ buffer: ByteBuffer) {
        guard let exchange, exchange.responseStarted else { return }
        out.append(buffer)
    }

    func upstreamEnd(reusable: Bool) {
        guard let exchange else { return }
        guard exchange.responseStarted else {
            // Only interim responses, then the end: nothing the client can use.
            upstreamFailed("the upstream sent only interim responses")
            return
        }
        let now = NIODeadline.now()
        exchange.record(in: settings.metrics, on: .app, at: now)
        let requestEnded = exchange.requestEnded
        let closes = !requestEnded || !exchange.clientKeepAlive || exchange.closesAfter
        if let upstream = exchange.upstream {
            upstream.detach()
            if reusable, !closes {
                spare = upstream
            } else {
                loop.release(upstream, reusable: reusable && requestEnded)
            }
        }
        exchange.upstream = nil
        self.exchange = nil
        upstreamHeld = false
        if closes {
            // The client is still sending a body nobody will read, asked to close, or reads the body to the close.
            closeAfterWrites()
            return
        }
        flushOut()
        requestDone(at: now)
        if holdForTurn {
            holdForTurn = false
            loop.later(self)
        }
        processInbound()
    }

    func upstreamReadComplete() { flushOut() }

    /// The upstream closed or failed before the response was complete; `reason` says how, for the client's 502.
    func upstreamFailed(_ reason: String) {
        guard let exchange else { return }
        let reused = (exchange.upstream?.exchanges ?? 0) > 1
        dropUpstream(exchange)
        if !exchange.responseStarted, exchange.retriesOnFreshConnection(after: reused) {
            settings.metrics.retries.increment()
            connect(exchange, fresh: true)
            return
        }
        if exchange.responseStarted {
            // Mid-response there is no way to tell the client but to close.
            self.exchange = nil
            exchange.record(in: settings.metrics, on: .app, at: loop.now, failing: 502)
            close()
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

    // MARK: Writing to the client

    /// Writes what is queued for the client; once it is all out, closes or hands over when that is pending.
    private func flushOut() {
        guard fd >= 0, writable else { return }
        switch out.flush(to: fd, vectors: loop.vectors) {
        case .done:
            if closing {
                close()
            } else if handingOff {
                completeHandOff()
            } else if upstreamHeld {
                upstreamHeld = false
                exchange?.upstream?.resumeReads()
            }
        case .wouldBlock:
            writable = false
            if out.bytes > Self.highWater, !upstreamHeld, let upstream = exchange?.upstream {
                upstreamHeld = true
                upstream.pauseReads()
            }
        case .failed:
            close()
        }
    }

    // MARK: Answering ourselves

    private func fail(_ exchange: Exchange, status: Int, message: String) {
        guard self.exchange === exchange else { return }
        dropUpstream(exchange)
        self.exchange = nil
        exchange.record(in: settings.metrics, on: .app, at: NIODeadline.now(), failing: status)
        if exchange.responseStarted {
            close()
            return
        }
        answer(status, message, closing: !exchange.requestEnded || !exchange.clientKeepAlive)
        if !closing {
            requestDone()
            if holdForTurn {
                holdForTurn = false
                loop.later(self)
            }
            processInbound()
        }
    }

    /// Answers with `status` and `message` as plain text; `closing` closes the connection once it is written.
    private func answer(_ status: Int, _ message: String, headers: [(String, String)] = [], closing: Bool = true) {
        guard fd >= 0, !self.closing else { return }
        out.append(
            settings.answer(status, message, headers: headers, closing: closing, allocator: ByteBufferAllocator())
        )
        if closing {
            closeAfterWrites()
        } else {
            flushOut()
        }
    }

    private func closeAfterWrites() {
        closing = true
        reader.inbound = nil
        flushOut()
    }

    /// A request is over: the next head's time starts now. A stopping loop closes the connection here.
    private func requestDone(at now: NIODeadline? = nil) {
        reader.requestDone(at: now ?? loop.now)
        if loop.isStopping { closeAfterWrites() }
    }

    private func releaseSpare() {
        guard let spare else { return }
        self.spare = nil
        loop.release(spare, reusable: true)
    }

    /// Checks the connection's deadlines, as its loop does every check interval.
    func checkDeadlines(_ now: NIODeadline) {
        guard !closing, !handingOff, fd >= 0 else { return }
        if exchange == nil, reader.waited(at: now) >= settings.checkInterval { releaseSpare() }
        if let exchange {
            if let upstream = exchange.upstream, upstream.isConnecting, now >= upstream.connectDeadline {
                let failure = upstream.connectTimedOut()
                upstreamConnectFailed(failure)
            } else if now >= exchange.deadline {
                fail(exchange, status: 504, message: "no answer from the upstream in time")
            }
        } else {
            switch reader.expiry(at: now, headTimeout: settings.headerTimeout, idleTimeout: settings.idleTimeout) {
            case .head: answer(408, "the request head did not arrive in time")
            case .idle: close()
            case nil: break
            }
        }
    }

    /// The loop stops: an idle connection closes now, a busy one after its exchange.
    func stopWhenIdle() {
        if exchange == nil, out.isEmpty, !handingOff { close() }
    }

    // MARK: Handing over to the general pipeline

    private func startHandOff() {
        releaseSpare()
        handingOff = true
        flushOut()
    }

    private func completeHandOff() {
        let descriptor = fd
        let bytes = reader.takeAll()
        loop.deregister(self)
        fd = -1
        loop.clientEnded(self)
        loop.handOff(descriptor, bytes)
    }

    // MARK: Closing

    /// Closes the connection and gives up whatever is under way.
    func close() {
        guard fd >= 0 else { return }
        releaseSpare()
        if let exchange {
            self.exchange = nil
            dropUpstream(exchange)
        }
        loop.deregister(self)
        Glibc.close(fd)
        fd = -1
        closing = true
        reader.inbound = nil
        out.removeAll()
        loop.clientEnded(self)
    }
}
#endif
