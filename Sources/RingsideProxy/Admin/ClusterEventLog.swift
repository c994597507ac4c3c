import Foundation
import NIOConcurrencyHelpers
import RingsideCluster
import RingsideMembership
import RingsideSharding
import ServiceLifecycle

/// The membership events a node has seen, numbered from 1, the most recent kept for replay: what `GET /v1/watch`
/// streams (a client that reconnects with `Last-Event-ID` gets what it missed) and the status page lists.
public final class ClusterEventLog: Sendable {
    /// One event as the watch API sends it.
    public struct Entry: Sendable, Equatable {
        /// Its number, from 1 up: the SSE `id:`.
        public var id: Int
        /// The SSE `event:` name: joined, left, died, state, metadata, suspect, alive.
        public var name: String
        /// The member it is about, as JSON (the fields of `/v1/peers`, and `from` for a state change).
        public var data: String
        /// When this node saw it.
        public var at: Date
    }

    private struct State {
        var entries: [Entry] = []
        var lastID = 0
        var subscribers: [Int: AsyncStream<Entry>.Continuation] = [:]
        var nextSubscriber = 0
    }

    /// How many events are kept for replay and for the status page.
    public let capacity: Int
    private let state = NIOLockedValueBox(State())

    /// An empty log that keeps the last `capacity` events.
    public init(capacity: Int = 256) { self.capacity = capacity }

    /// Records every event of `node` until the node's update stream ends or the task is cancelled.
    public func follow(_ node: ClusterNode) async {
        for await update in node.updates() {
            guard let event = update.event else { continue }
            append(event, local: node.configuration.nodeName)
        }
    }

    /// Records `event` and hands it to every subscriber.
    public func append(_ event: MembershipEvent, local: String, at date: Date = Date()) {
        let (name, member, from) = Self.describe(event)
        var fields = Self.memberFields(member, local: local)
        if let from { fields.append(("from", JSONWriter.quoted(from.description))) }
        state.withLockedValue { state in
            state.lastID += 1
            let entry = Entry(id: state.lastID, name: name, data: JSONWriter.object(fields), at: date)
            state.entries.append(entry)
            if state.entries.count > capacity { state.entries.removeFirst(state.entries.count - capacity) }
            for subscriber in state.subscribers.values { subscriber.yield(entry) }
        }
    }

    /// The events kept, oldest first.
    public var recent: [Entry] { state.withLockedValue { $0.entries } }

    /// The number of the last event (0 before any).
    public var lastID: Int { state.withLockedValue { $0.lastID } }

    /// A subscription from now on: the events after `lastSeen` that are still kept (nil when `lastSeen` is nil, is not
    /// a number this log gave, or is older than what it keeps: the client needs the whole view again), and a stream
    /// of every later event. The stream buffers at most `capacity` events for a slow reader.
    public func subscribe(after lastSeen: Int?) -> (missed: [Entry]?, current: Int, stream: AsyncStream<Entry>) {
        let (stream, continuation) = AsyncStream<Entry>.makeStream(bufferingPolicy: .bufferingNewest(capacity))
        let (missed, current, id) = state.withLockedValue { state -> ([Entry]?, Int, Int) in
            defer { state.nextSubscriber += 1 }
            state.subscribers[state.nextSubscriber] = continuation
            var missed: [Entry]?
            if let lastSeen, lastSeen <= state.lastID,
                lastSeen >= (state.entries.first.map { $0.id - 1 } ?? state.lastID)
            {
                missed = state.entries.filter { $0.id > lastSeen }
            }
            return (missed, state.lastID, state.nextSubscriber)
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLockedValue { $0.subscribers.removeValue(forKey: id) }
        }
        return (missed, current, stream)
    }

    /// A member as `/v1/peers` and the watch API show it: name, address, state, status, self, incarnation, metadata.
    static func memberFields(_ member: Member, local: String) -> [(String, String)] {
        [
            ("name", JSONWriter.quoted(member.name)),
            ("address", JSONWriter.quoted(member.address)),
            ("state", JSONWriter.quoted(member.state.description)),
            ("status", JSONWriter.quoted(member.status.description)),
            ("self", member.name == local ? "true" : "false"),
            ("incarnation", String(member.incarnation)),
            (
                "metadata",
                JSONWriter.object(
                    member.metadataValues.sorted { $0.key < $1.key }.map { ($0.key, JSONWriter.quoted($0.value)) }
                )
            ),
        ]
    }

    private static func describe(_ event: MembershipEvent) -> (String, Member, PeerState?) {
        switch event {
        case .joined(let member): ("joined", member, nil)
        case .left(let member): ("left", member, nil)
        case .died(let member): ("died", member, nil)
        case .stateChanged(let member, let from): ("state", member, from)
        case .metadataChanged(let member): ("metadata", member, nil)
        case .suspected(let member): ("suspect", member, nil)
        case .alive(let member): ("alive", member, nil)
        }
    }
}

/// Runs ``ClusterEventLog/follow(_:)`` as a service of a `ServiceGroup`, until the group shuts down.
public struct ClusterEventFollower: Service {
    let log: ClusterEventLog
    let node: ClusterNode

    /// Feeds `log` with `node`'s events.
    public init(log: ClusterEventLog, node: ClusterNode) {
        self.log = log
        self.node = node
    }

    public func run() async {
        await cancelWhenGracefulShutdown { await log.follow(node) }
        // The node's stream ends when the node stops, before the group shuts down: a service that returned then
        // would stop the group as a failure.
        try? await gracefulShutdown()
    }
}
