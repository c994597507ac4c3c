#if os(Linux)
import Glibc
import RingsideCluster
import NIOCore
import NIOPosix
import Synchronization

/// A listener on relay loops: one listening socket that every ``EpollLoop`` watches (the kernel wakes one of them for
/// each connection), a loop per event-loop thread of the node's group. The app plane's, and the cluster port's (its
/// HTTP/2 connections, gossip, handed over to the cluster node).
final class EpollAppListener: AppListener {
    let localAddress: SocketAddress?
    private let listener: CInt
    private let threads: NIOThreadPool
    private let controls: [EpollLoopControl]
    private let closed = Atomic<Bool>(false)
    /// The HTTP/2 connections the loops handed over to NIO.
    private let handedOff: ConnectionTracker
    private let inFlight: InFlightRequests
    /// Where this listener's requests count: the app plane's HTTP/1.1 and HTTP/2, or the cluster port's.
    private let entries: [InFlightRequests.Entry]
    /// Whether a drain reaches the connections handed over (app clients' HTTP/2 does; gossip goes on).
    private let drainsHandedOff: Bool

    /// A loop made on the caller's thread and given to the thread that runs it, which alone touches it from then on.
    private struct Handover: @unchecked Sendable {
        let loop: EpollLoop
    }

    init(
        host: String,
        port: Int,
        loops: Int,
        settings: RelaySettings,
        backend: HostAndPort,
        handedOff: ConnectionTracker,
        handOff: @escaping @Sendable (CInt, ByteBuffer?) -> Void
    ) throws {
        self.handedOff = handedOff
        inFlight = settings.metrics.inFlight
        entries = settings.plane == .app ? [.appHTTP1, .appHTTP2] : [.cluster]
        drainsHandedOff = settings.plane == .app
        let address = try SocketAddress.makeAddressResolvingHost(host, port: port)
        listener = try LinuxSocket.listen(on: address, backlog: 1024)
        localAddress = LinuxSocket.localAddress(listener)
        var controls: [EpollLoopControl] = []
        var handovers: [Handover] = []
        do {
            for _ in 0..<max(1, loops) {
                let loop = try EpollLoop(settings: settings, listener: listener, backend: backend, handOff: handOff)
                controls.append(loop.control)
                handovers.append(Handover(loop: loop))
            }
        } catch {
            Glibc.close(listener)
            throw error
        }
        self.controls = controls
        threads = NIOThreadPool(numberOfThreads: handovers.count)
        threads.start()
        for handover in handovers {
            threads.submit { state in
                guard case .active = state else { return }
                handover.loop.run()
            }
        }
    }

    func quiesce() {
        for control in controls { control.quiesce() }
        if drainsHandedOff { handedOff.quiesce() }
    }

    /// Stops accepting, lets the requests under way finish until `deadline` (the loops end then at the latest), and
    /// ends the loops.
    func close(waitingUntil deadline: NIODeadline) async throws -> Int {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return 0 }
        // The loops end a moment after the deadline: what is still under way at it is counted first, then cut.
        for control in controls { control.stop(deadline: deadline + .seconds(1)) }
        if drainsHandedOff { handedOff.quiesce() }
        // The loops take the connections the kernel has completed first (a second at most); then a listening socket
        // shut down for reading stops listening: new connections are refused from now on, not left waiting in the
        // backlog of a listener nobody accepts on any more.
        let taken = NIODeadline.now() + .seconds(1)
        while !controls.allSatisfy(\.hasStoppedAccepting), NIODeadline.now() < taken {
            try? await Task.sleep(for: .milliseconds(1))
        }
        _ = shutdown(listener, CInt(SHUT_RD))
        await inFlight.waitUntilNone(of: entries, deadline: deadline)
        let cut = inFlight.count(of: entries)
        // A connection that has sent nothing yet gets the grace too: its client may be about to send its request.
        let end = AppServer.closingGrace(.now(), cut: cut)
        for control in controls { control.stop(deadline: end) }
        try await threads.shutdownGracefully()
        Glibc.close(listener)
        await handedOff.close(deadline: AppServer.closingGrace(deadline, cut: cut))
        return cut
    }
}
#endif
