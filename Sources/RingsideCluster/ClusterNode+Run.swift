import Logging
import NIOCore
import RingsideMembership
import RingsideSharding
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#endif

extension ClusterNode {
    /// Binds the cluster listener, joins the seeds, and runs the protocol until ``stop()`` is called, the task is
    /// cancelled, or (in a `ServiceGroup`) a graceful shutdown begins. Then it leaves the cluster: announces the
    /// departure, waits (at most `disseminationTimeout`) until it has gone out, and closes its connections.
    public func run() async throws {
        let listener: any ClusterListener
        let advertised: String
        do {
            (listener, advertised) = try await bind()
        } catch {
            lifecycle.withLockedValue { lifecycle in
                for waiter in lifecycle.runningWaiters { waiter.resume(throwing: error) }
                lifecycle.runningWaiters = []
            }
            throw error
        }
        start(advertisedAddress: advertised)
        logger.info(
            "cluster node started",
            metadata: [
                "ringside.setting": "cluster-listen", "ringside.listen": "\(configuration.listenAddress)",
                "ringside.address": "\(advertised)",
            ]
        )
        let waiters = lifecycle.withLockedValue { lifecycle in
            lifecycle.advertisedAddress = advertised
            defer { lifecycle.runningWaiters = [] }
            return lifecycle.runningWaiters
        }
        for waiter in waiters { waiter.resume(returning: advertised) }

        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await self.driveProtocol() }
                group.addTask { await self.rejoinSeeds() }
                await group.waitForAll()
            }
        } onGracefulShutdown: {
            if self.stopsOnGracefulShutdown { self.requestStop() }
        }

        await leaveAndClose(listener)
    }

    /// Asks a running node to leave and stop, and waits until it has.
    public func stop() async {
        requestStop()
        await withCheckedContinuation { continuation in
            let done = lifecycle.withLockedValue { lifecycle in
                if lifecycle.stopped || !lifecycle.hasRun { return true }
                lifecycle.stoppedWaiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }

    /// Waits until the node listens and returns the address it advertises.
    public func waitUntilRunning() async throws -> String {
        try await withCheckedThrowingContinuation { continuation in
            let address = lifecycle.withLockedValue { lifecycle -> String? in
                if let address = lifecycle.advertisedAddress { return address }
                lifecycle.runningWaiters.append(continuation)
                return nil
            }
            if let address { continuation.resume(returning: address) }
        }
    }

    // MARK: Running

    func bind() async throws -> (any ClusterListener, String) {
        guard let listen = HostAndPort(configuration.listenAddress) else {
            throw ClusterError(
                code: .invalidAddress,
                message: "cluster listen address \"\(configuration.listenAddress)\" is not host:port"
            )
        }
        if let advertise = configuration.advertiseAddress {
            guard let parsed = HostAndPort(advertise), AdvertisedHost.canBeDialled(parsed) else {
                throw ClusterError(
                    code: .invalidAddress,
                    message: "advertise address \"\(advertise)\" is not a host:port other nodes can dial"
                )
            }
        }
        let maxBody = GossipCodec.Limits().maxEnvelopeBytes
        let listener: any ClusterListener
        let receive: @Sendable ([UInt8], GossipSource) -> Bool = { [weak self] bytes, source in
            self?.receive(bytes, from: source) ?? false
        }
        let tls = configuration.tls
        do {
            if let bindListener, tls == nil {
                let idleTimeout = configuration.idleConnectionTimeout
                let forwardedConnections = forwardedConnections
                listener = try await bindListener(listen) { channel in
                    try GossipServer.configure(
                        channel,
                        maxBodyBytes: maxBody,
                        idleTimeout: idleTimeout,
                        forwardedConnections: forwardedConnections,
                        tls: nil,
                        receive: receive
                    )
                }
            } else {
                listener = try await GossipServer.bind(
                    to: listen,
                    group: group,
                    maxBodyBytes: maxBody,
                    idleTimeout: configuration.idleConnectionTimeout,
                    forwardedConnections: forwardedConnections,
                    tls: tls,
                    receive: receive
                )
            }
        } catch {
            throw ClusterError(
                code: .listenFailed,
                message: "cannot listen for cluster traffic on \(listen)",
                underlying: error
            )
        }
        let port = listener.port ?? listen.port
        if let advertise = configuration.advertiseAddress {
            return (listener, advertise)
        }
        return (listener, HostAndPort(host: AdvertisedHost.forListener(on: listen.host), port: port).description)
    }

    func start(advertisedAddress: String) {
        var timings = configuration.timings
        timings.nodeName = configuration.nodeName
        timings.clusterName = configuration.clusterName
        timings.advertiseAddress = advertisedAddress
        timings.initialState = configuration.initialState
        timings.initialMetadata = configuration.initialMetadata
        // Under mutual TLS an envelope's sender is proven, so a member is taken only on its own word.
        timings.membersIntroduceThemselves = configuration.tls != nil
        // Milliseconds since the epoch: a restarted node supersedes its previous self at once.
        timings.initialIncarnation = UInt64(max(0, Self.wallClockMilliseconds()))
        let instance = SWIMInstance(configuration: timings, now: now(), seed: UInt64.random(in: .min ... .max))
        core.withLockedValue { core in
            core.instance = instance
            core.counters = instance.counters
        }
        lifecycle.withLockedValue { $0.hasRun = true }
        publish(events: [])
    }

    /// Ticks the protocol at its deadlines; an input that brings the next one forward wakes it early.
    func driveProtocol() async {
        while !lifecycle.withLockedValue({ $0.stopRequested }) && !Task.isCancelled {
            let now = now()
            let deadline = core.withLockedValue { $0.instance?.nextDeadline } ?? now
            if deadline > now { await protocolAlarm.sleep(until: .now() + TimeAmount(deadline - now)) }
            if let directives = try? withInstance({ instance, now in instance.tick(now: now) }) {
                perform(directives)
            }
        }
    }

    /// Resolves and joins the seeds at once, then every `rejoinInterval`. While the node knows no other member (its
    /// seeds resolved to nothing or only to itself, as when every node of a new cluster starts at once and the DNS
    /// does not list them yet), it tries again after 1 s, then 2 s, 4 s…, up to `rejoinInterval`: nodes that started
    /// together find each other in seconds instead of each owning every key until the next rejoin.
    func rejoinSeeds() async {
        guard !configuration.seeds.isEmpty else { return }
        var aloneDelay = Duration.seconds(1)
        var firstRound = true
        while !lifecycle.withLockedValue({ $0.stopRequested }) && !Task.isCancelled {
            let start = NIODeadline.now()
            let addresses = await resolver.resolve(configuration.seeds)
            if addresses.isEmpty {
                logger.warning(
                    "the seeds have not answered: none resolved; running alone until one does",
                    metadata: ["ringside.seeds": "\(configuration.seeds)"]
                )
            } else if let directives = try? withInstance({ $0.join(addresses: addresses, now: $1) }) {
                perform(directives)
            }
            if !addresses.isEmpty, !hasJoined, !firstRound {
                logger.warning(
                    "the seeds have not answered; running alone until one does",
                    metadata: ["ringside.seeds": "\(configuration.seeds)", "ringside.resolved": "\(addresses)"]
                )
            }
            firstRound = false
            let alone = members.allSatisfy { $0.name == configuration.nodeName || !$0.status.isActive }
            let wait = alone ? min(aloneDelay, configuration.rejoinInterval) : configuration.rejoinInterval
            aloneDelay = alone ? aloneDelay * 2 : .seconds(1)
            await rejoinAlarm.sleep(until: start + TimeAmount(wait))
        }
    }

    func requestStop() {
        lifecycle.withLockedValue { $0.stopRequested = true }
        protocolAlarm.ring()
        rejoinAlarm.ring()
    }

    /// Stops without leaving, as a crashed process would: no announcement, connections dropped, the port closed.
    public func halt() async {
        lifecycle.withLockedValue {
            $0.halting = true
            $0.stopRequested = true
        }
        await stop()
    }

    func leaveAndClose(_ listener: any ClusterListener) async {
        if !lifecycle.withLockedValue({ $0.halting }), let directives = try? withInstance({ $0.leave(now: $1) }) {
            perform(directives)
            do {
                try await waitForDissemination()
            } catch {
                logger.notice(
                    "left without confirming that other members heard",
                    metadata: ["ringside.error": "\(error)"]
                )
            }
        }
        if !lifecycle.withLockedValue({ $0.halting }), let beforeClosingListener { await beforeClosingListener() }
        await client.drain(timeout: configuration.disseminationTimeout)
        await listener.close()
        await client.shutdown()
        let subscribers = core.withLockedValue { core in
            defer { core.subscribers = [:] }
            return Array(core.subscribers.values)
        }
        for subscriber in subscribers { subscriber.finish() }
        logger.info("cluster node stopped")
        let waiters = lifecycle.withLockedValue { lifecycle in
            lifecycle.stopped = true
            lifecycle.advertisedAddress = nil
            defer { lifecycle.stoppedWaiters = [] }
            return lifecycle.stoppedWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    // MARK: Inputs and outputs

    /// Handles one gossip frame from the listener; false if it was not a valid frame (dropped, counted, logged at
    /// debug), or if it came over mutual TLS from a peer whose certificate does not carry the sender's name (refused,
    /// counted, logged at most once a second). A compressed body inflates within its connection's budget
    /// (``InflateBudget``) as well as the codec's own bounds.
    func receive(_ bytes: [UInt8], from source: GossipSource? = nil) -> Bool {
        metrics.bytesIn.increment(by: Int64(bytes.count))
        traffic.bytesIn.wrappingIncrement(by: bytes.count, ordering: .relaxed)
        let envelope: GossipEnvelope
        var limits = GossipCodec.Limits()
        limits.inflateBudget = source?.budget.remaining()
        var inflated = 0
        do {
            envelope = try GossipCodec.decode(bytes, limits: limits, inflated: &inflated)
            source?.budget.spend(inflated)
        } catch {
            metrics.framesDropped.increment()
            traffic.framesDropped.wrappingIncrement(ordering: .relaxed)
            logger.debug(
                "dropped a gossip frame",
                metadata: ["ringside.error": "\(error)", "ringside.bytes": "\(bytes.count)"]
            )
            return false
        }
        if let source, let identity = source.identity, !identity.carries(envelope.senderName) {
            metrics.impersonations.increment()
            // As the cluster plane's handshakes count it: the certificate does not carry the name it speaks under.
            if source.firstRefusal() { configuration.tls?.handshakes.count(.nameMismatch) }
            if let held = logLimiter.allow("refused gossip under another name") {
                logger.warning(
                    "refused gossip: the sender's certificate does not carry the name it speaks under",
                    metadata: [
                        "ringside.peer": "\(envelope.senderName)",
                        "ringside.peer.address": "\(envelope.senderAddress)",
                        "ringside.certificate.names": "\(identity.names.joined(separator: ","))",
                        "ringside.suppressed": "\(held)",
                    ]
                )
            }
            return false
        }
        if let directives = try? withInstance({ $0.receive(envelope, now: $1) }) {
            perform(directives)
        }
        return true
    }

    /// Carries out directives: sends, events, refusals.
    func perform(_ directives: [MembershipDirective]) {
        var events: [MembershipEvent] = []
        for directive in directives {
            switch directive {
            case .send(let address, let messages):
                send(messages, to: address)
            case .event(let event):
                events.append(event)
            case .rejected(let rejection):
                // A foreign cluster's node sends an envelope every probe: one line a second says so.
                guard let held = logLimiter.allow("refused gossip") else { continue }
                logger.warning(
                    "refused gossip",
                    metadata: [
                        "ringside.peer": "\(rejection.senderName)",
                        "ringside.peer.address": "\(rejection.senderAddress)",
                        "ringside.reason": "\(rejection.reason)",
                        "ringside.suppressed": "\(held)",
                    ]
                )
            }
        }
        if !events.isEmpty { publish(events: events) }
    }

    func send(_ messages: [GossipMessage], to address: String) {
        guard let advertised = lifecycle.withLockedValue({ $0.advertisedAddress }) else { return }
        let envelope = GossipEnvelope(
            clusterName: configuration.clusterName,
            senderName: configuration.nodeName,
            senderAddress: advertised,
            messages: messages
        )
        let bytes = GossipCodec.encode(envelope)
        metrics.bytesOut.increment(by: Int64(bytes.count))
        traffic.bytesOut.wrappingIncrement(by: bytes.count, ordering: .relaxed)
        client.send(ByteBuffer(bytes: bytes), to: address) { [weak self] refused in
            guard let self else { return }
            if let directives = try? self.withInstance({
                $0.sendFailed(to: address, messages: messages, refused: refused, now: $1)
            }) {
                self.perform(directives)
            }
        }
    }

    /// Rebuilds the view if the peers changed, publishes it, then tells subscribers about `events`.
    func publish(events: [MembershipEvent]) {
        publishing.withLock {
            let (members, peers, subscribers) = core.withLockedValue { core in
                (core.instance?.members ?? [], core.instance?.peers ?? [], Array(core.subscribers.values))
            }
            var current = view.load(ordering: .acquiring)
            if current.sharder.peers != peers.sorted(by: { $0.name.utf8.lexicographicallyPrecedes($1.name.utf8) })
                || current.members != members
            {
                let sharder: any Sharder
                do {
                    sharder = try configuration.sharding.makeSharder(peers: peers)
                } catch {
                    logger.error(
                        "cannot build the sharder; keeping the previous one",
                        metadata: ["ringside.error": "\(error)"]
                    )
                    sharder = current.sharder
                }
                current = View(members: members, sharder: sharder)
                view.store(current, ordering: .releasing)
                metrics.record(members: members)
            }
            if let other = members.first(where: { $0.name != configuration.nodeName && $0.status.isActive }),
                !lifecycle.withLockedValue({ $0.joined })
            {
                lifecycle.withLockedValue { $0.joined = true }
                logger.info(
                    "joined the cluster",
                    metadata: ["ringside.peer": "\(other.name)", "ringside.members": "\(members.count)"]
                )
            }
            for event in events {
                log(event)
                for subscriber in subscribers {
                    subscriber.yield(ClusterUpdate(event: event, members: current.members, sharder: current.sharder))
                }
            }
        }
    }

    /// Membership changes are lifecycle events (info): joined, left, died, state changed, each with the member's
    /// name, address and state; suspicion and its refutation, and metadata, are detail (debug, trace).
    func log(_ event: MembershipEvent) {
        func about(_ member: Member) -> Logger.Metadata {
            [
                "ringside.peer": "\(member.name)", "ringside.peer.address": "\(member.address)",
                "ringside.peer.state": "\(member.state)",
            ]
        }
        switch event {
        case .joined(let member): logger.info("member joined", metadata: about(member))
        case .left(let member): logger.info("member left", metadata: about(member))
        case .died(let member): logger.info("member declared dead", metadata: about(member))
        case .suspected(let member): logger.debug("member suspected", metadata: about(member))
        case .alive(let member): logger.debug("member refuted suspicion", metadata: about(member))
        case .stateChanged(let member, let from):
            var metadata = about(member)
            metadata["ringside.peer.previous_state"] = "\(from)"
            logger.info("member changed state", metadata: metadata)
        case .metadataChanged(let member):
            logger.trace("member metadata changed", metadata: about(member))
        }
    }

    static func wallClockMilliseconds() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
    }
}
