#if os(Linux)
import CEpoll
import Glibc
import NIOCore

/// The upstream side of an exchange on a relay loop: a connection to the backend or to a peer's cluster port that
/// writes the request bytes an ``EpollClient`` gives it and passes the response on as ``ResponseFramer`` finds it.
/// Between exchanges it waits in its loop's pool, still watched, so that a close is noticed.
final class EpollUpstream: EpollSocket {
    let route: ProxyRoute
    /// Connecting until the socket says otherwise; the connection is given up at `connectDeadline`.
    @exclusivity(unchecked) private(set) var isConnecting: Bool
    let connectDeadline: NIODeadline
    /// In its loop's pool of idle connections.
    @exclusivity(unchecked) var isPooled = false
    /// Exchanges this connection has carried, the current one included.
    @exclusivity(unchecked) private(set) var exchanges = 0
    @exclusivity(unchecked) private var framer = ResponseFramer()
    @exclusivity(unchecked) private var client: EpollClient?
    @exclusivity(unchecked) private var out = OutboundQueue()
    @exclusivity(unchecked) private var readsPaused = false
    /// The client waits for the queued request bytes to go out before it reads more.
    @exclusivity(unchecked) private var clientWaits = false

    init(fd: CInt, route: ProxyRoute, connected: Bool, connectDeadline: NIODeadline, loop: EpollLoop) {
        self.route = route
        isConnecting = !connected
        self.connectDeadline = connectDeadline
        super.init(fd: fd, writable: connected, loop: loop)
    }

    /// Starts an exchange for `client`; `expectsBody` is false for a HEAD request.
    func bind(_ client: EpollClient, expectsBody: Bool) {
        self.client = client
        exchanges += 1
        isPooled = false
        readsPaused = false
        framer.begin(expectsBody: expectsBody)
    }

    /// Ends the client's part in the exchange early (it went away, or gave up on this connection).
    func detach() {
        client = nil
        clientWaits = false
        readsPaused = false
        framer.reset()
    }

    var isOpen: Bool { fd >= 0 }

    /// Request bytes queued and not written yet.
    var queuedBytes: Int { out.bytes }

    func write(_ buffer: ByteBuffer) { out.append(buffer) }

    /// Writes what is queued; when the socket takes no more, the client is told once it has.
    func flush() {
        guard fd >= 0, writable, !isConnecting, !out.isEmpty else { return }
        switch out.flush(to: fd, vectors: loop.vectors) {
        case .done:
            if clientWaits {
                clientWaits = false
                client?.upstreamDrained()
            }
        case .wouldBlock:
            writable = false
        case .failed:
            closedByPeer()
        }
    }

    /// Tells the client when the queued bytes have gone out.
    func notifyWhenDrained() {
        if out.isEmpty { return }
        clientWaits = true
    }

    func pauseReads() { readsPaused = true }

    /// Reads again, after the current event (never from inside the client's own handling).
    func resumeReads() {
        guard readsPaused else { return }
        readsPaused = false
        loop.later(self)
    }

    // MARK: Events

    override func ready(_ events: UInt32) {
        if isConnecting {
            guard events & (ringside_epollout | ringside_epollerr | ringside_epollhup) != 0 else { return }
            let code = LinuxSocket.pendingError(fd)
            guard code == 0 else {
                connectFailed(LinuxSocket.Failure(call: "connect to \(route)", code: code))
                return
            }
            isConnecting = false
            writable = true
        }
        if note(events) { flush() }
        pumpReads()
    }

    override func resumed() { pumpReads() }

    /// Gives up connecting (the deadline passed).
    func connectTimedOut() -> LinuxSocket.Failure {
        close()
        return LinuxSocket.Failure(call: "connect to \(route)", code: ETIMEDOUT)
    }

    private func connectFailed(_ failure: LinuxSocket.Failure) {
        let client = self.client
        self.client = nil
        close()
        client?.upstreamConnectFailed(failure)
    }

    private func pumpReads() {
        let open = pumpReads(
            while: { !self.readsPaused },
            into: { buffer in
                handle(buffer)
                // Written to the client as it comes; the client pauses these reads when it falls behind.
                client?.upstreamReadComplete()
            }
        )
        if !open { closedByPeer() }
    }

    private func handle(_ bytes: ByteBuffer) {
        var buffer = bytes
        guard !framer.isIdle else {
            // Bytes nobody asked for: the connection cannot be trusted with another request.
            close()
            return
        }
        while let client, let event = framer.next(&buffer) {
            switch event {
            case .interim(let head, let facts):
                client.upstreamHead(head, facts: facts, fields: framer.fields, body: nil)
            case .head(let head, let facts, let body):
                client.upstreamHead(head, facts: facts, fields: framer.fields, body: body)
            case .body(let body):
                client.upstreamBody(body)
            case .end(let reusable):
                self.client = nil
                client.upstreamEnd(reusable: reusable)
            case .failed(let reason):
                self.client = nil
                close()
                client.upstreamFailed(reason)
            }
        }
    }

    /// The connection closed or broke: the end of a body that runs until the close, otherwise a failure.
    private func closedByPeer() {
        let client = self.client
        self.client = nil
        let event = framer.closed()
        close()
        switch event {
        case .end: client?.upstreamEnd(reusable: false)
        case .failed(let reason): client?.upstreamFailed(reason)
        default: break
        }
    }

    /// Closes the connection (once).
    func close() {
        guard fd >= 0 else { return }
        if isPooled {
            isPooled = false
            loop.forgetIdle(self)
        }
        loop.deregister(self)
        Glibc.close(fd)
        fd = -1
        out.removeAll()
        framer.reset()
    }
}
#endif
