import RingsideMembership
import RingsideSimulation
import Testing

/// Where the transport proves who sent an envelope (mutual TLS), a member enters the view only on its own word.
@Suite("Members introduce themselves")
struct IntroductionTests {
    static let start = GossipInstant(nanoseconds: 0)

    /// A node at 10.0.0.1 that knows `honest` (10.0.0.2), alive, and `evil` (10.0.0.66).
    static func node(introducing: Bool = true) -> SWIMInstance {
        var configuration = MembershipConfiguration(nodeName: "node-1", advertiseAddress: "10.0.0.1:7401")
        configuration.membersIntroduceThemselves = introducing
        var node = SWIMInstance(configuration: configuration, now: start, seed: 7)
        for (name, address) in [("honest", "10.0.0.2:7401"), ("evil", "10.0.0.66:7401")] {
            _ = node.receive(envelope(from: name, [.alive(member(name, at: address, incarnation: 1))]), now: start)
        }
        return node
    }

    static func member(_ name: String, at address: String, incarnation: UInt64) -> Member {
        Member(name: name, address: address, incarnation: incarnation, status: .alive, state: .participant)
    }

    static func envelope(from sender: String, _ messages: [GossipMessage]) -> GossipEnvelope {
        let address = sender == "evil" ? "10.0.0.66:7401" : "10.0.0.2:7401"
        return GossipEnvelope(clusterName: "ringside", senderName: sender, senderAddress: address, messages: messages)
    }

    /// The addresses a node was told to send a full-state request to.
    static func pushPullsAsked(in directives: [MembershipDirective]) -> [String] {
        directives.compactMap { directive in
            guard case .send(let address, let messages) = directive,
                messages.contains(where: {
                    if case .pushPull(isResponse: false, _, _) = $0 { return true }
                    return false
                })
            else { return nil }
            return address
        }
    }

    @Test func aMemberHeardOfSecondHandIsAskedAndEntersOnItsOwnAnswer() {
        var node = Self.node()
        let ghost = Self.member("ghost", at: "10.0.0.99:7401", incarnation: 5)
        let relayed = node.receive(Self.envelope(from: "evil", [.alive(ghost)]), now: Self.start)
        #expect(node.member(named: "ghost") == nil)
        #expect(Self.pushPullsAsked(in: relayed) == ["10.0.0.99:7401"])
        // The same claim again within the probe interval asks nobody again.
        let again = node.receive(Self.envelope(from: "evil", [.alive(ghost)]), now: Self.start)
        #expect(Self.pushPullsAsked(in: again).isEmpty)
        // A full state carrying it is hearsay too.
        let full = GossipMessage.pushPull(isResponse: true, isJoin: false, members: [ghost])
        _ = node.receive(Self.envelope(from: "evil", [full]), now: Self.start)
        #expect(node.member(named: "ghost") == nil)
        // Its own word (the transport proved the sender's name) is taken.
        let own = GossipEnvelope(
            clusterName: "ringside",
            senderName: "ghost",
            senderAddress: "10.0.0.99:7401",
            messages: [full]
        )
        _ = node.receive(own, now: Self.start)
        #expect(node.member(named: "ghost")?.status == .alive)
    }

    @Test func aRelayedMoveToAnotherAddressIsCheckedThereFirst() {
        var node = Self.node()
        let moved = Self.member("honest", at: "10.0.0.66:9999", incarnation: 2)
        let relayed = node.receive(Self.envelope(from: "evil", [.alive(moved)]), now: Self.start)
        #expect(node.member(named: "honest")?.address == "10.0.0.2:7401")
        #expect(Self.pushPullsAsked(in: relayed) == ["10.0.0.66:9999"])
        // What a live member at its known address says of itself still spreads by relay: its state and incarnation.
        var terminating = Self.member("honest", at: "10.0.0.2:7401", incarnation: 3)
        terminating.state = .terminating
        _ = node.receive(Self.envelope(from: "evil", [.alive(terminating)]), now: Self.start)
        #expect(node.member(named: "honest")?.state == .terminating)
        #expect(node.member(named: "honest")?.incarnation == 3)
    }

    @Test func aFloodOfClaimsAsksABoundedNumberOfAddresses() {
        var node = Self.node()
        let ghosts = (0..<1000).map {
            Self.member("ghost-\($0)", at: "10.1.\($0 / 256).\($0 % 256):7401", incarnation: 1)
        }
        let directives = node.receive(
            Self.envelope(from: "evil", [.pushPull(isResponse: true, isJoin: false, members: ghosts)]),
            now: Self.start
        )
        #expect(Self.pushPullsAsked(in: directives).count == 64)
        #expect(!node.members.contains { $0.name.hasPrefix("ghost") })
    }

    @Test func aClusterOfSelfIntroducingMembersFormsAndTakesBackARestartedNode() {
        let simulator = ClusterSimulator(seed: 11)
        let names = (0..<10).map { "node-\($0)" }
        let introducing: (inout MembershipConfiguration) -> Void = { $0.membersIntroduceThemselves = true }
        for name in names { simulator.addNode(name, configure: introducing) }
        for name in names.dropFirst() { simulator.join(name, seeds: ["node-0"]) }
        let formed = simulator.run(until: { simulator.allSee(names, active: names) }, timeout: .seconds(30))
        #expect(formed != nil)
        simulator.crash("node-4")
        let survivors = names.filter { $0 != "node-4" }
        #expect(simulator.run(until: { simulator.allSee(survivors, active: survivors) }, timeout: .seconds(30)) != nil)
        // Dead everywhere, it comes back through one seed; the others hear of it second-hand and ask it.
        simulator.restart("node-4", configure: introducing)
        simulator.join("node-4", seeds: ["node-0"])
        #expect(simulator.run(until: { simulator.allSee(names, active: names) }, timeout: .seconds(30)) != nil)
    }

    @Test func withoutProvenSendersRelayedMembersAreTakenAsSWIMSpreadsThem() {
        var node = Self.node(introducing: false)
        let other = Self.member("other", at: "10.0.0.3:7401", incarnation: 1)
        _ = node.receive(Self.envelope(from: "honest", [.alive(other)]), now: Self.start)
        #expect(node.member(named: "other")?.status == .alive)
    }
}
