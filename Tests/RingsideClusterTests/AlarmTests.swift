import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

@testable import RingsideCluster

/// The protocol driver's sleep: it ends at its deadline, or earlier when woken. Every sleep below that must be cut
/// short has a deadline a minute away and must end within ten seconds; one that does not fails the test then.
@Suite("Alarm")
struct AlarmTests {
    static let far = TimeAmount.seconds(60)
    static let prompt = Duration.seconds(10)

    /// Starts a sleep until `far` from now and returns when it has ended.
    static func sleeper(_ alarm: Alarm) -> Task<Void, Never> {
        Task { await alarm.sleep(until: .now() + far) }
    }

    /// Waits until `alarm` has a sleeper (a sleeper's deadline is what a bring-forward compares with).
    static func waitForSleeper(_ alarm: Alarm) async throws {
        let deadline = ContinuousClock.now + prompt
        while !alarm.hasSleeper {
            guard ContinuousClock.now < deadline else { throw AlarmTimeout() }
            await Task.yield()
        }
    }

    struct AlarmTimeout: Error {}

    /// Whether `task` ends within `prompt`, polled (a sleeper left asleep fails the test instead of hanging it).
    static func endsPromptly(_ task: Task<Void, Never>) async -> Bool {
        let ended = NIOLockedValueBox(false)
        Task {
            await task.value
            ended.withLockedValue { $0 = true }
        }
        let deadline = ContinuousClock.now + prompt
        while !ended.withLockedValue({ $0 }) {
            guard ContinuousClock.now < deadline else { return false }
            try? await Task.sleep(for: .milliseconds(2))
        }
        return true
    }

    @Test func endsAtItsDeadline() async {
        let alarm = Alarm(loop: MultiThreadedEventLoopGroup.singleton.next())
        let start = NIODeadline.now()
        await alarm.sleep(until: start + .milliseconds(50))
        #expect(NIODeadline.now() >= start + .milliseconds(50))
    }

    @Test func anEarlierDeadlineWakesIt() async throws {
        let alarm = Alarm(loop: MultiThreadedEventLoopGroup.singleton.next())
        let task = Self.sleeper(alarm)
        try await Self.waitForSleeper(alarm)
        alarm.bringForward(to: .now() + Self.far + .seconds(1))  // later than its deadline: no effect
        #expect(alarm.hasSleeper)
        alarm.bringForward(to: .now())
        #expect(await Self.endsPromptly(task))
    }

    @Test func aRingWithNobodyAsleepEndsTheNextSleep() async {
        let alarm = Alarm(loop: MultiThreadedEventLoopGroup.singleton.next())
        alarm.ring()
        #expect(await Self.endsPromptly(Self.sleeper(alarm)))
    }

    /// An input that brings the deadline forward between the driver reading it and going to sleep is not lost: the
    /// sleep that follows ends by the earlier deadline.
    @Test func anEarlierDeadlineWhileNobodySleepsShortensTheNextSleep() async {
        let alarm = Alarm(loop: MultiThreadedEventLoopGroup.singleton.next())
        alarm.bringForward(to: .now())
        #expect(await Self.endsPromptly(Self.sleeper(alarm)))
    }

    @Test func cancellingTheTaskWakesIt() async throws {
        let alarm = Alarm(loop: MultiThreadedEventLoopGroup.singleton.next())
        let task = Self.sleeper(alarm)
        try await Self.waitForSleeper(alarm)
        task.cancel()
        #expect(await Self.endsPromptly(task))
    }

    @Test func aLoopThatShutDownDoesNotLeaveItAsleep() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let alarm = Alarm(loop: group.next())
        let task = Self.sleeper(alarm)
        try await Self.waitForSleeper(alarm)
        try await group.shutdownGracefully()
        #expect(await Self.endsPromptly(task))
    }
}
