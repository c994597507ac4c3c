import RingsideSharding

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The membership protocol of one node as a pure state machine: SWIM failure detection with Lifeguard's refinements,
/// infection-style dissemination piggybacked on probes and gossip rounds, and periodic full-state exchange.
///
/// It performs no I/O and reads no clock. Its driver (the NIO shell, or the simulator) calls ``tick(now:)`` no later
/// than ``nextDeadline``, hands it every envelope that arrives with ``receive(_:now:)``, reports failed sends with
/// ``sendFailed(to:messages:refused:now:)``, and performs the ``MembershipDirective``s each call returns, in order.
///
/// - Probing: one member per probe period, in a shuffled round-robin. No ack within the probe timeout: ask
///   `indirectChecks` others to probe it. No ack by the end of the period: suspect it.
/// - Lifeguard: the local health multiplier (``awareness``) stretches this node's probe period and timeout when it
///   misses acks or nacks or is itself suspected, so a slow node does not accuse healthy ones; suspicion timeouts
///   shrink with independent confirmations (``Suspicion``); a probe of a suspect carries the suspicion (the buddy
///   system), so the suspect hears first and refutes.
/// - Every node that hears of a suspicion probes the suspect at its next probe slot. A live suspect refutes into the
///   ack, so the node that hears the rumor also hears the answer, whatever random gossip missed; a failed probe is an
///   independent confirmation, which shortens the timeout for a real failure. A node that hears an outdated rumor
///   about itself answers its sender with its current state.
/// - A refused connection is strong evidence that no process listens: when the direct probe and every indirect prober
///   are refused, the member is declared dead without waiting for the suspicion timeout. A silent member (paused,
///   partitioned, its host gone) still goes through suspicion.
public struct SWIMInstance: Sendable {
    /// The configuration it was created with.
    public let configuration: MembershipConfiguration

    /// This node as it announces itself.
    public internal(set) var localMember: Member
    /// The local health multiplier: 0 when healthy, up to `awarenessMaxMultiplier - 1`.
    public internal(set) var awareness = 0
    /// Running totals, for metrics.
    public internal(set) var counters = MembershipCounters()
    /// How many times the newest update about this node has been sent to other members.
    public internal(set) var localUpdateTransmissions = 0
    /// Whether ``leave(now:)`` was called.
    public internal(set) var isLeaving = false

    /// Everything known of other members. Changed only through `store(_:)` and `forget(_:)`, which keep
    /// `memberNames` and `activeOthers` in step.
    private(set) var records: [String: Record] = [:]
    /// The names in `records`, sorted: a stable order for random choices, whatever the dictionary's order.
    private(set) var memberNames: [String] = []
    /// How many other members are alive or suspect.
    private(set) var activeOthers = 0
    var broadcasts = BroadcastQueue()
    var suspicions: [String: Suspicion] = [:]
    var probe: Probe?
    var relayedProbes: [UInt32: RelayedProbe] = [:]
    var probeOrder: [String] = []
    /// Members to probe next, ahead of the round-robin: suspects this node heard of from others, and members its
    /// driver found unreachable.
    var probeQueue: [String] = []
    var probeIndex = 0
    var tombstoneExpiry: [String: GossipInstant] = [:]
    /// Metadata changes are announced at most once a gossip interval: when the last announcement went out, and when
    /// the changes made since are due.
    var lastMetadataAnnouncementAt: GossipInstant?
    var pendingMetadataAnnouncementAt: GossipInstant?
    var nextProbeAt: GossipInstant
    var nextGossipAt: GossipInstant
    var nextPushPullAt: GossipInstant
    /// The seeds of the last join, retried with backoff until one of them answers.
    var joinSeeds: [String] = []
    var nextJoinAttemptAt: GossipInstant?
    var joinBackoff: Duration = .seconds(1)
    /// With ``MembershipConfiguration/membersIntroduceThemselves``: the addresses asked to introduce themselves, and
    /// when, so that a stream of claims asks each address at most once a probe interval (and at most
    /// `maxPendingIntroductions` addresses at a time).
    var introductionsAsked: [String: GossipInstant] = [:]
    var nextSequence: UInt32 = 0
    var random: SplitMix64
    var output: [MembershipDirective] = []

    /// What this node knows of another member.
    struct Record: Sendable {
        var member: Member
        /// When its status last changed, for forgetting dead members.
        var statusSince: GossipInstant
    }

    /// The probe this node is running.
    struct Probe: Sendable {
        var target: String
        var targetAddress: String
        var sequence: UInt32
        var directDeadline: GossipInstant
        var periodEnd: GossipInstant
        var isIndirect = false
        var directRefused = false
        var expectedNacks = 0
        var nacks = 0
        var refusedNacks = 0
    }

    /// A probe this node runs on another member's behalf.
    struct RelayedProbe: Sendable {
        var originAddress: String
        var originSequence: UInt32
        var deadline: GossipInstant
    }

    /// A node that knows only itself. `seed` drives its random choices (the simulator replays runs by it).
    public init(configuration: MembershipConfiguration, now: GossipInstant, seed: UInt64) {
        self.configuration = configuration
        let version = configuration.initialIncarnation
        self.localMember = Member(
            name: configuration.nodeName,
            address: configuration.advertiseAddress,
            incarnation: version,
            status: .alive,
            state: configuration.initialState,
            metadata: configuration.initialMetadata.mapValues { MetadataEntry(value: $0, version: version) }
        )
        self.random = SplitMix64(seed: seed)
        // Spread the first rounds so that nodes started together do not probe in lockstep.
        self.nextProbeAt = now + configuration.probeInterval.scaled(by: random.unit())
        self.nextGossipAt = now + configuration.gossipInterval.scaled(by: random.unit())
        self.nextPushPullAt = now + configuration.pushPullInterval.scaled(by: 0.5 + random.unit())
        // Announce itself with its first messages, so that whoever it talks to learns of it.
        broadcasts.enqueue(.alive(localMember))
    }

    // MARK: Views

    /// Every member this node knows, itself included, dead and departed ones until they are forgotten.
    public var members: [Member] { [localMember] + records.values.map(\.member) }

    /// The members that take part in views: alive or suspect, itself included.
    public var activeMembers: [Member] { members.filter { $0.status.isActive } }

    /// How many updates this node still has to pass on; zero in a quiet cluster.
    public var pendingUpdateCount: Int { broadcasts.count }

    /// How many members are alive or suspect, this node included.
    public var activeMemberCount: Int { 1 + activeOthers }

    /// The member named `name`, if known.
    public func member(named name: String) -> Member? {
        name == localMember.name ? localMember : records[name]?.member
    }

    /// The active members as peers for the sharding layer.
    public var peers: [Peer] {
        activeMembers.map {
            Peer(name: $0.name, address: $0.address, state: $0.state, isSelf: $0.name == localMember.name)
        }
    }

    /// Whether the newest update about this node has reached as many members as one gossip round would reach.
    public var hasDisseminatedLocalUpdate: Bool {
        localUpdateTransmissions >= min(configuration.gossipNodes, activeOthers)
    }

    /// The latest instant by which ``tick(now:)`` must be called.
    public var nextDeadline: GossipInstant {
        var deadline = min(nextProbeAt, nextGossipAt, nextPushPullAt)
        if let probe, !probe.isIndirect { deadline = min(deadline, probe.directDeadline) }
        for suspicion in suspicions.values { deadline = min(deadline, suspicion.deadline) }
        for relayed in relayedProbes.values { deadline = min(deadline, relayed.deadline) }
        if let nextJoinAttemptAt { deadline = min(deadline, nextJoinAttemptAt) }
        if let pendingMetadataAnnouncementAt { deadline = min(deadline, pendingMetadataAnnouncementAt) }
        return deadline
    }

    // MARK: Driving

    /// Runs whatever is due at `now`: probe steps, suspicion timeouts, a gossip round, a full-state exchange.
    public mutating func tick(now: GossipInstant) -> [MembershipDirective] {
        expireSuspicions(now: now)
        expireRelayedProbes(now: now)
        advanceProbe(now: now)
        if let due = pendingMetadataAnnouncementAt, now >= due {
            pendingMetadataAnnouncementAt = nil
            if !isLeaving { announceMetadataChange(now: now) }
        }
        if now >= nextGossipAt {
            gossip(now: now)
            nextGossipAt = now + configuration.gossipInterval
        }
        if now >= nextPushPullAt {
            startPushPull(now: now)
            nextPushPullAt = now + pushPullInterval
        }
        if let attempt = nextJoinAttemptAt, now >= attempt {
            joinBackoff = min(joinBackoff * 2, .seconds(30))
            sendJoin(now: now)
        }
        return takeOutput()
    }

    /// Handles an envelope that arrived from another node.
    public mutating func receive(_ envelope: GossipEnvelope, now: GossipInstant) -> [MembershipDirective] {
        guard envelope.clusterName == configuration.clusterName else {
            reject(
                envelope,
                "it belongs to cluster \"\(envelope.clusterName)\", this node to \"\(configuration.clusterName)\""
            )
            return takeOutput()
        }
        guard envelope.senderName != localMember.name || envelope.senderAddress == localMember.address else {
            reject(envelope, "another node at \(envelope.senderAddress) uses this node's name \"\(localMember.name)\"")
            return takeOutput()
        }
        for message in envelope.messages {
            handle(message, from: envelope, now: now)
        }
        return takeOutput()
    }

    /// Reports that sending `messages` to `address` failed; `refused` when the connection was refused (nothing
    /// listens there), as opposed to a timeout or a reset.
    public mutating func sendFailed(
        to address: String,
        messages: [GossipMessage],
        refused: Bool,
        now: GossipInstant
    ) -> [MembershipDirective] {
        guard refused else { return [] }
        for case .ping(let sequence, _) in messages {
            if var current = probe, current.sequence == sequence {
                // Even after the helpers were asked: their refusals and this one together still prove it.
                current.directRefused = true
                probe = current
                if current.isIndirect { checkRefusedEverywhere(current, now: now) }
                advanceProbe(now: now)
            } else if let relayed = relayedProbes.removeValue(forKey: sequence) {
                send([.nack(sequence: relayed.originSequence, refused: true)], to: relayed.originAddress)
            }
        }
        return takeOutput()
    }

    /// Asks the nodes at `addresses` for their full state, which is how a node joins (and how a partition heals when
    /// the driver re-resolves its seeds). Until one of them answers, the request is repeated with a backoff from 1 to
    /// 30 seconds; after the answer, one more full-state exchange with a random member follows within two seconds, to
    /// learn of nodes that joined at the same moment.
    public mutating func join(addresses: [String], now: GossipInstant) -> [MembershipDirective] {
        joinSeeds = addresses.filter { $0 != localMember.address }
        joinBackoff = .seconds(1)
        sendJoin(now: now)
        return takeOutput()
    }

    mutating func sendJoin(now: GossipInstant) {
        guard !joinSeeds.isEmpty else {
            nextJoinAttemptAt = nil
            return
        }
        nextJoinAttemptAt = now + joinBackoff
        for address in joinSeeds {
            send(
                [.pushPull(isResponse: false, isJoin: true, members: fullState(now: now))],
                to: address,
                piggyback: false
            )
        }
    }

    /// A seed answered the join.
    mutating func joinAnswered(now: GossipInstant) {
        guard nextJoinAttemptAt != nil else { return }
        nextJoinAttemptAt = nil
        nextPushPullAt = min(nextPushPullAt, now + .seconds(1) + .seconds(1).scaled(by: random.unit()))
    }

    /// Probes `name` at the next probe slot, ahead of the round-robin (its driver could not reach it).
    public mutating func probeNext(_ name: String) {
        guard records[name]?.member.status.isActive == true, !probeQueue.contains(name) else { return }
        probeQueue.append(name)
    }

    // MARK: Changing this node

    /// Moves this node to `state` (forward only) and announces it at once.
    public mutating func changeState(
        to state: PeerState,
        now: GossipInstant
    ) throws(ShardingError) -> [MembershipDirective] {
        let previous = localMember.state
        localMember.state = try previous.transition(to: state)
        announceLocalMember(now: now)
        emit(.stateChanged(localMember, from: previous))
        return takeOutput()
    }

    /// Sets a metadata entry of this node and announces it, or refuses it when it breaks ``MetadataLimits``. Setting
    /// an entry to the value it has changes nothing.
    public mutating func setMetadata(
        _ key: String,
        to value: String,
        now: GossipInstant
    ) throws(MetadataRefusal) -> [MembershipDirective] {
        if let refusal = MetadataLimits.problem(setting: key, to: value, in: localMember.metadata) { throw refusal }
        // Bytes, not String equality: canonically equivalent values (é and e + U+0301) are different values.
        if let entry = localMember.metadata[key], !entry.isDeleted, entry.value.utf8.elementsEqual(value.utf8) {
            return []
        }
        localMember.metadata[key] = MetadataEntry(value: value, version: localMember.incarnation + 1)
        tombstoneExpiry[key] = nil
        // Room for the new entry: the oldest tombstones give way.
        while !MetadataLimits.fits(localMember.metadata),
            let oldest = tombstoneExpiry.min(by: { $0.value < $1.value })?.key
        {
            tombstoneExpiry[oldest] = nil
            localMember.metadata[oldest] = nil
        }
        announceMetadataChange(now: now)
        emit(.metadataChanged(localMember))
        return takeOutput()
    }

    /// Deletes a metadata entry of this node, leaving a tombstone for `metadataTombstoneTTL`, and announces it.
    public mutating func deleteMetadata(_ key: String, now: GossipInstant) -> [MembershipDirective] {
        guard let entry = localMember.metadata[key], !entry.isDeleted else { return [] }
        localMember.metadata[key] = MetadataEntry(value: "", version: localMember.incarnation + 1, isDeleted: true)
        tombstoneExpiry[key] = now + configuration.metadataTombstoneTTL
        announceMetadataChange(now: now)
        emit(.metadataChanged(localMember))
        return takeOutput()
    }

    /// Leaves the cluster: announces the departure at once and stops probing. The driver keeps delivering messages
    /// until ``hasDisseminatedLocalUpdate`` (or its deadline), then stops.
    public mutating func leave(now: GossipInstant) -> [MembershipDirective] {
        guard !isLeaving else { return [] }
        isLeaving = true
        probe = nil
        localMember.incarnation += 1
        localMember.status = .left
        if localMember.state.canTransition(to: .gone) { localMember.state = .gone }
        localUpdateTransmissions = 0
        broadcasts.enqueue(
            .dead(name: localMember.name, incarnation: localMember.incarnation, from: localMember.name)
        )
        gossip(now: now)
        emit(.left(localMember))
        return takeOutput()
    }

    // MARK: Records

    mutating func store(_ record: Record) {
        let name = record.member.name
        let wasActive = records[name]?.member.status.isActive
        if wasActive == nil { memberNames.insert(name, at: memberNames.firstIndex(notBelow: name)) }
        if wasActive != true && record.member.status.isActive { activeOthers += 1 }
        if wasActive == true && !record.member.status.isActive { activeOthers -= 1 }
        records[name] = record
    }

    mutating func forget(_ name: String) {
        guard let record = records.removeValue(forKey: name) else { return }
        if record.member.status.isActive { activeOthers -= 1 }
        memberNames.remove(at: memberNames.firstIndex(notBelow: name))
    }

    /// Up to `count` distinct random members for which `include` holds. Sampling by index is cheap when most members
    /// qualify, as in a steady cluster; when few do, a scan finds them.
    mutating func randomMembers(count: Int, where include: (Record) -> Bool) -> [Member] {
        guard count > 0, !memberNames.isEmpty else { return [] }
        var picked: [Member] = []
        var tried = Set<Int>()
        var attempts = 0
        while picked.count < count, attempts < 3 * count + 8 {
            attempts += 1
            let index = Int(random.next() % UInt64(memberNames.count))
            guard tried.insert(index).inserted, let record = records[memberNames[index]], include(record) else {
                continue
            }
            picked.append(record.member)
        }
        if picked.count < count {
            var rest: [Member] = []
            for (index, name) in memberNames.enumerated() where !tried.contains(index) {
                if let record = records[name], include(record) { rest.append(record.member) }
            }
            rest.shuffle(using: &random)
            picked += rest.prefix(count - picked.count)
        }
        return picked
    }

    // MARK: Output

    mutating func takeOutput() -> [MembershipDirective] {
        defer { output.removeAll(keepingCapacity: true) }
        return output
    }

    mutating func emit(_ event: MembershipEvent) { output.append(.event(event)) }

    mutating func reject(_ envelope: GossipEnvelope, _ reason: String) {
        counters.rejectedEnvelopes += 1
        output.append(
            .rejected(
                EnvelopeRejection(
                    senderName: envelope.senderName,
                    senderAddress: envelope.senderAddress,
                    reason: reason
                )
            )
        )
    }

    /// Sends `messages` to `address`, with as many pending updates as fit when `piggyback` is true.
    mutating func send(_ messages: [GossipMessage], to address: String, piggyback: Bool = true) {
        var messages = messages
        if piggyback {
            let used = messages.reduce(0) { $0 + GossipCodec.encodedSize($1) }
            let updates = broadcasts.take(budget: configuration.maxPiggybackBytes - used, limit: retransmitLimit)
            countLocalUpdates(in: updates)
            messages += updates
        }
        guard !messages.isEmpty else { return }
        output.append(.send(to: address, messages: messages))
    }

    mutating func countLocalUpdates(in updates: [GossipMessage]) {
        if updates.contains(where: { $0.subject == localMember.name }) { localUpdateTransmissions += 1 }
    }

    // MARK: Derived timings

    /// Members alive or suspect, this node included.
    var activeCount: Int { 1 + activeOthers }

    /// How many times each update is sent: `retransmitMultiplier × ⌈log10(n + 1)⌉`.
    var retransmitLimit: Int {
        configuration.retransmitMultiplier * Int(ceil(log10(Double(activeCount + 1))))
    }

    /// The full-state exchange period, stretched above 32 members as memberlist does.
    var pushPullInterval: Duration {
        let count = Double(activeCount)
        guard count > 32 else { return configuration.pushPullInterval }
        let multiplier = ceil(log2(count) - log2(32)) + 1
        return configuration.pushPullInterval.scaled(by: multiplier)
    }

    /// The probe period and timeout, stretched by the local health multiplier.
    var healthScale: Double { Double(awareness + 1) }
}

extension [String] {
    /// In a sorted array, the index of the first element not less than `value` (binary search).
    fileprivate func firstIndex(notBelow value: String) -> Int {
        var low = 0
        var high = count
        while low < high {
            let middle = (low + high) / 2
            if self[middle] < value { low = middle + 1 } else { high = middle }
        }
        return low
    }
}
