import NIOCore

/// One request on its way through the engine, and its response: the owners to try, the head and the body kept for
/// another try, how much of the body is still to come, what the response said. Only its connection's thread touches
/// it, so its stored properties skip the run-time exclusivity checks (see ``EpollSocket``).
final class Exchange {
    let routes: [ProxyRoute]
    @exclusivity(unchecked) private(set) var attempt = 0
    /// The upstream head without the route's headers and the final blank line.
    @exclusivity(unchecked) private var head: ByteBuffer
    let idempotent: Bool
    let expectsBody: Bool
    let clientKeepAlive: Bool
    let upgrade: Bool
    let upstreamKeepAlive: Bool
    let takesInterimResponses: Bool
    let started: NIODeadline
    let deadline: NIODeadline
    /// Counts the request as under way until the exchange is over (``InFlightRequests``).
    private let inFlight: InFlightRequests
    private let entry: InFlightRequests.Entry
    /// Where the request body ends.
    @exclusivity(unchecked) private var framing: Framing
    @exclusivity(unchecked) private var bodyBytes = 0
    /// Times the head went out, to one route or another.
    @exclusivity(unchecked) private var sends = 0
    @exclusivity(unchecked) private var freshRetry = FreshConnectionRetry()
    /// Body parts that arrived while no upstream was attached, and their size.
    @exclusivity(unchecked) private var pending: [ByteBuffer] = []
    @exclusivity(unchecked) private(set) var pendingBytes = 0
    /// The body kept for a replay, while small enough; nil once it is not.
    @exclusivity(unchecked) private var replay: [ByteBuffer]? = []
    @exclusivity(unchecked) private(set) var responseStarted = false
    @exclusivity(unchecked) private(set) var status = 200
    /// The response runs until the upstream closes: the client's connection closes after it.
    @exclusivity(unchecked) private(set) var closesAfter = false
    /// What the access log says of it (nil without an access log), and the response bytes relayed to the client.
    private let access: AccessFacts?
    @exclusivity(unchecked) private var responseBytes = 0

    /// Requests whose bodies fit are kept for a replay on the next owner.
    static let replayableBodyBytes = 64 << 10

    private enum Framing {
        case length(remaining: Int)
        case chunked(ChunkedFraming)
        case ended
    }

    /// What the start of the client's bytes held of the body.
    enum BodyPart {
        /// Nothing to pass on now (no body left, or the bytes wait for an upstream).
        case none
        /// Bytes for the upstream.
        case bytes(ByteBuffer)
        /// The chunked framing is broken.
        case malformed
        /// The body has grown past the limit.
        case tooLarge
    }

    /// Takes `plan`'s head away, so that the exchange holds the only reference and the route's lines are written in
    /// place.
    init(_ plan: inout RequestPlan, started: NIODeadline, inFlight: InFlightRequests, entry: InFlightRequests.Entry) {
        routes = plan.routes
        head = plan.head
        plan.head = ByteBuffer()
        idempotent = plan.idempotent
        expectsBody = plan.expectsBody
        clientKeepAlive = plan.clientKeepAlive
        upgrade = plan.upgrade
        upstreamKeepAlive = plan.upstreamKeepAlive
        takesInterimResponses = plan.takesInterimResponses
        access = plan.access
        switch plan.body {
        case .length(let length): framing = length > 0 ? .length(remaining: length) : .ended
        case .chunked: framing = .chunked(ChunkedFraming())
        }
        self.started = started
        deadline = started + plan.budget
        self.inFlight = inFlight
        self.entry = entry
        inFlight.began(entry)
    }

    deinit { inFlight.ended(entry) }

    var route: ProxyRoute { routes[attempt] }

    /// The whole request body has come from the client.
    var requestEnded: Bool {
        if case .ended = framing { return true }
        return false
    }

    /// Takes the body bytes at the start of `inbound`, up to the end of the body, keeping them for a replay while the
    /// body is small enough; unless `attached`, they wait for an upstream. Bytes past the end stay in `inbound`.
    func takeBody(from inbound: inout ByteBuffer?, attached: Bool, limit: Int) -> BodyPart {
        guard var buffer = inbound else { return .none }
        let take: Int
        switch framing {
        case .ended:
            return .none
        case .length(let remaining):
            take = min(remaining, buffer.readableBytes)
            framing = remaining == take ? .ended : .length(remaining: remaining - take)
        case .chunked(var chunks):
            guard let (count, ended) = buffer.withUnsafeReadableBytes({ chunks.consume($0) }) else { return .malformed }
            take = count
            framing = ended ? .ended : .chunked(chunks)
        }
        let slice = buffer.readSlice(length: take)!
        inbound = buffer.readableBytes > 0 ? buffer : nil
        bodyBytes += take
        guard bodyBytes <= limit else { return .tooLarge }
        guard take > 0 else { return .none }
        if replay != nil {
            if bodyBytes <= Self.replayableBodyBytes {
                replay!.append(slice)
            } else {
                replay = nil
            }
        }
        guard attached else {
            pending.append(slice)
            pendingBytes += take
            return .none
        }
        return .bytes(slice)
    }

    /// What to write to a newly attached upstream: the head with the current route's lines (in place the first time,
    /// on a copy for a retry), then the body so far (the replay on a retry, otherwise what waited).
    func opening(_ settings: RelaySettings, now: NIODeadline) -> [ByteBuffer] {
        let base = head.readableBytes
        let isRetry = sends > 0
        sends += 1
        var first = head
        if !isRetry { head = ByteBuffer() }
        settings.routeLines(route, isLast: attempt == routes.count - 1, deadline: deadline, now: now, into: &first)
        if !isRetry {
            // Kept for a retry: the part without the route's headers.
            head = first.getSlice(at: first.readerIndex, length: base)!
        }
        var parts = [first]
        if isRetry, let replay {
            parts += replay
        } else {
            parts += pending
        }
        pending = []
        pendingBytes = 0
        return parts
    }

    /// The request can be sent again: its body was kept, or none of it was sent.
    private var canReplay: Bool { replay != nil || (bodyBytes == 0 && pending.isEmpty) }

    /// Whether to send the request once more to the same route on a new connection, after `reusedConnection` closed
    /// before answering (``FreshConnectionRetry``).
    func retriesOnFreshConnection(after reusedConnection: Bool) -> Bool {
        freshRetry.allows(reusedConnection: reusedConnection, idempotent: idempotent, canReplay: canReplay)
    }

    /// Moves to the next owner when there is one and the request can be sent again (its body kept, or none sent).
    func advance() -> Bool {
        guard attempt + 1 < routes.count, canReplay else { return false }
        attempt += 1
        return true
    }

    /// Whether a response head from the upstream is a peer's 421 saying it does not own the key, before anything of
    /// the response went to the client: the request goes to the next owner.
    func isMisrouted(_ facts: ResponseFacts) -> Bool {
        guard facts.status == 421, facts.notOwner, !responseStarted, case .peer = route else { return false }
        return true
    }

    /// Notes a final response head; true when the client's connection closes after this response.
    func responseHead(_ facts: ResponseFacts) -> Bool {
        responseStarted = true
        status = facts.status
        closesAfter = facts.bodyUntilClose && expectsBody && facts.status != 204 && facts.status != 304
        return !clientKeepAlive || closesAfter || !requestEnded
    }

    /// Counts response bytes relayed to the client, for the access log.
    func relayed(_ bytes: Int) { responseBytes &+= bytes }

    /// Records the exchange as over at `now`, in the metrics and the access log: under the response's status, or
    /// under `failing` when it ended with the engine's own answer or cut off mid-response.
    func record(_ settings: RelaySettings, at now: NIODeadline, failing: Int? = nil) {
        let nanoseconds = (now - started).nanoseconds
        settings.metrics.record(
            ProxyMetrics.Path(plane: settings.plane, route: route),
            code: failing ?? status,
            nanoseconds: nanoseconds
        )
        AccessLog.write(
            settings.configuration,
            settings.plane,
            facts: access,
            route: route,
            status: failing ?? status,
            bytes: responseBytes,
            nanoseconds: nanoseconds
        )
    }
}

/// When an exchange sends its request once more to the same route on a new connection, after the connection it went
/// out on closed before answering: when that connection was kept between requests, since the upstream may have closed
/// it as idle while the request was on its way, which says nothing about the request or the upstream. Only for an
/// idempotent request (the upstream may also have crashed on it), once, and when the request can be sent again.
struct FreshConnectionRetry {
    private var used = false

    mutating func allows(reusedConnection: Bool, idempotent: Bool, canReplay: Bool) -> Bool {
        guard reusedConnection, idempotent, canReplay, !used else { return false }
        used = true
        return true
    }
}
