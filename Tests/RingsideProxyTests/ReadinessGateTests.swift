import Testing

@testable import RingsideProxy

@Suite("The readiness gate")
struct ReadinessGateTests {
    @Test func aNodeWaitsForItsSeedsAndForTheSizeItWasGiven() {
        // Seeds that never answered: not ready, whatever the size.
        #expect(
            ReadinessGate.problem(seeds: ["nosuch:7401"], joined: false, members: 1, waitForSize: 1, waitedOut: false)
                == "its seeds (nosuch:7401) have not answered"
        )
        // Joined, but fewer members than asked for.
        #expect(
            ReadinessGate.problem(seeds: ["a:1"], joined: true, members: 2, waitForSize: 3, waitedOut: false)
                == "it sees 2 of the 3 members it waits for"
        )
        #expect(
            ReadinessGate.problem(seeds: ["a:1"], joined: true, members: 3, waitForSize: 3, waitedOut: false) == nil
        )
        // No seeds: the first node of a cluster is ready alone with the default size.
        #expect(ReadinessGate.problem(seeds: [], joined: false, members: 1, waitForSize: 1, waitedOut: false) == nil)
        // The wait timed out: ready regardless.
        #expect(
            ReadinessGate.problem(seeds: ["a:1"], joined: false, members: 1, waitForSize: 5, waitedOut: true) == nil
        )
    }
}
