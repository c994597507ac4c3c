import RingsideSharding

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension SWIMInstance {
    mutating func handle(_ message: GossipMessage, from envelope: GossipEnvelope, now: GossipInstant) {
        switch message {
        case .ping(let sequence, let target):
            // A ping for another name reached a new process on a reused address: stay silent, as a dead node would.
            guard target == localMember.name, !isLeaving else { return }
            send([.ack(sequence: sequence)], to: envelope.senderAddress)
        case .ack(let sequence):
            if let relayed = relayedProbes.removeValue(forKey: sequence) {
                send([.ack(sequence: relayed.originSequence)], to: relayed.originAddress)
            } else {
                probeAcknowledged(sequence: sequence)
            }
        case .nack(let sequence, let refused):
            probeNacked(sequence: sequence, refused: refused, now: now)
        case .pingRequest(let sequence, let target, let targetAddress):
            guard !isLeaving else { return }
            if let departure = departure(of: target) {
                // The target left and may have stopped listening: probed, it would refuse here as it did for the
                // origin, which would take refusals everywhere for a death. Pass on the departure instead, with a
                // nack for the origin's Lifeguard count.
                send([departure.news, .nack(sequence: sequence, refused: false)], to: envelope.senderAddress)
                return
            }
            relayProbe(
                sequence: sequence,
                target: target,
                targetAddress: targetAddress,
                origin: envelope.senderAddress,
                now: now
            )
        case .alive(let member):
            applyAlive(member, from: envelope.senderName, now: now)
        case .suspect(let name, let incarnation, let from):
            correctOutdatedRumor(about: name, incarnation: incarnation, sender: envelope.senderAddress)
            applySuspect(name: name, incarnation: incarnation, from: from, now: now)
        case .dead(let name, let incarnation, let from):
            correctOutdatedRumor(about: name, incarnation: incarnation, sender: envelope.senderAddress)
            applyDead(name: name, incarnation: incarnation, from: from, now: now)
        case .pushPull(let isResponse, let isJoin, let members):
            if isResponse && isJoin { joinAnswered(now: now) }
            if !isResponse {
                counters.pushPulls += 1
                send(
                    [.pushPull(isResponse: true, isJoin: isJoin, members: fullState(now: now))],
                    to: envelope.senderAddress,
                    piggyback: false
                )
            }
            merge(members, from: envelope.senderName, now: now)
        }
    }

    /// Answers a sender that still spreads a suspicion or death of this node that this node has already refuted:
    /// its current state goes straight back, so the sender stops. Likewise for a member this node knows left after
    /// the rumor's incarnation: the departure goes back (a member that took the leaver's closed port for a death
    /// learns it left).
    mutating func correctOutdatedRumor(about name: String, incarnation: UInt64, sender: String) {
        if name == localMember.name {
            guard !isLeaving, incarnation < localMember.incarnation else { return }
            send([.alive(localMember)], to: sender, piggyback: false)
        } else if let departure = departure(of: name), incarnation < departure.incarnation {
            send([departure.news], to: sender, piggyback: false)
        }
    }

    /// When `name` left as far as this node knows: the news of it (the member's own `dead`) and its incarnation.
    func departure(of name: String) -> (news: GossipMessage, incarnation: UInt64)? {
        guard let member = records[name]?.member, member.status == .left else { return nil }
        return (.dead(name: name, incarnation: member.incarnation, from: name), member.incarnation)
    }

    /// A member's own announcement of its state, as `sender` passed it on: accepted when newer than what this node
    /// knows (and, where members introduce themselves, when it is the member's own word or changes nothing but what
    /// a live member at a known address says of itself).
    mutating func applyAlive(_ announced: Member, from sender: String, now: GossipInstant) {
        var member = announced
        member.status = .alive
        if member.name == localMember.name {
            // Someone believes something about this node; if it is not this node's current state, supersede it.
            guard !isLeaving, member.incarnation >= localMember.incarnation, member != localMember else { return }
            // This node's own last announcement, from before changes whose announcement is due: that supersedes it.
            if member.incarnation == localMember.incarnation, pendingMetadataAnnouncementAt != nil { return }
            refute(incarnation: member.incarnation, now: now)
            return
        }
        if configuration.membersIntroduceThemselves, sender != member.name {
            let known = records[member.name]?.member
            if known?.status.isActive != true || known?.address != member.address {
                guard known.map({ member.incarnation > $0.incarnation }) ?? true else { return }
                askToIntroduce(member.address, now: now)
                return
            }
        }
        guard let known = records[member.name]?.member else {
            store(Record(member: member, statusSince: now))
            enqueueLearned(.alive(member), now: now)
            emit(.joined(member))
            return
        }
        guard member.incarnation > known.incarnation else { return }
        store(Record(member: member, statusSince: known.status == .alive ? records[member.name]!.statusSince : now))
        suspicions[member.name] = nil
        enqueueLearned(.alive(member), now: now)
        switch known.status {
        case .suspect: emit(.alive(member))
        case .dead, .left: emit(.joined(member))
        case .alive: break
        }
        if known.state != member.state { emit(.stateChanged(member, from: known.state)) }
        if known.metadata != member.metadata { emit(.metadataChanged(member)) }
    }

    /// `from` suspects `name`: start (or confirm) a suspicion, or refute it when it is about this node.
    mutating func applySuspect(name: String, incarnation: UInt64, from: String, now: GossipInstant) {
        if name == localMember.name {
            guard !isLeaving, incarnation >= localMember.incarnation else { return }
            adjustAwareness(by: 1)
            refute(incarnation: incarnation, now: now)
            return
        }
        guard var record = records[name], record.member.status.isActive, incarnation >= record.member.incarnation
        else { return }
        if record.member.status == .suspect, incarnation == record.member.incarnation {
            if suspicions[name]?.confirm(from: from) == true {
                enqueueLearned(.suspect(name: name, incarnation: incarnation, from: from), now: now)
            }
            return
        }
        record.member.incarnation = incarnation
        record.member.status = .suspect
        record.statusSince = now
        store(record)
        suspicions[name] = makeSuspicion(incarnation: incarnation, from: from, now: now)
        if from == localMember.name {
            counters.suspicions += 1
        } else {
            probeQueue.append(name)
        }
        enqueueLearned(.suspect(name: name, incarnation: incarnation, from: from), now: now)
        emit(.suspected(record.member))
    }

    /// `from` declares `name` dead (or, when `from == name`, `name` left): drop it from views, or refute when it is
    /// about this node.
    mutating func applyDead(name: String, incarnation: UInt64, from: String, now: GossipInstant) {
        if name == localMember.name {
            guard !isLeaving, incarnation >= localMember.incarnation else { return }
            refute(incarnation: incarnation, now: now)
            return
        }
        let leaving = from == name
        guard var record = records[name], incarnation >= record.member.incarnation else { return }
        // Dead and departed members stay so, except that a departure announced after the death this node recorded
        // corrects it: the member left and stopped listening before the news reached here, and a probe refused
        // everywhere in between read as a death.
        guard
            record.member.status.isActive
                || (leaving && record.member.status == .dead && incarnation > record.member.incarnation)
        else { return }
        record.member.incarnation = incarnation
        record.member.status = leaving ? .left : .dead
        if leaving, record.member.state.canTransition(to: .gone) { record.member.state = .gone }
        record.statusSince = now
        store(record)
        suspicions[name] = nil
        enqueueLearned(.dead(name: name, incarnation: incarnation, from: from), now: now)
        emit(leaving ? .left(record.member) : .died(record.member))
    }

    /// Queues news for others and brings the next gossip round forward to within 10 ms: each hop of an update then
    /// costs a network delay rather than half a gossip interval. The number of transmissions stays the same.
    mutating func enqueueLearned(_ update: GossipMessage, now: GossipInstant) {
        broadcasts.enqueue(update)
        nextGossipAt = min(nextGossipAt, now + .milliseconds(10))
    }

    /// Merges another node's full state, as memberlist does: its dead members are only suspected here (this node
    /// checks for itself), its departed ones are departed, and members it merely suspects that this node does not
    /// know are not learned.
    mutating func merge(_ members: [Member], from sender: String, now: GossipInstant) {
        for member in members {
            switch member.status {
            case .alive:
                applyAlive(member, from: sender, now: now)
            case .suspect, .dead:
                if member.name == localMember.name || records[member.name] != nil {
                    applySuspect(name: member.name, incarnation: member.incarnation, from: sender, now: now)
                }
            case .left:
                applyDead(name: member.name, incarnation: member.incarnation, from: member.name, now: now)
            }
        }
    }

    /// Asks the node at `address` for its full state, which it answers under its own name: how a member heard of
    /// second-hand enters the view where members introduce themselves. Each address is asked at most once a probe
    /// interval, and a flood of claims asks a bounded number of addresses.
    mutating func askToIntroduce(_ address: String, now: GossipInstant) {
        guard address != localMember.address else { return }
        let window = configuration.probeInterval
        if let asked = introductionsAsked[address], now < asked + window { return }
        if introductionsAsked.count >= Self.maxPendingIntroductions {
            introductionsAsked = introductionsAsked.filter { now < $0.value + window }
            guard introductionsAsked.count < Self.maxPendingIntroductions else { return }
        }
        introductionsAsked[address] = now
        send(
            [.pushPull(isResponse: false, isJoin: false, members: fullState(now: now))],
            to: address,
            piggyback: false
        )
    }

    /// The most addresses asked to introduce themselves within one probe interval.
    static var maxPendingIntroductions: Int { 64 }

    /// Supersedes a rumor about this node at `incarnation` by announcing itself with a higher one.
    mutating func refute(incarnation: UInt64, now: GossipInstant) {
        counters.refutations += 1
        localMember.incarnation = max(localMember.incarnation, incarnation)
        announceLocalMember(now: now)
    }

    mutating func expireSuspicions(now: GossipInstant) {
        for name in suspicions.keys.sorted() where now >= suspicions[name]!.deadline {
            let suspicion = suspicions.removeValue(forKey: name)!
            applyDead(name: name, incarnation: suspicion.incarnation, from: localMember.name, now: now)
        }
    }

    /// A suspicion timer sized by Lifeguard: at least `suspicionMultiplier × max(1, log10 n) × probeInterval`, at
    /// most `suspicionMaxTimeoutMultiplier` times that, expecting `suspicionMultiplier - 2` confirmations.
    func makeSuspicion(incarnation: UInt64, from: String, now: GossipInstant) -> Suspicion {
        let count = activeCount
        let scale = max(1, log10(Double(max(1, count))))
        let minimum = configuration.probeInterval.scaled(by: Double(configuration.suspicionMultiplier) * scale)
        let maximum = minimum * configuration.suspicionMaxTimeoutMultiplier
        var expected = configuration.suspicionMultiplier - 2
        if count - 2 < expected { expected = 0 }
        return Suspicion(
            incarnation: incarnation,
            from: from,
            start: now,
            minimum: minimum,
            maximum: maximum,
            expectedConfirmations: expected
        )
    }
}
