import Atomics
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import RingsideMembership
import RingsideSharding
import ServiceLifecycle

/// One member of a Ringside cluster, in-process: membership by gossip, peer states, and key lookups.
///
/// ```swift
/// var configuration = ClusterConfiguration(nodeName: "orders-1")
/// configuration.seeds = ["dnssrv+_gossip._tcp.orders"]
/// let node = ClusterNode(configuration: configuration)
/// // Run it in a ServiceGroup (it leaves the cluster gracefully on shutdown), or in a task of your own:
/// try await ServiceGroup(services: [node], logger: logger).run()
/// // Anywhere else:
/// let owner = try node.lookup("customer-42").first
/// for await update in node.updates() { … }
/// ```
///
/// The protocol itself is ``SWIMInstance``, a pure state machine; this class is its shell. It keeps the instance
/// behind a lock, calls it when envelopes arrive and when its deadlines pass, and carries out what it asks after
/// unlocking: sends over ``GossipClient``, events to observers. The view (members and the sharder built from them)
/// is published through an atomic reference, so a lookup takes no lock; it is rebuilt before observers hear of a
/// change.
public final class ClusterNode: Service, Sendable {
    /// The configuration it was created with.
    public let configuration: ClusterConfiguration

    let logger: Logger
    let group: any EventLoopGroup
    let origin = ContinuousClock.now
    let core = NIOLockedValueBox(Core())
    let lifecycle = NIOLockedValueBox(Lifecycle())
    let view: ManagedAtomic<View>
    let publishing = NIOLock()
    let client: GossipClient
    let metrics = ClusterMetrics()
    /// Holds back repeated warnings about what other hosts send.
    let logLimiter = LogRateLimiter()
    let traffic = GossipTraffic()
    let resolver: SeedResolver
    let forwardedConnections: ClusterConnectionInitializer?
    /// Called once the node has left, before its listener closes (the data plane finishes its requests).
    let beforeClosingListener: (@Sendable () async -> Void)?
    /// Whether a graceful shutdown of the task that runs the node stops it (a data plane that drains first says no).
    let stopsOnGracefulShutdown: Bool
    /// Binds the cluster port in a way of its own; nil: a NIO listener of the node's own.
    let bindListener: ClusterListenerBinder?
    /// Wakes the protocol driver when an input brings the next deadline forward, or to stop.
    let protocolAlarm: Alarm
    /// Wakes the seed rejoiner to stop.
    let rejoinAlarm: Alarm

    /// What the lock protects: the protocol, and who listens for updates.
    struct Core {
        var instance: SWIMInstance?
        var counters = MembershipCounters()
        var subscribers: [Int: AsyncStream<ClusterUpdate>.Continuation] = [:]
        var nextSubscriber = 0
    }

    /// Where the node is in its life: listener, address, stop requests and who waits for what.
    struct Lifecycle {
        var advertisedAddress: String?
        var stopRequested = false
        /// Stopping as a crash would: without leaving.
        var halting = false
        var hasRun = false
        var runningWaiters: [CheckedContinuation<String, any Error>] = []
        var stoppedWaiters: [CheckedContinuation<Void, Never>] = []
        var stopped = false
        /// Another member has been seen alive: the seeds (or someone) answered.
        var joined = false
    }

    /// A node that will run with `configuration` on `group`'s event loops.
    /// The data plane's forwarded requests share the cluster port, on connections of their own: `forwardedConnections`,
    /// when given, sets up an HTTP/1.1 connection (told from gossip's HTTP/2 by its first bytes);
    /// `beforeClosingListener` runs once the node has left and before the port closes, so that those requests can
    /// finish. With `stopsOnGracefulShutdown` false, a graceful shutdown of the task that runs the node does not stop it:
    /// its owner calls ``stop()`` when its own shutdown (a drain) is over. `bindListener`, when given, binds the port
    /// instead of the node (the data plane's relay loops do, handing the gossip connections over).
    public convenience init(
        configuration: ClusterConfiguration,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "ringside.cluster"),
        forwardedConnections: ClusterConnectionInitializer? = nil,
        beforeClosingListener: (@Sendable () async -> Void)? = nil,
        stopsOnGracefulShutdown: Bool = true,
        bindListener: ClusterListenerBinder? = nil
    ) {
        self.init(
            configuration: configuration,
            group: group,
            logger: logger,
            resolver: SeedResolver(),
            forwardedConnections: forwardedConnections,
            beforeClosingListener: beforeClosingListener,
            stopsOnGracefulShutdown: stopsOnGracefulShutdown,
            bindListener: bindListener
        )
    }

    init(
        configuration: ClusterConfiguration,
        group: any EventLoopGroup,
        logger: Logger,
        resolver: SeedResolver,
        forwardedConnections: ClusterConnectionInitializer? = nil,
        beforeClosingListener: (@Sendable () async -> Void)? = nil,
        stopsOnGracefulShutdown: Bool = true,
        bindListener: ClusterListenerBinder? = nil
    ) {
        self.bindListener = bindListener
        self.forwardedConnections = forwardedConnections
        self.beforeClosingListener = beforeClosingListener
        self.stopsOnGracefulShutdown = stopsOnGracefulShutdown
        self.configuration = configuration
        self.group = group
        var logger = logger
        logger[metadataKey: "ringside.node"] = "\(configuration.nodeName)"
        self.logger = logger
        self.client = GossipClient(
            group: group,
            connectTimeout: configuration.timings.probeTimeout,
            tls: configuration.tls,
            logger: logger
        )
        self.resolver = resolver
        self.view = ManagedAtomic(View(members: [], sharder: EmptySharder()))
        self.protocolAlarm = Alarm(loop: group.next())
        self.rejoinAlarm = Alarm(loop: group.next())
    }

    // MARK: Views (lock-free)

    /// The members in the current view, this node included: alive and suspect ones, and those that died or left
    /// recently.
    public var members: [Member] { view.load(ordering: .acquiring).members }

    /// The peers that take part in the view (alive or suspect), as the sharder sees them.
    public var peers: [Peer] { view.load(ordering: .acquiring).sharder.peers }

    /// The sharder of the current view.
    public var sharder: any Sharder { view.load(ordering: .acquiring).sharder }

    /// Gossip traffic since the node was created.
    public var statistics: GossipStatistics {
        GossipStatistics(
            bytesIn: traffic.bytesIn.load(ordering: .relaxed),
            bytesOut: traffic.bytesOut.load(ordering: .relaxed),
            framesDropped: traffic.framesDropped.load(ordering: .relaxed)
        )
    }

    /// Whether this node has ever seen another member alive: it joined a cluster (its seeds, or a node that joined
    /// it, answered). A node with seeds that never answered runs alone and owns every key: a split brain.
    public var hasJoined: Bool { lifecycle.withLockedValue { $0.joined } }

    /// This node's peer state.
    public var state: PeerState {
        core.withLockedValue { $0.instance?.localMember.state } ?? configuration.initialState
    }

    /// The owners of `key` in the current view.
    public func lookup(
        _ key: String,
        replicas: Int = 1,
        op: ShardingOperation = .readWrite
    ) throws(ShardingError) -> [Peer] {
        try view.load(ordering: .acquiring).sharder.lookup(key, replicas: replicas, op: op)
    }

    /// Updates from now on: first the current view, then one per membership event, each with the view that
    /// includes it.
    public func updates() -> AsyncStream<ClusterUpdate> {
        let (stream, continuation) = AsyncStream<ClusterUpdate>.makeStream(bufferingPolicy: .bufferingNewest(4096))
        let current = view.load(ordering: .acquiring)
        continuation.yield(ClusterUpdate(event: nil, members: current.members, sharder: current.sharder))
        let id = core.withLockedValue { core in
            defer { core.nextSubscriber += 1 }
            core.subscribers[core.nextSubscriber] = continuation
            return core.nextSubscriber
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.core.withLockedValue { $0.subscribers.removeValue(forKey: id) }
        }
        return stream
    }

    // MARK: Changing this node

    /// Moves this node to `state` (forward only: viewer → participant → terminating → gone) and waits until the
    /// change has gone out to as many members as one gossip round reaches, or `disseminationTimeout` has passed.
    public func changeState(to state: PeerState) async throws {
        let directives = try withInstance { (instance, now) throws(ShardingError) in
            try instance.changeState(to: state, now: now)
        }
        perform(directives)
        try await waitForDissemination()
    }

    /// Sets a metadata entry of this node and announces it. Throws a ``MetadataRefusal`` when the entry breaks
    /// ``MetadataLimits``, a ``ClusterError`` when the node is not running.
    public func setMetadata(_ key: String, to value: String) throws {
        let directives = try withInstance { instance, now throws(MetadataRefusal) in
            try instance.setMetadata(key, to: value, now: now)
        }
        perform(directives)
    }

    /// Deletes a metadata entry of this node and announces it.
    public func deleteMetadata(_ key: String) throws {
        perform(try withInstance { instance, now in instance.deleteMetadata(key, now: now) })
    }

    /// Reports that `name` could not be reached by other means (a forwarded request's connection failed): the failure
    /// detector probes it next, ahead of its round-robin.
    public func reportUnreachable(_ name: String) {
        if let directives = try? withInstance({ instance, _ in
            instance.probeNext(name)
            return []
        }) {
            perform(directives)
        }
    }

    // MARK: Internals

    /// The protocol's notion of now: time since this node was created, from the monotonic clock.
    func now() -> GossipInstant {
        let elapsed = ContinuousClock.now - origin
        let (seconds, attoseconds) = elapsed.components
        return GossipInstant(nanoseconds: seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }

    /// Runs `body` on the protocol instance under the lock, brings the metrics up to date with what it did, and wakes
    /// the protocol driver if it brought the next deadline forward.
    func withInstance<Failure: Error>(
        _ body: (inout SWIMInstance, GossipInstant) throws(Failure) -> [MembershipDirective]
    ) throws -> [MembershipDirective] {
        let now = now()
        let (directives, next) = try core.withLockedValue { core throws -> ([MembershipDirective], GossipInstant) in
            guard var instance = core.instance else {
                throw ClusterError(code: .notRunning, message: "the cluster node is not running: call run() first")
            }
            defer { core.instance = instance }
            let directives = try body(&instance, now)
            metrics.record(instance, since: core.counters)
            core.counters = instance.counters
            return (directives, instance.nextDeadline)
        }
        protocolAlarm.bringForward(to: .now() + TimeAmount(next - now))
        return directives
    }

    func waitForDissemination() async throws {
        let deadline = ContinuousClock.now + configuration.disseminationTimeout
        while core.withLockedValue({ $0.instance?.hasDisseminatedLocalUpdate == false }) {
            guard ContinuousClock.now < deadline else {
                throw ClusterError(
                    code: .disseminationTimedOut,
                    message:
                        "the change did not reach other members within \(configuration.disseminationTimeout); it will keep spreading"
                )
            }
            try await Task.sleep(for: .milliseconds(5))
        }
    }
}

/// A membership event with the view it produced.
public struct ClusterUpdate: Sendable {
    /// What happened; nil for the first update of a stream, which carries the view at subscription.
    public var event: MembershipEvent?
    /// Every member in the view.
    public var members: [Member]
    /// The sharder built from the view.
    public var sharder: any Sharder
}

/// An immutable view, swapped whole.
final class View: AtomicReference, Sendable {
    let members: [Member]
    let sharder: any Sharder

    init(members: [Member], sharder: any Sharder) {
        self.members = members
        self.sharder = sharder
    }
}

/// The sharder of a node that has no view yet: every lookup finds no owner.
struct EmptySharder: Sharder {
    var peers: [Peer] { [] }
    var checksum: UInt64 { 0 }
    func eligibleCount(for op: ShardingOperation) -> Int { 0 }

    func owner(forKeyHash keyHash: UInt64, op: ShardingOperation) throws(ShardingError) -> Peer {
        throw ShardingError(code: .notEnoughPeers, message: "no view yet: the cluster node has not started")
    }

    func owners(forKeyHash keyHash: UInt64, replicas: Int, op: ShardingOperation) throws(ShardingError) -> [Peer] {
        throw ShardingError(code: .notEnoughPeers, message: "no view yet: the cluster node has not started")
    }
}

/// Gossip traffic counters of one node.
public struct GossipStatistics: Hashable, Sendable {
    /// Bytes of gossip frames received.
    public var bytesIn: Int
    /// Bytes of gossip frames sent.
    public var bytesOut: Int
    /// Frames received that did not decode, dropped.
    public var framesDropped: Int
}

/// The counters behind ``GossipStatistics``, readable without a lock.
final class GossipTraffic: Sendable {
    let bytesIn = ManagedAtomic(0)
    let bytesOut = ManagedAtomic(0)
    let framesDropped = ManagedAtomic(0)
}
