import NIOCore
import Testing

@testable import RingsideProxy

/// The node's drain, decided without sockets: `running → draining → leaving → stopped`.
@Suite("A node's drain, step by step")
struct DrainLifecycleTests {
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    @Test func aDrainLeavesOncePeersHeardAndNothingIsUnderWay() {
        var drain = DrainLifecycle()
        #expect(drain.phase == .running)
        #expect(drain.check(inFlight: 0, now: start) == nil, "no drain, nothing to check")
        #expect(drain.drainRequested(by: "admin", timeout: .seconds(30), now: start) == .beginDrain)
        #expect(drain.drainRequested(by: "SIGTERM", timeout: .seconds(1), now: start) == nil, "one drain at a time")
        #expect(drain.trigger == "admin")
        #expect(drain.check(inFlight: 0, now: start + .milliseconds(1)) == nil, "peers have not been told yet")
        drain.announced()
        #expect(drain.check(inFlight: 2, now: start + .milliseconds(2)) == nil, "two requests under way")
        let deadline = start + .seconds(30)
        #expect(drain.check(inFlight: 0, now: start + .milliseconds(3)) == .leave(deadline: deadline))
        #expect(drain.phase == .leaving)
        #expect(drain.check(inFlight: 0, now: start + .milliseconds(4)) == nil, "it leaves once")
        drain.stopped(cut: 0, now: start + .milliseconds(9))
        #expect(drain.phase == .stopped)
        #expect(drain.exitCode == 0)
        #expect(!drain.timedOut)
    }

    @Test func aDrainPastItsTimeoutLeavesAnywayAndExitsThree() {
        var drain = DrainLifecycle()
        _ = drain.drainRequested(by: "SIGTERM", timeout: .seconds(2), now: start)
        // Even before peers have heard: the time is up.
        #expect(drain.check(inFlight: 4, now: start + .seconds(2)) == .leave(deadline: start + .seconds(2)))
        #expect(drain.timedOut)
        drain.stopped(cut: 4, now: start + .seconds(3))
        #expect(drain.cut == 4)
        #expect(drain.exitCode == 3)
    }

    @Test func aSecondSignalStopsAtOnceCuttingWhatIsUnderWay() {
        var drain = DrainLifecycle()
        #expect(drain.signal("SIGTERM", timeout: .seconds(30), inFlight: 5, now: start) == .beginDrain)
        #expect(drain.signal("SIGINT", timeout: .seconds(30), inFlight: 5, now: start + .seconds(1)) == .stopNow)
        #expect(drain.phase == .stopped)
        #expect(drain.cut == 5)
        #expect(drain.exitCode == 3)
        #expect(drain.signal("SIGTERM", timeout: .seconds(30), inFlight: 0, now: start + .seconds(2)) == nil)
        // The drain's own end, arriving later, changes nothing.
        drain.stopped(cut: 0, now: start + .seconds(3))
        #expect(drain.cut == 5)
    }

    /// `ringside drain` (or `POST /v1/drain`) first, then the supervisor's SIGTERM (Kubernetes sends it once the
    /// preStop hook is over, systemd at `systemctl stop`): that signal is the drain's own, not a second one.
    @Test func aDrainBegunByTheAdminPlaneTakesItsFirstSignalAsItsOwn() {
        var drain = DrainLifecycle()
        #expect(drain.drainRequested(by: "admin", timeout: .seconds(30), now: start) == .beginDrain)
        #expect(drain.signal("SIGTERM", timeout: .seconds(30), inFlight: 2, now: start + .seconds(1)) == nil)
        #expect(drain.phase == .draining)
        #expect(drain.signal("SIGTERM", timeout: .seconds(30), inFlight: 2, now: start + .seconds(2)) == .stopNow)
        #expect(drain.cut == 2)
    }

    @Test func aSecondSignalWithNothingUnderWayExitsCleanly() {
        var drain = DrainLifecycle()
        _ = drain.signal("SIGTERM", timeout: .seconds(30), inFlight: 0, now: start)
        _ = drain.check(inFlight: 0, now: start)
        #expect(drain.signal("SIGTERM", timeout: .seconds(30), inFlight: 0, now: start) == .stopNow)
        #expect(drain.exitCode == 0)
    }
}
