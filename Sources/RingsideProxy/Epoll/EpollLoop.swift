#if os(Linux)
import CEpoll
import Glibc
import NIOCore
import RingsideCluster
import Synchronization

/// A socket a relay loop watches: a client connection or an upstream connection. It lives on its loop's thread only.
///
/// The stored properties of the loop's classes are `@exclusivity(unchecked)`: only the loop's thread touches them,
/// and the run-time checks (a thread-local set of accesses updated on each) took a tenth of the loop's user time.
/// Overlapping accesses are still refused where the compiler can see them.
class EpollSocket {
    /// The descriptor, -1 once closed or handed over.
    @exclusivity(unchecked) var fd: CInt
    /// Its place in the loop's table (the token epoll reports it by), -1 while not registered.
    @exclusivity(unchecked) var token = -1
    /// The loop outlives every socket it holds: it closes them all before it ends.
    unowned(unsafe) let loop: EpollLoop
    /// The socket may have bytes to read: set by epoll's edge, cleared by a short read or one that would block.
    @exclusivity(unchecked) var readable = false
    /// The peer closed its side or the connection broke. Epoll says so once, often in the same event as the last
    /// bytes, so from then on only a read that returns the end clears ``readable``: a short read would hide the close.
    @exclusivity(unchecked) var hungUp = false
    /// The socket has room to write: cleared by a write that could not finish, set by epoll's edge.
    @exclusivity(unchecked) var writable: Bool

    init(fd: CInt, writable: Bool = true, loop: EpollLoop) {
        self.fd = fd
        self.writable = writable
        self.loop = loop
    }

    /// What epoll reported for this socket.
    func ready(_ events: UInt32) {}

    /// Notes what epoll reported; returns whether it reported room to write.
    final func note(_ events: UInt32) -> Bool {
        if events & (ringside_epollrdhup | ringside_epollhup | ringside_epollerr) != 0 {
            readable = true
            hungUp = true
        } else if events & ringside_epollin != 0 {
            readable = true
        }
        guard events & ringside_epollout != 0 else { return false }
        writable = true
        return true
    }

    /// Reads while the socket may have bytes and `mayRead` holds, handing each read's bytes to `received`; after
    /// ``EpollLoop/readsPerTurn`` reads in a row it lets the other sockets have a turn first. Returns false when the
    /// peer closed or the read failed.
    final func pumpReads(while mayRead: () -> Bool, into received: (ByteBuffer) -> Void) -> Bool {
        var reads = 0
        while readable, fd >= 0, mayRead() {
            guard reads < EpollLoop.readsPerTurn else {
                loop.again(self)
                return true
            }
            reads += 1
            let (result, buffer) = loop.read(fd)
            switch result {
            case .bytes(let count):
                if count < EpollLoop.readSize && !hungUp { readable = false }
                received(buffer)
            case .wouldBlock:
                readable = false
            case .closed, .failed:
                return false
            }
        }
        return true
    }

    /// Called after the event that asked for it with ``EpollLoop/later(_:)``: reads that were held may go on.
    func resumed() {}
}

/// How a relay loop is told to drain or stop, from any thread.
final class EpollLoopControl: Sendable {
    private let stopping = Atomic<Bool>(false)
    private let quiescing = Atomic<Bool>(false)
    /// When the loop ends even if requests are still under way, in `NIODeadline` nanoseconds.
    private let stopDeadline = Atomic<Int64>(0)
    /// The loop's wake-up descriptor (an eventfd).
    private let wakeFD: CInt

    /// Owns `wakeFD` from now on: it is closed when nobody can ask the loop anything any more, so that a late request
    /// never writes into a descriptor number some other connection has been given since.
    init(wakeFD: CInt) { self.wakeFD = wakeFD }

    deinit { Glibc.close(wakeFD) }

    var stopRequested: Bool { stopping.load(ordering: .acquiring) }

    var quiesceRequested: Bool { quiescing.load(ordering: .acquiring) }

    /// Asks the loop to drain: every connection closes after its current response, idle ones now; connections
    /// accepted from now on are served one request each.
    func quiesce() {
        quiescing.store(true, ordering: .releasing)
        _ = eventfd_write(wakeFD, 1)
    }

    private let acceptDone = Atomic<Bool>(false)

    /// The loop has taken the connections waiting and accepts no more.
    func acceptStopped() { acceptDone.store(true, ordering: .releasing) }

    /// Whether the loop has stopped accepting.
    var hasStoppedAccepting: Bool { acceptDone.load(ordering: .acquiring) }

    /// When a stopping loop ends at the latest.
    var deadline: NIODeadline { .uptimeNanoseconds(UInt64(max(0, stopDeadline.load(ordering: .acquiring)))) }

    /// Asks the loop to stop accepting, finish what is under way (until `deadline`), and end; called again, it moves
    /// the deadline.
    func stop(deadline: NIODeadline) {
        stopDeadline.store(Int64(min(deadline.uptimeNanoseconds, UInt64(Int64.max))), ordering: .relaxed)
        stopping.store(true, ordering: .releasing)
        _ = eventfd_write(wakeFD, 1)
    }
}

/// One thread of the app plane's relay: an epoll set with the shared listener, the client connections it accepted
/// and its own upstream connections, pooled per route. Everything here runs on the loop's thread, so nothing here is
/// locked; the only way in from outside is ``EpollLoopControl``.
///
/// The sockets are registered once, edge-triggered, for both reading and writing: a socket remembers that it may have
/// bytes to read or room to write, and the loop makes no system call to change what it watches.
final class EpollLoop {
    let settings: RelaySettings
    private let epoll: CInt
    private let wakeFD: CInt
    private let listener: CInt
    /// How to stop the loop from another thread.
    let control: EpollLoopControl
    /// Gives a client connection's socket, and what was read of it, to the general pipeline.
    let handOff: @Sendable (CInt, ByteBuffer?) -> Void
    /// Where `.local` goes.
    private let backend: HostAndPort
    /// Addresses of routes, resolved when they are names, and until when each holds.
    @exclusivity(unchecked) private var addresses: [ProxyRoute: (address: SocketAddress, until: NIODeadline)] = [:]

    private static let listenerToken: UInt64 = 0
    private static let wakeToken: UInt64 = 1
    @exclusivity(unchecked) private var sockets: [EpollSocket?] = [nil, nil]
    @exclusivity(unchecked) private var freeTokens: [Int] = []
    /// Tokens freed while handling a batch of events: reused only after it, so that an event still in the batch
    /// never reaches a newer socket.
    @exclusivity(unchecked) private var releasedTokens: [Int] = []
    @exclusivity(unchecked) private var clients: [ObjectIdentifier: EpollClient] = [:]
    @exclusivity(unchecked) private var idle: [ProxyRoute: [EpollUpstream]] = [:]
    /// Sockets to call ``EpollSocket/resumed()`` on once the current event is handled.
    @exclusivity(unchecked) private var deferred: [EpollSocket] = []
    /// Sockets that stopped reading to let the others have a turn: resumed after the next wait, which does not block.
    @exclusivity(unchecked) private var turns: [EpollSocket] = []

    /// Read space: one buffer reused while nothing else holds its bytes.
    @exclusivity(unchecked) private var readBuffer: ByteBuffer
    static let readSize = 16 << 10
    /// Reads a socket makes in a row before the others have their turn.
    static let readsPerTurn = 8
    /// Scratch for gathering writes.
    let vectors: UnsafeMutableBufferPointer<iovec>
    /// The time, read once an iteration.
    @exclusivity(unchecked) private(set) var now = NIODeadline.now()
    @exclusivity(unchecked) private var stopping = false
    @exclusivity(unchecked) private var quiescing = false
    /// Accepting waits for descriptors to be freed.
    @exclusivity(unchecked) private var acceptPaused = false

    init(
        settings: RelaySettings,
        listener: CInt,
        backend: HostAndPort,
        handOff: @escaping @Sendable (CInt, ByteBuffer?) -> Void
    ) throws {
        self.settings = settings
        self.listener = listener
        self.backend = backend
        self.handOff = handOff
        epoll = epoll_create1(CInt(EPOLL_CLOEXEC))
        guard epoll >= 0 else { throw LinuxSocket.Failure(call: "epoll_create1", code: errno) }
        wakeFD = eventfd(0, CInt(EFD_NONBLOCK) | CInt(EFD_CLOEXEC))
        guard wakeFD >= 0 else {
            Glibc.close(epoll)
            throw LinuxSocket.Failure(call: "eventfd", code: errno)
        }
        control = EpollLoopControl(wakeFD: wakeFD)
        readBuffer = ByteBufferAllocator().buffer(capacity: Self.readSize)
        vectors = .allocate(capacity: OutboundQueue.gather)
        watch(listener, token: Self.listenerToken, events: ringside_epollin | ringside_epollexclusive)
        watch(wakeFD, token: Self.wakeToken, events: ringside_epollin)
    }

    deinit {
        vectors.deallocate()
        // The wake-up descriptor is the control's to close.
        Glibc.close(epoll)
    }

    /// Runs until stopped and every client connection is done (or the longest a request may take has passed).
    func run() {
        let capacity = 256
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: capacity)
        defer { events.deallocate() }
        let interval = settings.checkInterval
        var nextCheck = NIODeadline.now() + interval
        while true {
            let wait = max(0, (nextCheck - now).nanoseconds / 1_000_000 + 1)
            let count = epoll_wait(epoll, events, CInt(capacity), turns.isEmpty ? CInt(min(wait, 1_000)) : 0)
            now = .now()
            if !turns.isEmpty {
                deferred.append(contentsOf: turns)
                turns.removeAll(keepingCapacity: true)
                runDeferred()
            }
            for index in 0..<max(0, Int(count)) {
                let event = events[index]
                switch event.data.u64 {
                case Self.listenerToken: acceptAll()
                case Self.wakeToken:
                    var value: eventfd_t = 0
                    _ = eventfd_read(wakeFD, &value)
                default: sockets[Int(event.data.u64)]?.ready(event.events)
                }
                runDeferred()
            }
            if !releasedTokens.isEmpty {
                freeTokens.append(contentsOf: releasedTokens)
                releasedTokens.removeAll(keepingCapacity: true)
            }
            if now >= nextCheck {
                nextCheck = now + interval
                if acceptPaused, !stopping {
                    acceptPaused = false
                    watch(listener, token: Self.listenerToken, events: ringside_epollin | ringside_epollexclusive)
                }
                for client in Array(clients.values) {
                    client.checkDeadlines(now)
                    runDeferred()
                }
                closeIdleUpstreams()
            }
            if !quiescing, control.quiesceRequested {
                quiescing = true
                for client in Array(clients.values) { client.drain() }
                runDeferred()
            }
            if !stopping, control.stopRequested {
                beginStopping()
            }
            if stopping {
                if clients.isEmpty { break }
                // Read each time: the listener brings it forward once it has counted what is still under way.
                if now >= control.deadline { break }
            }
        }
        for client in Array(clients.values) { client.close() }
        // Whatever is still registered is an upstream connection: pooled, or kept by nobody any more.
        for case let upstream as EpollUpstream in sockets { upstream.close() }
        idle = [:]
    }

    /// Calls `socket`'s ``EpollSocket/resumed()`` once the current event is handled: a socket that lets another one
    /// read again does it this way, never from inside its own handling.
    func later(_ socket: EpollSocket) { deferred.append(socket) }

    /// Calls `socket`'s ``EpollSocket/resumed()`` after the next wait, once the others have had their turn.
    func again(_ socket: EpollSocket) { turns.append(socket) }

    private func runDeferred() {
        var index = 0
        while index < deferred.count {
            let socket = deferred[index]
            index += 1
            if socket.fd >= 0 { socket.resumed() }
        }
        deferred.removeAll(keepingCapacity: true)
    }

    // MARK: Client connections

    private func acceptAll() {
        while !stopping {
            switch LinuxSocket.accept(listener) {
            case .connection(let fd, let peer):
                let client = EpollClient(fd: fd, peer: peer, local: LinuxSocket.localAddress(fd), loop: self)
                clients[ObjectIdentifier(client)] = client
                register(client)
                if quiescing { client.drain() }
            case .none:
                return
            case .exhausted:
                // Out of descriptors: the listener would stay ready and wake the loop at once, again and again. It is
                // watched again at the next deadline check, when connections may have closed.
                _ = epoll_ctl(epoll, EPOLL_CTL_DEL, listener, nil)
                acceptPaused = true
                return
            }
        }
    }

    /// Stops accepting; connections close once their current exchange is over. Connections the kernel completed
    /// already are taken first, and what every connection has sent is read before it is judged unused: a request whose
    /// bytes are there is served, not reset with the close.
    private func beginStopping() {
        acceptAll()
        stopping = true
        if !acceptPaused { _ = epoll_ctl(epoll, EPOLL_CTL_DEL, listener, nil) }
        control.acceptStopped()
        for client in Array(clients.values) { client.drain(closingUnused: true) }
    }

    /// A client connection is over: closed, or handed over to the general pipeline.
    func clientEnded(_ client: EpollClient) {
        clients[ObjectIdentifier(client)] = nil
    }

    // MARK: Upstream connections

    /// Where `route` is: a numeric address as it is, a name resolved again once ``resolvedAddressLifetime`` has
    /// passed (a name lookup blocks the loop for its duration, once a name and lifetime).
    func address(of route: ProxyRoute) throws -> SocketAddress {
        if let known = addresses[route], now < known.until { return known.address }
        let target: HostAndPort
        switch route {
        case .local:
            target = backend
        case .peer(_, let address):
            guard let parsed = HostAndPort(address) else {
                throw LinuxSocket.Failure(call: "parse the address \(address)", code: EINVAL)
            }
            target = parsed
        }
        let address: SocketAddress
        let lifetime: TimeAmount
        if let numeric = try? SocketAddress(ipAddress: target.host, port: target.port) {
            (address, lifetime) = (numeric, .hours(24))
        } else {
            address = try SocketAddress.makeAddressResolvingHost(target.host, port: target.port)
            lifetime = Self.resolvedAddressLifetime
        }
        if addresses.count > 4096 { addresses = [:] }
        addresses[route] = (address, now + lifetime)
        return address
    }

    /// How long a name's address is used before it is looked up again.
    static let resolvedAddressLifetime = TimeAmount.seconds(30)

    /// An idle connection to `route`, or a new one on its way.
    func upstream(for route: ProxyRoute, at address: SocketAddress, fresh: Bool = false) throws -> EpollUpstream {
        while !fresh, let upstream = idle[route]?.popLast() {
            if upstream.fd >= 0 { return upstream }
        }
        let (fd, connected) = try LinuxSocket.connect(to: address)
        let upstream = EpollUpstream(fd: fd, route: route, connected: connected, loop: self)
        register(upstream)
        return upstream
    }

    /// Takes back an upstream connection after an exchange: kept for the next request to its route when it is
    /// `reusable` and there is room, closed otherwise.
    func release(_ upstream: EpollUpstream, reusable: Bool) {
        guard reusable, !stopping, upstream.fd >= 0,
            idle[upstream.route, default: []].count < settings.configuration.maxIdleConnectionsPerUpstream
        else {
            upstream.close()
            return
        }
        upstream.isPooled = true
        upstream.pooledAt = now
        idle[upstream.route, default: []].append(upstream)
    }

    /// Closes the pooled connections that have been idle for ``ProxyConfiguration/upstreamIdleTimeout`` (the oldest
    /// are first in each pool).
    private func closeIdleUpstreams() {
        let limit = TimeAmount(settings.configuration.upstreamIdleTimeout)
        for route in Array(idle.keys) {
            while let oldest = idle[route]?.first, now - oldest.pooledAt >= limit { oldest.close() }
        }
    }

    /// An idle upstream connection closed, or sent what nobody asked for.
    func forgetIdle(_ upstream: EpollUpstream) {
        idle[upstream.route]?.removeAll { $0 === upstream }
    }

    // MARK: Buffers

    /// Reads from `fd` into the loop's read buffer: the bytes come back in a buffer that shares its storage, which
    /// the next read reuses when nothing holds on to it, and replaces when something does.
    func read(_ fd: CInt) -> (LinuxSocket.IOResult, ByteBuffer) {
        readBuffer.clear()
        let result = LinuxSocket.read(fd, into: &readBuffer)
        return (result, readBuffer)
    }

    // MARK: Registration

    func register(_ socket: EpollSocket) {
        let token = freeTokens.popLast() ?? sockets.count
        if token == sockets.count { sockets.append(socket) } else { sockets[token] = socket }
        socket.token = token
        watch(
            socket.fd,
            token: UInt64(token),
            events: ringside_epollin | ringside_epollout | ringside_epollrdhup | ringside_epollet
        )
    }

    /// Stops watching `socket` (its descriptor stays open).
    func deregister(_ socket: EpollSocket) {
        guard socket.token >= 0 else { return }
        _ = epoll_ctl(epoll, EPOLL_CTL_DEL, socket.fd, nil)
        sockets[socket.token] = nil
        releasedTokens.append(socket.token)
        socket.token = -1
    }

    private func watch(_ fd: CInt, token: UInt64, events: UInt32) {
        var event = epoll_event()
        event.events = events
        event.data.u64 = token
        _ = epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event)
    }
}
#endif
