import Logging
import NIOConcurrencyHelpers
import NIOCore

/// A node's drain: the ``DrainLifecycle`` under a lock, the triggers (signals, the admin API, a graceful shutdown), and
/// the progress the admin API reports. ``RingsideServer`` performs what it decides.
public final class NodeDrain: Sendable {
    /// The longest a drain may wait for requests under way: a day (`drain-timeout`, `ringside drain --timeout`,
    /// `POST /v1/drain?timeout_ms=`).
    public static let longestTimeout: Duration = .seconds(86_400)

    private struct State {
        var lifecycle = DrainLifecycle()
        var finishedAtStart = 0
        var tunnelsClosed = 0
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = NIOLockedValueBox(State())
    private let actions: AsyncStream<DrainLifecycle.Action>
    private let continuation: AsyncStream<DrainLifecycle.Action>.Continuation
    let inFlight: InFlightRequests
    /// How long a drain waits for requests under way when its trigger does not say.
    public let defaultTimeout: Duration

    init(inFlight: InFlightRequests, defaultTimeout: Duration) {
        self.inFlight = inFlight
        self.defaultTimeout = defaultTimeout
        (actions, continuation) = AsyncStream.makeStream(bufferingPolicy: .unbounded)
    }

    /// Starts a drain (the first call; later ones change nothing) and returns the progress.
    @discardableResult
    public func start(by trigger: String, timeout: Duration? = nil) -> DrainProgress {
        let finished = inFlight.finished
        let action = state.withLockedValue { state in
            let action = state.lifecycle.drainRequested(by: trigger, timeout: timeout ?? defaultTimeout, now: .now())
            if action != nil { state.finishedAtStart = finished }
            return action
        }
        if let action { continuation.yield(action) }
        return progress
    }

    /// SIGTERM or SIGINT: the first drains, a second one during the drain stops at once; true then (the process exits
    /// without waiting).
    @discardableResult
    public func signal(_ name: String) -> Bool {
        let finished = inFlight.finished
        let total = inFlight.total
        let action = state.withLockedValue { state in
            let wasRunning = state.lifecycle.phase == .running
            let action = state.lifecycle.signal(name, timeout: defaultTimeout, inFlight: total, now: .now())
            if wasRunning, action != nil { state.finishedAtStart = finished }
            return action
        }
        guard let action else { return false }
        continuation.yield(action)
        guard action == .stopNow else { return false }
        continuation.finish()
        resumeWaiters()
        return true
    }

    /// Where the drain is.
    public var phase: DrainLifecycle.Phase { state.withLockedValue { $0.lifecycle.phase } }

    /// The drain's deadline, once one has begun.
    var deadline: NIODeadline? { state.withLockedValue { $0.lifecycle.deadline } }

    /// What happened so far, for `GET /v1/drain` and the log.
    public var progress: DrainProgress {
        let finished = inFlight.finished
        let counts = Dictionary(uniqueKeysWithValues: InFlightRequests.Entry.allCases.map { ($0.name, inFlight[$0]) })
        return state.withLockedValue { state in
            let lifecycle = state.lifecycle
            let now = NIODeadline.now()
            let elapsed = lifecycle.started.map { ((lifecycle.ended ?? now) - $0).nanoseconds } ?? 0
            return DrainProgress(
                state: lifecycle.phase.rawValue,
                trigger: lifecycle.trigger,
                elapsedSeconds: Double(elapsed) / 1e9,
                timeoutSeconds: lifecycle.deadline.flatMap { deadline in
                    lifecycle.started.map { Double((deadline - $0).nanoseconds) / 1e9 }
                },
                inFlight: counts,
                tunnels: inFlight.tunnels,
                // The requests cut ended too; they are not among those finished.
                finished: lifecycle.started == nil ? 0 : max(0, finished - state.finishedAtStart - lifecycle.cut),
                cut: lifecycle.cut,
                tunnelsClosed: state.tunnelsClosed,
                timedOut: lifecycle.timedOut
            )
        }
    }

    /// The exit status the drain calls for: 3 when it cut requests.
    public var exitCode: Int32 { state.withLockedValue { $0.lifecycle.exitCode } }

    /// Waits until the node has stopped (after a drain, or at once on a second signal).
    public func waitUntilStopped() async {
        await withCheckedContinuation { continuation in
            let stopped = state.withLockedValue { state in
                if state.lifecycle.phase == .stopped { return true }
                state.waiters.append(continuation)
                return false
            }
            if stopped { continuation.resume() }
        }
    }

    // MARK: For the server that performs it

    /// What to do, as it is decided.
    var decisions: AsyncStream<DrainLifecycle.Action> { actions }

    func announced() { state.withLockedValue { $0.lifecycle.announced() } }

    func check() -> DrainLifecycle.Action? {
        let total = inFlight.total
        return state.withLockedValue { $0.lifecycle.check(inFlight: total, now: .now()) }
    }

    func stopped(cut: Int, tunnelsClosed: Int) {
        state.withLockedValue {
            $0.lifecycle.stopped(cut: cut, now: .now())
            $0.tunnelsClosed = tunnelsClosed
        }
        continuation.finish()
        resumeWaiters()
    }

    private func resumeWaiters() {
        let waiters = state.withLockedValue { state in
            defer { state.waiters = [] }
            return state.lifecycle.phase == .stopped ? state.waiters : []
        }
        for waiter in waiters { waiter.resume() }
    }
}

/// A drain's progress, as `GET /v1/drain` reports it.
public struct DrainProgress: Sendable, Codable, Equatable {
    /// `running` (no drain yet), `draining`, `leaving` or `stopped`.
    public var state: String
    /// What started it: `SIGTERM`, `SIGINT`, `admin`, `shutdown`.
    public var trigger: String?
    public var elapsedSeconds: Double
    public var timeoutSeconds: Double?
    /// Requests under way, by where they came in (`app_http1`, `app_http2`, `cluster`).
    public var inFlight: [String: Int]
    /// Upgraded connections (tunnels) open: not requests; the listeners' close ends them.
    public var tunnels: Int
    /// Requests finished since the drain began.
    public var finished: Int
    /// Requests cut: under way when the listeners closed at the deadline, or when a second signal came.
    public var cut: Int
    /// Tunnels that were still open when the listeners closed.
    public var tunnelsClosed: Int
    public var timedOut: Bool

    enum CodingKeys: String, CodingKey {
        case state, trigger, finished, cut, tunnels
        case elapsedSeconds = "elapsed_seconds"
        case tunnelsClosed = "tunnels_closed"
        case timeoutSeconds = "timeout_seconds"
        case inFlight = "in_flight"
        case timedOut = "timed_out"
    }
}
