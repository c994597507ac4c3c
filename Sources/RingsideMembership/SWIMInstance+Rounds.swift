extension SWIMInstance {
    // MARK: Probing

    /// Moves the current probe along (direct timeout → indirect probes; end of period → verdict) and starts the next
    /// one when its period begins.
    mutating func advanceProbe(now: GossipInstant) {
        if var current = probe, !current.isIndirect, current.directRefused || now >= current.directDeadline {
            startIndirectProbes(&current)
            probe = current
            checkRefusedEverywhere(current, now: now)
        }
        if let current = probe, now >= current.periodEnd {
            probe = nil
            probeFailed(current, now: now)
        }
        if !isLeaving && now >= nextProbeAt {
            forgetDeparted(now: now)
            expireTombstones(now: now)
            startProbe(now: now)
        }
    }

    mutating func startProbe(now: GossipInstant) {
        nextProbeAt = now + configuration.probeInterval.scaled(by: healthScale)
        guard let target = nextProbeTarget() else { return }
        let sequence = makeSequence()
        var messages: [GossipMessage] = [.ping(sequence: sequence, target: target.name)]
        if target.status == .suspect {
            // The buddy system: the suspect learns of the suspicion from the probe itself and can refute at once.
            messages.append(.suspect(name: target.name, incarnation: target.incarnation, from: localMember.name))
        }
        counters.probes += 1
        probe = Probe(
            target: target.name,
            targetAddress: target.address,
            sequence: sequence,
            directDeadline: now + configuration.probeTimeout.scaled(by: healthScale),
            periodEnd: nextProbeAt
        )
        send(messages, to: target.address)
    }

    /// A member queued for probing if there is one (a suspect to verify, a member found unreachable), else the next
    /// active member in a shuffled round-robin; the order is reshuffled after each pass.
    mutating func nextProbeTarget() -> Member? {
        while !probeQueue.isEmpty {
            let name = probeQueue.removeFirst()
            if let member = records[name]?.member, member.status.isActive { return member }
        }
        for _ in 0..<2 {
            while probeIndex < probeOrder.count {
                let name = probeOrder[probeIndex]
                probeIndex += 1
                if let member = records[name]?.member, member.status.isActive { return member }
            }
            probeOrder = memberNames.filter { records[$0]!.member.status.isActive }
            probeOrder.shuffle(using: &random)
            probeIndex = 0
            if probeOrder.isEmpty { return nil }
        }
        return nil
    }

    mutating func startIndirectProbes(_ current: inout Probe) {
        current.isIndirect = true
        let helpers = randomActiveMembers(count: configuration.indirectChecks, excluding: [current.target])
        current.expectedNacks = helpers.count
        for helper in helpers {
            send(
                [
                    .pingRequest(
                        sequence: current.sequence,
                        target: current.target,
                        targetAddress: current.targetAddress
                    )
                ],
                to: helper.address
            )
        }
    }

    /// The verdict on a probe that got no ack in its period: suspect the target, and adjust this node's health by
    /// whether the helpers answered (Lifeguard: missing nacks mean the problem may be here).
    mutating func probeFailed(_ failed: Probe, now: GossipInstant) {
        let missingNacks = failed.expectedNacks - failed.nacks
        adjustAwareness(by: failed.expectedNacks > 0 ? missingNacks : 1)
        // Suspects a live member, or confirms the suspicion of a suspect.
        guard let target = records[failed.target]?.member, target.status.isActive else { return }
        applySuspect(name: target.name, incarnation: target.incarnation, from: localMember.name, now: now)
    }

    /// Declares the target dead when the direct probe and every helper were refused a connection.
    mutating func checkRefusedEverywhere(_ current: Probe, now: GossipInstant) {
        guard current.directRefused, current.expectedNacks > 0, current.refusedNacks == current.expectedNacks,
            let target = records[current.target]?.member, target.status.isActive
        else { return }
        probe = nil
        adjustAwareness(by: -1)
        applyDead(name: target.name, incarnation: target.incarnation, from: localMember.name, now: now)
    }

    mutating func probeAcknowledged(sequence: UInt32) {
        guard let current = probe, current.sequence == sequence else { return }
        probe = nil
        adjustAwareness(by: -1)
    }

    mutating func probeNacked(sequence: UInt32, refused: Bool, now: GossipInstant) {
        guard var current = probe, current.sequence == sequence else { return }
        current.nacks += 1
        if refused { current.refusedNacks += 1 }
        probe = current
        checkRefusedEverywhere(current, now: now)
    }

    mutating func adjustAwareness(by delta: Int) {
        awareness = max(0, min(configuration.awarenessMaxMultiplier - 1, awareness + delta))
    }

    /// Runs a probe for another member: ping the target, relay its ack, or nack when it stays silent.
    mutating func relayProbe(
        sequence originSequence: UInt32,
        target: String,
        targetAddress: String,
        origin: String,
        now: GossipInstant
    ) {
        let sequence = makeSequence()
        counters.indirectProbes += 1
        // Answer before the origin's own period ends, so the nack counts (memberlist uses 80 % of the timeout).
        relayedProbes[sequence] = RelayedProbe(
            originAddress: origin,
            originSequence: originSequence,
            deadline: now + configuration.probeTimeout.scaled(by: 0.8)
        )
        send([.ping(sequence: sequence, target: target)], to: targetAddress)
    }

    mutating func expireRelayedProbes(now: GossipInstant) {
        // In sequence order: dictionary order differs between runs, and a replayed run must send the same messages.
        for sequence in relayedProbes.keys.sorted() where now >= relayedProbes[sequence]!.deadline {
            let relayed = relayedProbes.removeValue(forKey: sequence)!
            send([.nack(sequence: relayed.originSequence, refused: false)], to: relayed.originAddress)
        }
    }

    mutating func makeSequence() -> UInt32 {
        nextSequence &+= 1
        return nextSequence
    }

    // MARK: Dissemination

    /// Sends pending updates to `gossipNodes` random members, including recently dead ones so that a member declared
    /// dead by mistake hears it and refutes.
    mutating func gossip(now: GossipInstant) {
        guard !broadcasts.isEmpty else { return }
        let deadWindow = configuration.gossipToTheDeadTime
        let targets = randomMembers(count: configuration.gossipNodes) {
            $0.member.status.isActive || now < $0.statusSince + deadWindow
        }
        for target in targets {
            let updates = broadcasts.take(budget: configuration.maxPiggybackBytes, limit: retransmitLimit)
            guard !updates.isEmpty else { break }
            countLocalUpdates(in: updates)
            output.append(.send(to: target.address, messages: updates))
        }
    }

    /// Bumps this node's incarnation, queues its new state, and sends it at once rather than at the next round.
    mutating func announceLocalMember(now: GossipInstant) {
        localMember.incarnation += 1
        localUpdateTransmissions = 0
        broadcasts.enqueue(.alive(localMember))
        gossip(now: now)
    }

    /// Announces this node's metadata change now, or, when the last announcement is less than a gossip interval old,
    /// with the next one: a burst of changes costs one incarnation and one round of messages, not one each.
    mutating func announceMetadataChange(now: GossipInstant) {
        if let last = lastMetadataAnnouncementAt, now < last + configuration.gossipInterval {
            pendingMetadataAnnouncementAt = last + configuration.gossipInterval
            return
        }
        lastMetadataAnnouncementAt = now
        announceLocalMember(now: now)
    }

    mutating func startPushPull(now: GossipInstant) {
        guard !isLeaving, let partner = randomActiveMembers(count: 1, excluding: []).first else { return }
        counters.pushPulls += 1
        send(
            [.pushPull(isResponse: false, isJoin: false, members: fullState(now: now))],
            to: partner.address,
            piggyback: false
        )
    }

    /// This node's whole view for a full-state exchange: itself, the active members, and members that died or left
    /// recently enough to still be gossiped about.
    func fullState(now: GossipInstant) -> [Member] {
        [localMember]
            + records.values.filter {
                $0.member.status.isActive || now < $0.statusSince + configuration.gossipToTheDeadTime
            }.map(\.member).sorted { $0.name < $1.name }
    }

    mutating func randomActiveMembers(count: Int, excluding excluded: Set<String>) -> [Member] {
        randomMembers(count: count) { $0.member.status == .alive && !excluded.contains($0.member.name) }
    }

    // MARK: Housekeeping

    /// Forgets members that died or left longer ago than `gossipToTheDeadTime`.
    mutating func forgetDeparted(now: GossipInstant) {
        let departed = records.values.filter {
            !$0.member.status.isActive && now >= $0.statusSince + configuration.gossipToTheDeadTime
        }
        for record in departed { forget(record.member.name) }
    }

    /// Drops this node's metadata tombstones older than `metadataTombstoneTTL`. Other members drop them with the next
    /// update, which carries the whole map.
    mutating func expireTombstones(now: GossipInstant) {
        for (key, expiry) in tombstoneExpiry where now >= expiry {
            tombstoneExpiry[key] = nil
            localMember.metadata[key] = nil
        }
    }
}
