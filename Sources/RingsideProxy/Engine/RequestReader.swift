import NIOCore

/// The client side of a relay connection as bytes, whichever I/O carries them (``HTTP1Relay``, ``EpollClient``): what
/// has arrived and is not handled yet, where the next request head is, which answer a bad head gets, and which of the
/// connection's waits has run out. It does no I/O.
struct RequestReader {
    /// Bytes received and not handled yet: a head arriving, a body's start, pipelined requests.
    var inbound: ByteBuffer?
    /// Whether bytes of the next head have arrived.
    private(set) var headStarted = false
    /// When the current wait began: a head's first byte, or the end of the last request.
    private(set) var waitingSince: NIODeadline
    /// Whether the first bytes are still to tell HTTP/1.1 from HTTP/2's preface (for a connection no sniffer saw).
    private var sniffing: Bool
    private let maxHeadBytes: Int

    /// What the bytes hold next.
    enum Next: Equatable {
        /// Nothing to act on until more bytes arrive.
        case needMore
        /// HTTP/2 with prior knowledge ("PRI * HTTP/2.0"), for a pipeline that speaks it.
        case http2
        /// A head that gets this answer, after which the connection closes (the bytes are dropped).
        case refuse(status: Int, message: String)
        /// A complete head at the start of ``inbound``, parsed into the rewriter's fields.
        case head(startLineEnd: Int, length: Int)
    }

    /// A wait that has run out.
    enum Expiry: Equatable {
        /// A head did not arrive in time.
        case head
        /// The connection sat idle too long between requests.
        case idle
    }

    /// A reader for heads up to `maxHeadBytes`; `sniffsHTTP2` when nothing has told HTTP/2 apart before it.
    init(maxHeadBytes: Int, sniffsHTTP2: Bool, now: NIODeadline) {
        self.maxHeadBytes = maxHeadBytes
        sniffing = sniffsHTTP2
        waitingSince = now
    }

    mutating func append(_ bytes: ByteBuffer) {
        if inbound == nil {
            inbound = bytes
        } else {
            var bytes = bytes
            inbound!.writeBuffer(&bytes)
        }
    }

    /// The next head in what has arrived, empty lines before it skipped (RFC 9112 §2.2); a head's first byte starts
    /// its time at `now`.
    mutating func next(_ rewriter: inout HeadRewriter, now: @autoclosure () -> NIODeadline) -> Next {
        guard var buffer = inbound else { return .needMore }
        while buffer.readableBytes >= 2, buffer.getInteger(at: buffer.readerIndex, as: UInt16.self) == 0x0D0A {
            buffer.moveReaderIndex(forwardBy: 2)
        }
        guard buffer.readableBytes > 0 else {
            inbound = nil
            return .needMore
        }
        inbound = buffer
        if !headStarted {
            headStarted = true
            waitingSince = now()
        }
        if sniffing {
            let seen = buffer.readableBytesView.prefix(3)
            if seen.elementsEqual("PRI".utf8.prefix(seen.count)) { return seen.count == 3 ? .http2 : .needMore }
            sniffing = false
        }
        switch buffer.withUnsafeReadableBytes({ rewriter.parseRequest($0) }) {
        case .incomplete:
            guard buffer.readableBytes > maxHeadBytes else { return .needMore }
            return refuse(431, "the request head is larger than \(maxHeadBytes) bytes")
        case .malformed(let reason):
            return refuse(400, "malformed request: \(reason)")
        case .complete(let startLineEnd, let length):
            guard length <= maxHeadBytes else {
                return refuse(431, "the request head is larger than \(maxHeadBytes) bytes")
            }
            return .head(startLineEnd: startLineEnd, length: length)
        }
    }

    private mutating func refuse(_ status: Int, _ message: String) -> Next {
        inbound = nil
        return .refuse(status: status, message: message)
    }

    /// Drops the `length` bytes of the head just handled.
    mutating func consume(_ length: Int) {
        inbound!.moveReaderIndex(forwardBy: length)
        if inbound!.readableBytes == 0 { inbound = nil }
    }

    /// Takes what has arrived and is not handled, for a pipeline that takes the connection over.
    mutating func takeAll() -> ByteBuffer? {
        defer { inbound = nil }
        return inbound
    }

    /// A request is over: the next head's time starts at `now`.
    mutating func requestDone(at now: NIODeadline) {
        headStarted = false
        waitingSince = now
    }

    /// How long the connection has waited, at `now`.
    func waited(at now: NIODeadline) -> TimeAmount { now - waitingSince }

    /// The wait that has run out at `now` while no request is under way, if one has.
    func expiry(at now: NIODeadline, headTimeout: TimeAmount, idleTimeout: TimeAmount) -> Expiry? {
        if headStarted { return now - waitingSince >= headTimeout ? .head : nil }
        return now - waitingSince >= idleTimeout ? .idle : nil
    }
}
