import HeapModule
import RingsideMembership
import RingsideSharding

/// A deterministic in-memory network of membership nodes on a virtual clock.
///
/// Every node is a real ``SWIMInstance``; every message is encoded and decoded with the real ``GossipCodec``, so byte
/// counts are the wire's. Time advances from event to event (deliveries and node deadlines), so ten simulated minutes
/// of a hundred nodes take seconds. The same seed gives the same run.
///
/// Faults: per-message loss and delay, partitions between groups of nodes, paused nodes (like SIGSTOP: messages wait
/// for them, they do nothing), crashed nodes (a refused connection when the process is gone; silence when the host
/// is), and restarts under the same name.
public final class ClusterSimulator {
    /// The current virtual time.
    public private(set) var now = GossipInstant.zero
    /// The share of messages lost, 0 to 1.
    public var loss = 0.0
    /// The one-way delay of each message, uniform in this range.
    public var delay: ClosedRange<Duration> = Duration.milliseconds(1)...Duration.milliseconds(5)
    /// Bytes each node has sent, by name.
    public private(set) var bytesSent: [String: Int] = [:]
    /// Every event every node reported, in order.
    public private(set) var events: [(time: GossipInstant, node: String, event: MembershipEvent)] = []
    /// Every refusal every node reported (wrong cluster, clashing names).
    public private(set) var rejections: [(node: String, rejection: EnvelopeRejection)] = []
    /// Called with every event a node reports, whether or not ``recordsEvents`` keeps them.
    public var onEvent: ((_ time: GossipInstant, _ node: String, _ event: MembershipEvent) -> Void)?
    /// Called with every envelope a running node receives, before it handles it.
    public var onDeliver: ((_ node: String, _ envelope: GossipEnvelope, _ time: GossipInstant) -> Void)?
    /// Whether to keep ``events`` (a long run at a thousand nodes may not want them).
    public var recordsEvents = true

    private var nodes: [String: SimulatedNode] = [:]
    private var names: [String] = []
    private var queue = Heap<Scheduled>()
    private var order: UInt64 = 0
    private var random: SplitMix64
    private var groups: [String: Int] = [:]

    private struct SimulatedNode {
        var instance: SWIMInstance
        var condition: Condition = .running
        var wakeAt: GossipInstant?
        var held: [(bytes: [UInt8], from: String)] = []
    }

    private enum Condition {
        case running, paused, crashedRefusing, crashedSilent
    }

    private struct Scheduled: Comparable {
        var time: GossipInstant
        var order: UInt64
        var action: Action

        static func < (lhs: Scheduled, rhs: Scheduled) -> Bool { (lhs.time, lhs.order) < (rhs.time, rhs.order) }
        static func == (lhs: Scheduled, rhs: Scheduled) -> Bool { (lhs.time, lhs.order) == (rhs.time, rhs.order) }
    }

    private enum Action {
        case wake(String)
        case deliver(bytes: [UInt8], to: String, from: String)
        case refused(node: String, address: String, messages: [GossipMessage])
        case rejoin(every: Duration, seeds: [String])
    }

    /// An empty network whose random choices follow `seed`.
    public init(seed: UInt64) { random = SplitMix64(seed: seed) }

    // MARK: Nodes

    /// The address of the node named `name` in this network.
    public static func address(of name: String) -> String { "\(name):7401" }

    /// Starts a node. `configure` can change its configuration (timings, cluster name, incarnation).
    @discardableResult
    public func addNode(
        _ name: String,
        state: PeerState = .participant,
        configure: (inout MembershipConfiguration) -> Void = { _ in }
    ) -> SWIMInstance {
        var configuration = MembershipConfiguration(
            nodeName: name,
            advertiseAddress: Self.address(of: name),
            initialState: state
        )
        configure(&configuration)
        let instance = SWIMInstance(configuration: configuration, now: now, seed: random.next())
        if nodes[name] == nil { names.append(name) }
        nodes[name] = SimulatedNode(instance: instance)
        schedule(name)
        return instance
    }

    /// The protocol state of the node named `name`.
    public func node(_ name: String) -> SWIMInstance { nodes[name]!.instance }

    /// The names of every node ever added, in the order added.
    public var nodeNames: [String] { names }

    /// The nodes that are running (not paused, not crashed).
    public var runningNodes: [String] { names.filter { nodes[$0]!.condition == .running } }

    /// Asks `name` to join through the nodes named `seeds`.
    public func join(_ name: String, seeds: [String]) {
        perform(name) { $0.join(addresses: seeds.map(Self.address(of:)), now: self.now) }
    }

    /// Moves `name` to `state`.
    public func changeState(_ name: String, to state: PeerState) throws(ShardingError) {
        var failure: ShardingError?
        perform(name) { instance in
            do throws(ShardingError) {
                return try instance.changeState(to: state, now: self.now)
            } catch {
                failure = error
                return []
            }
        }
        if let failure { throw failure }
    }

    /// Sets a metadata entry of `name`, or throws why ``MetadataLimits`` refuse it.
    public func setMetadata(_ name: String, _ key: String, _ value: String) throws(MetadataRefusal) {
        var refusal: MetadataRefusal?
        perform(name) { instance in
            do throws(MetadataRefusal) {
                return try instance.setMetadata(key, to: value, now: self.now)
            } catch {
                refusal = error
                return []
            }
        }
        if let refusal { throw refusal }
    }

    /// Deletes a metadata entry of `name`.
    public func deleteMetadata(_ name: String, _ key: String) {
        perform(name) { $0.deleteMetadata(key, now: self.now) }
    }

    /// Makes `name` leave gracefully. It keeps running until stopped or crashed.
    public func leave(_ name: String) {
        perform(name) { $0.leave(now: self.now) }
    }

    /// Makes every running node re-join through `seeds` every `interval`, as the NIO shell does with its seed list:
    /// the only way two sides of a healed partition find each other again once each has declared the other dead.
    public func rejoin(every interval: Duration, seeds: [String]) {
        enqueue(now + interval, .rejoin(every: interval, seeds: seeds))
    }

    // MARK: Faults

    /// Stops `name`'s process. With `hostDown`, messages to it vanish (a silent failure); otherwise connections to
    /// it are refused, as when the process is gone but its host is up.
    public func crash(_ name: String, hostDown: Bool = false) {
        nodes[name]!.condition = hostDown ? .crashedSilent : .crashedRefusing
        nodes[name]!.held = []
    }

    /// Restarts `name` as a fresh process under the same name and address.
    public func restart(
        _ name: String,
        state: PeerState = .participant,
        configure: (inout MembershipConfiguration) -> Void = { _ in }
    ) {
        addNode(name, state: state, configure: configure)
    }

    /// Pauses `name`: it does nothing and messages to it wait, like a process under SIGSTOP.
    public func pause(_ name: String) { nodes[name]!.condition = .paused }

    /// Resumes a paused node; it reads what waited for it and catches up on its timers.
    public func resume(_ name: String) {
        nodes[name]!.condition = .running
        let held = nodes[name]!.held
        nodes[name]!.held = []
        for message in held { deliver(message.bytes, to: name, from: message.from) }
        schedule(name, at: now)
    }

    /// Splits the network: nodes in different groups cannot reach each other. Nodes not listed form one more group.
    public func partition(_ parts: [[String]]) {
        groups = [:]
        for (index, part) in parts.enumerated() {
            for name in part { groups[name] = index + 1 }
        }
    }

    /// Ends every partition.
    public func heal() { groups = [:] }

    // MARK: Running

    /// Runs until `duration` of virtual time has passed.
    public func run(for duration: Duration) {
        let end = now + duration
        while let next = queue.min, next.time <= end {
            step()
        }
        now = end
    }

    /// Runs until `condition` holds, checking after every event, or until `timeout` passes. Returns the time taken,
    /// or nil if the condition never held.
    @discardableResult
    public func run(until condition: () -> Bool, timeout: Duration) -> Duration? {
        let start = now
        let end = now + timeout
        if condition() { return .zero }
        while let next = queue.min, next.time <= end {
            step()
            if condition() { return now - start }
        }
        now = end
        return nil
    }

    /// Runs until `condition` holds, checking it every `interval` of virtual time rather than after every event (for
    /// conditions that cost a pass over a thousand nodes). Returns the time taken to the check that first saw it, or
    /// nil if it never held within `timeout`.
    @discardableResult
    public func run(until condition: () -> Bool, timeout: Duration, checkingEvery interval: Duration) -> Duration? {
        let start = now
        while now - start < timeout {
            if condition() { return now - start }
            run(for: interval)
        }
        return condition() ? now - start : nil
    }

    /// The total bytes every node has sent.
    public var totalBytesSent: Int { bytesSent.values.reduce(0, +) }

    private func step() {
        let next = queue.removeMin()
        now = next.time
        switch next.action {
        case .wake(let name):
            guard var node = nodes[name], node.wakeAt == next.time else { return }
            node.wakeAt = nil
            nodes[name] = node
            guard node.condition == .running else { return }
            perform(name) { $0.tick(now: self.now) }
        case .deliver(let bytes, let name, let from):
            deliver(bytes, to: name, from: from)
        case .rejoin(let interval, let seeds):
            for name in runningNodes { join(name, seeds: seeds) }
            enqueue(now + interval, .rejoin(every: interval, seeds: seeds))
        case .refused(let name, let address, let messages):
            guard nodes[name]?.condition == .running else { return }
            perform(name) { $0.sendFailed(to: address, messages: messages, refused: true, now: self.now) }
        }
    }

    private func deliver(_ bytes: [UInt8], to name: String, from sender: String) {
        guard var node = nodes[name] else { return }
        switch node.condition {
        case .paused:
            node.held.append((bytes, sender))
            nodes[name] = node
            return
        case .crashedRefusing, .crashedSilent:
            return
        case .running:
            break
        }
        guard let envelope = try? GossipCodec.decode(bytes) else { return }
        onDeliver?(name, envelope, now)
        perform(name) { $0.receive(envelope, now: self.now) }
    }

    /// Runs `body` on `name`'s instance and carries out the directives it returns.
    private func perform(_ name: String, _ body: (inout SWIMInstance) -> [MembershipDirective]) {
        guard var node = nodes[name], node.condition == .running else { return }
        let directives = body(&node.instance)
        nodes[name] = node
        for directive in directives {
            switch directive {
            case .send(let address, let messages):
                send(messages, from: name, to: address)
            case .event(let event):
                if recordsEvents { events.append((now, name, event)) }
                onEvent?(now, name, event)
            case .rejected(let rejection):
                rejections.append((name, rejection))
            }
        }
        schedule(name)
    }

    private func send(_ messages: [GossipMessage], from name: String, to address: String) {
        let instance = nodes[name]!.instance
        let envelope = GossipEnvelope(
            clusterName: instance.configuration.clusterName,
            senderName: name,
            senderAddress: instance.configuration.advertiseAddress,
            messages: messages
        )
        let bytes = GossipCodec.encode(envelope)
        bytesSent[name, default: 0] += bytes.count
        guard let target = nodeName(at: address) else { return }
        if groups[name, default: 0] != groups[target, default: 0] { return }
        if nodes[target]!.condition == .crashedRefusing {
            enqueue(now + delay.lowerBound, .refused(node: name, address: address, messages: messages))
            return
        }
        if loss > 0 && random.unit() < loss { return }
        enqueue(now + randomDelay(), .deliver(bytes: bytes, to: target, from: name))
    }

    private func nodeName(at address: String) -> String? {
        guard address.hasSuffix(":7401") else { return nil }
        let name = String(address.dropLast(5))
        return nodes[name] == nil ? nil : name
    }

    private func randomDelay() -> Duration {
        let low = delay.lowerBound
        let span = delay.upperBound - low
        return low + span * random.unit()
    }

    private func schedule(_ name: String, at time: GossipInstant? = nil) {
        guard var node = nodes[name] else { return }
        let deadline = max(now, time ?? node.instance.nextDeadline)
        if let current = node.wakeAt, current <= deadline { return }
        node.wakeAt = deadline
        nodes[name] = node
        enqueue(deadline, .wake(name))
    }

    private func enqueue(_ time: GossipInstant, _ action: Action) {
        order += 1
        queue.insert(Scheduled(time: time, order: order, action: action))
    }
}
