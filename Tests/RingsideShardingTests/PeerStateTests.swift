import RingsideSharding
import Testing

@Suite("Peer states")
struct PeerStateTests {
    @Test func statesOnlyMoveForward() throws {
        for from in PeerState.allCases {
            for to in PeerState.allCases {
                if to > from {
                    #expect(try from.transition(to: to) == to)
                } else {
                    let error = #expect(throws: ShardingError.self) { try from.transition(to: to) }
                    #expect(error?.code == .invalidStateTransition)
                    #expect(error?.message.contains("from \(from) to \(to)") == true)
                }
            }
        }
    }

    @Test func ownershipFollowsTheOperation() {
        #expect(!PeerState.viewer.owns(for: .read))
        #expect(!PeerState.viewer.owns(for: .readWrite))
        #expect(PeerState.participant.owns(for: .read))
        #expect(PeerState.participant.owns(for: .readWrite))
        #expect(PeerState.terminating.owns(for: .read))
        #expect(!PeerState.terminating.owns(for: .readWrite))
        #expect(!PeerState.gone.owns(for: .read))
        #expect(!PeerState.gone.owns(for: .readWrite))
    }

    @Test func namesRoundTrip() {
        for state in PeerState.allCases {
            #expect(PeerState(name: state.description) == state)
        }
        #expect(PeerState(name: "leaving") == nil)
    }
}
