import NIOConcurrencyHelpers
import NIOCore

/// The NIO connections of a listener, so that a drain can reach every one of them and a close can end them.
///
/// A drain sends each connection NIO's `ChannelShouldQuiesceEvent`: the engine's NIO driver (``HTTP1Relay``) then
/// closes after the response under way (or at once when idle), and an HTTP/2 connection's
/// `NIOHTTP2ServerConnectionManagementHandler` sends GOAWAY and closes once its streams are done. A connection whose
/// protocol is set up after the drain began asks ``isQuiescing`` and drains from the start.
final class ConnectionTracker: Sendable {
    private struct State {
        var channels: [ObjectIdentifier: any Channel] = [:]
        var quiescing = false
    }

    private let state = NIOLockedValueBox(State())

    init() {}

    /// Whether a drain has begun.
    var isQuiescing: Bool { state.withLockedValue { $0.quiescing } }

    /// Tracks `channel` until it closes.
    func track(_ channel: any Channel) {
        let id = ObjectIdentifier(channel)
        state.withLockedValue { $0.channels[id] = channel }
        channel.closeFuture.whenComplete { _ in
            _ = self.state.withLockedValue { $0.channels.removeValue(forKey: id) }
        }
    }

    /// Tells every connection to finish what it is doing and close; those set up from now on drain from the start.
    func quiesce() {
        let channels = state.withLockedValue { state in
            state.quiescing = true
            return Array(state.channels.values)
        }
        for channel in channels {
            channel.eventLoop.execute { channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent()) }
        }
    }

    /// Drains `channel` from the start if a drain has begun; called once its protocol's handlers are in place.
    func quiesceIfDraining(_ channel: any Channel) {
        guard isQuiescing else { return }
        channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
    }

    /// Closes the connections as a closing listener does: each finishes the request under way (an HTTP/2 connection
    /// its streams, after its GOAWAY) and closes itself, until `deadline`, when the rest are closed.
    func close(deadline: NIODeadline) async {
        let channels = state.withLockedValue { state in
            state.quiescing = true
            return Array(state.channels.values)
        }
        for channel in channels {
            channel.eventLoop.execute {
                channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
                channel.pipeline.fireUserInboundEventTriggered(ListenerClosingEvent())
            }
        }
        while count > 0, NIODeadline.now() < deadline { try? await Task.sleep(for: .milliseconds(5)) }
        await closeAll()
    }

    /// Closes every connection still open.
    func closeAll() async {
        let channels = state.withLockedValue { Array($0.channels.values) }
        for channel in channels { try? await channel.close() }
    }

    /// How many connections are open.
    var count: Int { state.withLockedValue { $0.channels.count } }
}

/// Sent through the pipeline of each connection of a listener that is closing: a connection kept alive after a request,
/// or with part of a head, closes now; one with a request under way after its response; one that has sent nothing is
/// left for the listener's last moment (``ConnectionTracker/close(deadline:)``), and served if its request comes.
/// (NIO's `ChannelShouldQuiesceEvent`, a drain, leaves a connection not used yet open for its first request.)
struct ListenerClosingEvent: Sendable {}
