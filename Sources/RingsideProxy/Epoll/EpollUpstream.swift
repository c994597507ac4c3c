#if os(Linux)
import CEpoll
import Glibc
import NIOCore

/// The upstream side of a connection on a relay loop: a connection to the backend or to a peer's cluster port that
/// writes the bytes its ``EpollClient`` gives it and hands back what it reads. Between requests it waits in its loop's
/// pool, still watched, so that a close or bytes nobody asked for are noticed (it closes then).
final class EpollUpstream: EpollSocket {
    let route: ProxyRoute
    /// Connecting until the socket says otherwise.
    @exclusivity(unchecked) private(set) var isConnecting: Bool
    /// In its loop's pool of idle connections.
    @exclusivity(unchecked) var isPooled = false
    /// When it went into the pool last.
    @exclusivity(unchecked) var pooledAt = NIODeadline.uptimeNanoseconds(0)
    /// Clients this connection has served, the current one included.
    @exclusivity(unchecked) private(set) var uses = 0
    @exclusivity(unchecked) private var client: EpollClient?
    @exclusivity(unchecked) private var out = OutboundQueue()
    @exclusivity(unchecked) private var readsPaused = false
    /// The client waits for the queued bytes to go out before it reads more.
    @exclusivity(unchecked) private var clientWaits = false

    init(fd: CInt, route: ProxyRoute, connected: Bool, loop: EpollLoop) {
        self.route = route
        isConnecting = !connected
        super.init(fd: fd, writable: connected, loop: loop)
    }

    /// Serves `client` from now on.
    func bind(_ client: EpollClient) {
        self.client = client
        uses += 1
        isPooled = false
        readsPaused = false
    }

    /// Ends the client's part (it gave the connection up).
    func detach() {
        client = nil
        clientWaits = false
        readsPaused = false
    }

    /// Bytes queued and not written yet.
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
                let client = self.client
                self.client = nil
                close()
                client?.upstreamConnectFailed(LinuxSocket.Failure(call: "connect", code: code))
                return
            }
            isConnecting = false
            writable = true
            client?.upstreamConnected()
        }
        if note(events) { flush() }
        pumpReads()
    }

    override func resumed() { pumpReads() }

    private func pumpReads() {
        let open = pumpReads(
            while: { !self.readsPaused },
            into: { buffer in
                guard let client else {
                    // Bytes nobody asked for: the connection cannot be trusted with another request.
                    close()
                    return
                }
                client.upstreamBytes(buffer)
            }
        )
        if !open { closedByPeer() }
    }

    /// The connection closed or broke.
    private func closedByPeer() {
        let client = self.client
        self.client = nil
        close()
        client?.upstreamClosed()
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
    }
}
#endif
