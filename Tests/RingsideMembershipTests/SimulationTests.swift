import RingsideMembership
import RingsideSharding
import RingsideSimulation
import Testing

extension ClusterSimulator {
    /// Starts `count` nodes named `node-0`…, each joining through `node-0`, and runs until all see all.
    @discardableResult
    func startConverged(_ count: Int) -> [String] {
        let names = (0..<count).map { "node-\($0)" }
        for name in names { addNode(name) }
        for name in names.dropFirst() { join(name, seeds: ["node-0"]) }
        let converged = run(until: { self.allSee(names, active: names) }, timeout: .seconds(60))
        precondition(converged != nil, "the cluster did not form")
        return names
    }

    /// Whether every node in `observers` sees exactly `active` as its active members.
    func allSee(_ observers: [String], active: [String]) -> Bool {
        let expected = Set(active)
        return observers.allSatisfy { Set(node($0).activeMembers.map(\.name)) == expected }
    }

    /// Whether every node in `observers` sees `name` and `check` holds for what it sees.
    func allSee(_ observers: [String], member name: String, _ check: (Member) -> Bool) -> Bool {
        observers.allSatisfy { observer in node(observer).member(named: name).map(check) ?? false }
    }

    func events(about name: String) -> [MembershipEvent] {
        events.map(\.event).filter { $0.member.name == name }
    }
}

extension MembershipEvent {
    var isDeparture: Bool {
        if case .left = self { return true }
        return false
    }

    var member: Member {
        switch self {
        case .joined(let member), .left(let member), .stateChanged(let member, _), .metadataChanged(let member),
            .suspected(let member), .alive(let member), .died(let member):
            member
        }
    }
}

@Suite("Membership in the simulator")
struct SimulationTests {
    @Test func joinAndStateChangesConverge() throws {
        let simulator = ClusterSimulator(seed: 1)
        let names = simulator.startConverged(10)
        try simulator.changeState("node-3", to: .terminating)
        let seen = simulator.run(
            until: { simulator.allSee(names, member: "node-3") { $0.state == .terminating } },
            timeout: .seconds(10)
        )
        #expect(seen != nil)
        #expect(throws: ShardingError.self) { try simulator.changeState("node-3", to: .participant) }
    }

    @Test func aCrashedProcessIsDeclaredDeadByAllQuickly() {
        let simulator = ClusterSimulator(seed: 2)
        let names = simulator.startConverged(10)
        simulator.crash("node-4")
        let survivors = names.filter { $0 != "node-4" }
        let detected = simulator.run(
            until: { simulator.allSee(survivors, member: "node-4") { $0.status == .dead } },
            timeout: .seconds(60)
        )
        // Refused connections from the prober and its helpers skip the suspicion timeout (4 s here).
        #expect(detected != nil)
        #expect(detected.map { $0 < .seconds(4) } == true)
    }

    @Test func aSilentHostIsDeclaredDeadThroughSuspicion() {
        let simulator = ClusterSimulator(seed: 3)
        let names = simulator.startConverged(10)
        simulator.crash("node-7", hostDown: true)
        let survivors = names.filter { $0 != "node-7" }
        let detected = simulator.run(
            until: { simulator.allSee(survivors, member: "node-7") { $0.status == .dead } },
            timeout: .seconds(60)
        )
        #expect(detected != nil)
        #expect(simulator.events(about: "node-7").contains { if case .suspected = $0 { true } else { false } })
    }

    @Test func aPausedNodeThatResumesInTimeRefutes() {
        let simulator = ClusterSimulator(seed: 4)
        let names = simulator.startConverged(10)
        simulator.pause("node-2")
        simulator.run(
            until: { simulator.events(about: "node-2").contains { if case .suspected = $0 { true } else { false } } },
            timeout: .seconds(10)
        )
        simulator.resume("node-2")
        simulator.run(for: .seconds(60))
        #expect(simulator.events(about: "node-2").contains { if case .suspected = $0 { true } else { false } })
        #expect(!simulator.events(about: "node-2").contains { if case .died = $0 { true } else { false } })
        #expect(simulator.allSee(names, member: "node-2") { $0.status == .alive })
        #expect(simulator.node("node-2").counters.refutations >= 1)
    }

    @Test func aPartitionHealsAfterItEnds() {
        let simulator = ClusterSimulator(seed: 5)
        let names = simulator.startConverged(10)
        simulator.rejoin(every: .seconds(15), seeds: ["node-0", "node-5"])
        let left = Array(names.prefix(5))
        let right = Array(names.suffix(5))
        simulator.partition([left, right])
        let split = simulator.run(
            until: { simulator.allSee(left, active: left) && simulator.allSee(right, active: right) },
            timeout: .seconds(120)
        )
        #expect(split != nil)
        simulator.heal()
        let healed = simulator.run(until: { simulator.allSee(names, active: names) }, timeout: .seconds(120))
        #expect(healed != nil)
    }

    @Test func fivePercentLossDeclaresNoLiveNodeDead() {
        let simulator = ClusterSimulator(seed: 6)
        let names = simulator.startConverged(20)
        simulator.loss = 0.05
        simulator.run(for: .seconds(600))
        #expect(!simulator.events.contains { if case .died = $0.event { true } else { false } })
        #expect(simulator.allSee(names, active: names))
    }

    @Test func aRestartedNodeSupersedesItsOldSelf() throws {
        let simulator = ClusterSimulator(seed: 7)
        let names = simulator.startConverged(8)
        // The old process moved on before it died; the new one starts from scratch at incarnation 0.
        try simulator.changeState("node-5", to: .terminating)
        simulator.run(
            until: { simulator.allSee(names, member: "node-5") { $0.state == .terminating } },
            timeout: .seconds(10)
        )
        let old = simulator.node("node-1").member(named: "node-5")!
        simulator.crash("node-5")
        simulator.restart("node-5", state: .viewer)
        simulator.join("node-5", seeds: ["node-0"])
        let superseded = simulator.run(
            until: {
                simulator.allSee(names, member: "node-5") {
                    $0.status == .alive && $0.state == .viewer && $0.incarnation > old.incarnation
                }
            },
            timeout: .seconds(30)
        )
        #expect(superseded != nil)
    }

    @Test func aNodeOfAnotherClusterNeverMerges() {
        let simulator = ClusterSimulator(seed: 8)
        let names = simulator.startConverged(5)
        simulator.addNode("intruder") { $0.clusterName = "staging" }
        simulator.join("intruder", seeds: ["node-0"])
        simulator.run(for: .seconds(30))
        #expect(simulator.allSee(names, active: names))
        #expect(simulator.node("intruder").activeMembers.map(\.name) == ["intruder"])
        let rejection = simulator.rejections.first { $0.node == "node-0" }?.rejection
        #expect(rejection?.senderName == "intruder")
        #expect(rejection?.reason.contains("\"staging\"") == true)
        #expect(rejection?.reason.contains("\"ringside\"") == true)
    }

    @Test func aLeavingNodeIsGoneAtOnce() {
        let simulator = ClusterSimulator(seed: 9)
        let names = simulator.startConverged(10)
        simulator.leave("node-6")
        let others = names.filter { $0 != "node-6" }
        let gone = simulator.run(
            until: { simulator.allSee(others, member: "node-6") { $0.status == .left && $0.state == .gone } },
            timeout: .seconds(10)
        )
        #expect(gone.map { $0 < .seconds(1) } == true)
        #expect(simulator.node("node-6").hasDisseminatedLocalUpdate)
    }

    /// A node that left stops as soon as its news has gone out, so a member that has not heard yet may probe it and be
    /// refused, directly and through every helper. Helpers that know it left say so; a member that took the refusals
    /// for a death (or heard of that death first) corrects it when the departure arrives. In the end every member
    /// has it departed, and reported that last.
    @Test(arguments: 1...40)
    func aNodeThatLeftAndStoppedIsReportedLeftByAll(seed: UInt64) {
        let simulator = ClusterSimulator(seed: seed)
        let names = simulator.startConverged(10)
        simulator.leave("node-9")
        let disseminated = simulator.run(
            until: { simulator.node("node-9").hasDisseminatedLocalUpdate },
            timeout: .seconds(10)
        )
        #expect(disseminated != nil)
        simulator.crash("node-9")
        let others = names.filter { $0 != "node-9" }
        let departed = simulator.run(
            until: { simulator.allSee(others, member: "node-9") { $0.status == .left && $0.state == .gone } },
            timeout: .seconds(30)
        )
        #expect(departed != nil)
        simulator.run(for: .seconds(5))
        for observer in others {
            let last = simulator.events.last { $0.node == observer && $0.event.member.name == "node-9" }?.event
            #expect(last?.isDeparture == true, "\(observer) reported \(String(describing: last)) last")
        }
    }

    /// Four nodes after node-3 left, and what node-0 answers node-1 when handed `message`.
    func answerAboutADepartedMember(
        _ message: GossipMessage
    ) -> (answer: [GossipMessage], probed: Bool, incarnation: UInt64) {
        let simulator = ClusterSimulator(seed: 11)
        simulator.startConverged(4)
        simulator.leave("node-3")
        let departed = simulator.run(
            until: { simulator.allSee(["node-0", "node-1"], member: "node-3") { $0.status == .left } },
            timeout: .seconds(10)
        )
        #expect(departed != nil)
        var helper = simulator.node("node-0")
        let asker = ClusterSimulator.address(of: "node-1")
        let directives = helper.receive(
            GossipEnvelope(
                clusterName: helper.configuration.clusterName,
                senderName: "node-1",
                senderAddress: asker,
                messages: [message]
            ),
            now: simulator.now
        )
        var answer: [GossipMessage] = []
        var probed = false
        for case .send(let address, let messages) in directives {
            if address == asker { answer += messages }
            if address == ClusterSimulator.address(of: "node-3") { probed = true }
        }
        return (answer, probed, helper.member(named: "node-3")?.incarnation ?? 0)
    }

    /// Asked to probe a member it knows has left, a helper passes on the departure (and a nack) instead of probing an
    /// address that may refuse, which the asker would take, with its own refusal, for a death.
    @Test func aHelperAskedToProbeADepartedMemberPassesOnTheDeparture() {
        let (answer, probed, incarnation) = answerAboutADepartedMember(
            .pingRequest(sequence: 77, target: "node-3", targetAddress: ClusterSimulator.address(of: "node-3"))
        )
        #expect(!probed)
        #expect(answer.contains(.dead(name: "node-3", incarnation: incarnation, from: "node-3")))
        #expect(answer.contains(.nack(sequence: 77, refused: false)))
    }

    /// A member that spreads the death of a member this node knows left later hears of the departure at once.
    @Test func aDeathRumorOlderThanADepartureIsAnsweredWithTheDeparture() {
        let (answer, _, incarnation) = answerAboutADepartedMember(.dead(name: "node-3", incarnation: 0, from: "node-2"))
        #expect(incarnation == 1)
        #expect(answer == [.dead(name: "node-3", incarnation: 1, from: "node-3")])
    }

    @Test func metadataAndItsDeletionPropagate() throws {
        let simulator = ClusterSimulator(seed: 10)
        let names = simulator.startConverged(10)
        try simulator.setMetadata("node-1", "zone", "eu-west-1a")
        let set = simulator.run(
            until: { simulator.allSee(names, member: "node-1") { $0.metadataValues["zone"] == "eu-west-1a" } },
            timeout: .seconds(10)
        )
        #expect(set != nil)
        simulator.deleteMetadata("node-1", "zone")
        let deleted = simulator.run(
            until: {
                simulator.allSee(names, member: "node-1") {
                    $0.metadataValues["zone"] == nil && $0.metadata["zone"]?.isDeleted == true
                }
            },
            timeout: .seconds(10)
        )
        #expect(deleted != nil)
    }

    /// A burst of changes is announced once a gossip interval, not once a change: a thousand changes in a second
    /// cost a handful of incarnations, and every member still ends with the last value.
    @Test func aBurstOfMetadataChangesIsAnnouncedOnceAGossipInterval() throws {
        let simulator = ClusterSimulator(seed: 12)
        let names = simulator.startConverged(5)
        let before = simulator.node("node-1").localMember.incarnation
        for round in 0..<1000 {
            try simulator.setMetadata("node-1", "counter", String(round))
            simulator.run(for: .milliseconds(1))
        }
        let incarnations = simulator.node("node-1").localMember.incarnation - before
        let interval = simulator.node("node-1").configuration.gossipInterval
        #expect(incarnations <= UInt64(Duration.seconds(1.1) / interval) + 1, "\(incarnations)")
        let settled = simulator.run(
            until: { simulator.allSee(names, member: "node-1") { $0.metadataValues["counter"] == "999" } },
            timeout: .seconds(10)
        )
        #expect(settled != nil)
        #expect(simulator.allSee(names, active: names))
    }

    /// The limits hold with tombstones: entries deleted and set again never grow the member past what every receiver
    /// decodes, and a change beyond the limits is refused, not half made.
    @Test func metadataStaysWithinItsLimitsTombstonesIncluded() throws {
        let simulator = ClusterSimulator(seed: 13)
        let names = simulator.startConverged(3)
        for index in 0..<400 {
            try simulator.setMetadata("node-1", "key-\(index)", "value")
            simulator.deleteMetadata("node-1", "key-\(index)")
        }
        let metadata = simulator.node("node-1").localMember.metadata
        #expect(metadata.count <= MetadataLimits.maxEntries)
        for index in 0..<MetadataLimits.maxEntries { try simulator.setMetadata("node-1", "live-\(index)", "v") }
        #expect(throws: MetadataRefusal.self) { try simulator.setMetadata("node-1", "one-more", "v") }
        #expect(simulator.node("node-1").localMember.metadataValues["one-more"] == nil)
        #expect(throws: MetadataRefusal.self) {
            try simulator.setMetadata(
                "node-1",
                "live-0",
                String(repeating: "x", count: MetadataLimits.maxValueBytes + 1)
            )
        }
        #expect(throws: MetadataRefusal.self) { try simulator.setMetadata("node-1", "..", "v") }
        #expect(throws: MetadataRefusal.self) { try simulator.setMetadata("node-1", "a b", "v") }
        let settled = simulator.run(
            until: {
                simulator.allSee(names, member: "node-1") { $0.metadataValues.count == MetadataLimits.maxEntries }
            },
            timeout: .seconds(10)
        )
        #expect(settled != nil)
        #expect(simulator.allSee(names, active: names))
    }

    @Test func theSameSeedReplaysTheSameRun() {
        func run() -> [String] {
            let simulator = ClusterSimulator(seed: 11)
            simulator.loss = 0.02
            simulator.startConverged(6)
            simulator.crash("node-2", hostDown: true)
            simulator.run(for: .seconds(30))
            return simulator.events.map { "\($0.time) \($0.node) \($0.event)" }
        }
        #expect(run() == run())
    }
}
