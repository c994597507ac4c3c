import NIOConcurrencyHelpers
import NIOCore

/// A sleep that another thread can cut short.
///
/// The protocol driver sleeps until the protocol's next deadline; an input that brings the deadline forward, a stop,
/// or the task's cancellation wakes it at once. The timer is a scheduled task on an event loop, so a node with nothing
/// due does not wake at all (a sleep that polled for early inputs woke the node fifty times a second).
final class Alarm: Sendable {
    private struct State {
        var sleeper: CheckedContinuation<Void, Never>?
        /// When the sleeper wakes by itself.
        var wakeAt: NIODeadline?
        var timer: Scheduled<Void>?
        /// The earliest deadline it was told of while nobody slept (now, for a ring): the next sleep ends by then. The
        /// driver reads the protocol's deadline and then sleeps; an input between the two must not be lost.
        var pending: NIODeadline?
    }

    private let state = NIOLockedValueBox(State())
    private let loop: any EventLoop

    init(loop: any EventLoop) { self.loop = loop }

    /// Sleeps until `deadline`, or until ``ring()`` or ``bringForward(to:)`` wakes it, or the task is cancelled.
    /// One sleeper at a time.
    func sleep(until deadline: NIODeadline) async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let asleep = state.withLockedValue { state in
                    let deadline = min(deadline, state.pending ?? deadline)
                    state.pending = nil
                    if deadline <= .now() { return false }
                    precondition(state.sleeper == nil, "an alarm has one sleeper at a time")
                    state.sleeper = continuation
                    state.wakeAt = deadline
                    let timer = loop.scheduleTask(deadline: deadline) { [weak self] () -> Void in self?.ring() }
                    // A loop that has shut down never runs it: wake then rather than sleep for ever.
                    timer.futureResult.whenFailure { [weak self] error in
                        if let error = error as? EventLoopError, case .cancelled = error { return }
                        self?.ring()
                    }
                    state.timer = timer
                    return true
                }
                if !asleep { continuation.resume() }
            }
        } onCancel: {
            ring()
        }
    }

    /// Whether somebody sleeps on it now.
    var hasSleeper: Bool { state.withLockedValue { $0.sleeper != nil } }

    /// Wakes the sleeper if it would sleep past `deadline`; with none, the next sleep ends by `deadline`.
    func bringForward(to deadline: NIODeadline) {
        let early = state.withLockedValue { state in
            guard let wakeAt = state.wakeAt else {
                state.pending = min(deadline, state.pending ?? deadline)
                return false
            }
            return deadline < wakeAt
        }
        if early { ring() }
    }

    /// Wakes the sleeper now; with none, the next sleep returns at once.
    func ring() {
        let (sleeper, timer) = state.withLockedValue { state in
            defer { (state.sleeper, state.timer, state.wakeAt) = (nil, nil, nil) }
            if state.sleeper == nil { state.pending = .now() }
            return (state.sleeper, state.timer)
        }
        timer?.cancel()
        sleeper?.resume()
    }
}
