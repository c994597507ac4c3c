#if os(Linux)
import CEpoll
import Glibc
import NIOCore

/// A client connection on a relay loop: the app plane's hot path for HTTP/1.1. The engine (``HTTP1Connection``)
/// decides everything; this driver moves bytes between the client's socket, the engine and one ``EpollUpstream``,
/// performs the engine's actions, and holds reads while the other side cannot take more.
///
/// An HTTP/2 client (prior knowledge) is handed over, with the bytes read so far, to NIO's HTTP/2 server.
final class EpollClient: EpollSocket {
    @exclusivity(unchecked) private var engine: HTTP1Connection
    @exclusivity(unchecked) private var out = OutboundQueue()
    /// The upstream connection the engine holds, if any.
    @exclusivity(unchecked) private var upstream: EpollUpstream?
    /// Reads wait for the upstream to take the bytes queued for it.
    @exclusivity(unchecked) private var holdForUpstream = false
    /// The upstream's reads wait for the client to take the bytes queued for it.
    @exclusivity(unchecked) private var upstreamHeld = false
    /// Closing once what is queued is written.
    @exclusivity(unchecked) private var closing = false
    /// A resumption of reads is asked for already.
    @exclusivity(unchecked) private var resumeAsked = false
    /// Handing over to the HTTP/2 server once what is queued is written, with these bytes.
    @exclusivity(unchecked) private var handOff: ByteBuffer??

    /// How many bytes may wait for the client before the upstream stops being read, and for the upstream before the
    /// client stops being read.
    static let highWater = 256 << 10

    init(fd: CInt, peer: SocketAddress?, local: SocketAddress?, loop: EpollLoop) {
        engine = HTTP1Connection(
            settings: loop.settings,
            client: peer,
            local: local,
            sniffsHTTP2: true,
            allocator: ByteBufferAllocator(),
            now: loop.now
        )
        super.init(fd: fd, loop: loop)
    }

    // MARK: Client socket

    override func ready(_ events: UInt32) {
        if note(events) { flushOut() }
        // A client that closed its side while its pipelined requests wait has gone: they are not sent.
        if hungUp, !engine.readsClient, !closing {
            clientGone()
            return
        }
        pumpReads()
    }

    override func resumed() {
        resumeAsked = false
        pumpReads()
    }

    private func pumpReads() {
        let open = pumpReads(
            while: { self.engine.readsClient && !self.holdForUpstream && !self.closing },
            into: { buffer in
                engine.clientBytes(buffer, now: loop.now)
                perform()
            }
        )
        if !open { clientGone() }
    }

    /// The client closed or the connection broke.
    private func clientGone() {
        guard fd >= 0 else { return }
        // Nothing more can be written to it.
        closing = true
        out.removeAll()
        engine.clientClosed(now: loop.now)
        perform()
        close()
    }

    // MARK: The engine's actions

    /// Performs what the engine asked for, then writes what is queued each way.
    private func perform() {
        while let action = engine.nextAction() {
            switch action {
            case .writeClient(let bytes):
                out.append(bytes)
            case .connect(let route, let fresh):
                connect(route, fresh: fresh)
            case .writeUpstream(let bytes):
                upstream?.write(bytes)
            case .releaseUpstream(let reusable):
                releaseUpstream(reusable: reusable)
            case .closeClient:
                closing = true
            case .handOffHTTP2(let bytes):
                handOff = .some(bytes)
            }
        }
        if let upstream, upstream.queuedBytes > 0 {
            upstream.flush()
            if upstream.queuedBytes > Self.highWater, !holdForUpstream {
                holdForUpstream = true
                upstream.notifyWhenDrained()
            }
        }
        flushOut()
        // Reads held while a request waited its turn go on once the engine takes bytes again: the socket has them
        // already, and epoll, edge-triggered, will not say so twice.
        if readable, !resumeAsked, engine.readsClient, !holdForUpstream, !closing {
            resumeAsked = true
            loop.later(self)
        }
    }

    private func connect(_ route: ProxyRoute, fresh: Bool) {
        do {
            let address = try loop.address(of: route)
            let upstream = try loop.upstream(for: route, at: address, fresh: fresh)
            self.upstream = upstream
            upstream.bind(self)
            if !upstream.isConnecting { engine.upstreamConnected(reused: upstream.uses > 1, now: loop.now) }
        } catch {
            engine.upstreamConnectFailed(error, now: loop.now)
        }
    }

    private func releaseUpstream(reusable: Bool) {
        guard let upstream else { return }
        self.upstream = nil
        upstream.detach()
        loop.release(upstream, reusable: reusable)
        holdForUpstream = false
        upstreamHeld = false
    }

    // MARK: Upstream events (from EpollUpstream)

    func upstreamConnected() {
        engine.upstreamConnected(reused: false, now: loop.now)
        perform()
    }

    func upstreamConnectFailed(_ error: any Error) {
        upstream = nil
        engine.upstreamConnectFailed(error, now: loop.now)
        perform()
    }

    func upstreamBytes(_ bytes: ByteBuffer) {
        engine.upstreamBytes(bytes, now: loop.now)
        perform()
    }

    func upstreamClosed() {
        upstream = nil
        holdForUpstream = false
        engine.upstreamClosed(now: loop.now)
        perform()
    }

    /// The upstream took the bytes queued for it.
    func upstreamDrained() {
        guard holdForUpstream else { return }
        holdForUpstream = false
        loop.later(self)
    }

    // MARK: Writing to the client

    /// Writes what is queued for the client; once it is all out, closes or hands over when that is pending.
    private func flushOut() {
        guard fd >= 0, writable else { return }
        switch out.flush(to: fd, vectors: loop.vectors) {
        case .done:
            if let bytes = handOff {
                completeHandOff(bytes)
            } else if closing {
                close()
            } else if upstreamHeld {
                upstreamHeld = false
                upstream?.resumeReads()
            }
        case .wouldBlock:
            writable = false
            if out.bytes > Self.highWater, !upstreamHeld, let upstream {
                upstreamHeld = true
                upstream.pauseReads()
            }
        case .failed:
            clientGone()
        }
    }

    // MARK: Time and drain

    /// Checks the connection's deadlines, as its loop does every check interval.
    func checkDeadlines(_ now: NIODeadline) {
        guard fd >= 0, !closing else { return }
        engine.tick(now: now)
        perform()
    }

    /// The loop stops: an idle connection closes now, a busy one after its response.
    func drain(closingUnused: Bool = false) {
        guard fd >= 0, !closing else { return }
        // What came already is a request that may not be dropped: read it before judging the connection unused.
        if closingUnused { pumpReads() }
        guard fd >= 0, !closing else { return }
        engine.drain(now: loop.now, closingUnused: closingUnused)
        perform()
    }

    // MARK: Closing

    private func completeHandOff(_ bytes: ByteBuffer?) {
        let descriptor = fd
        loop.deregister(self)
        fd = -1
        loop.clientEnded(self)
        loop.handOff(descriptor, bytes)
    }

    /// Closes the connection and gives up whatever is under way.
    func close() {
        guard fd >= 0 else { return }
        releaseUpstream(reusable: false)
        loop.deregister(self)
        Glibc.close(fd)
        fd = -1
        closing = true
        out.removeAll()
        loop.clientEnded(self)
    }
}
#endif
