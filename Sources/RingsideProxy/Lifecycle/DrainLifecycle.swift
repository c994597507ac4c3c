import NIOCore

/// A node's life from its start to its exit, as a value: events in, what to do out; no I/O, and the time is given.
///
/// `running → draining → leaving → stopped`. A drain (SIGTERM, SIGINT, `POST /v1/drain`) starts draining: readiness
/// fails, the node becomes `terminating` and tells its peers, and every connection closes after its current
/// response. Once peers have been told and no request is under way, or at the drain's deadline, it leaves (`gone`) and
/// closes its listeners, the app plane's first, the cluster port's last; what was still under way then is cut, and
/// the exit status says so. A second signal during a drain stops at once; a drain begun by the admin plane takes its
/// first signal as the one that would have begun it (a supervisor's SIGTERM after `ringside drain` waits for the drain).
public struct DrainLifecycle: Sendable {
    /// Where the node is.
    public enum Phase: String, Sendable {
        case running
        case draining
        case leaving
        case stopped
    }

    /// What the driver does.
    package enum Action: Equatable, Sendable {
        /// Fail readiness, have every connection close after its response (HTTP/2: GOAWAY), become `terminating` and
        /// tell the peers (then report ``announced()``).
        case beginDrain
        /// Leave the cluster, close the listeners letting what is under way finish until the deadline (the cluster
        /// port last), then report ``stopped(cut:now:)``.
        case leave(deadline: NIODeadline)
        /// Close everything now.
        case stopNow
    }

    package private(set) var phase = Phase.running
    /// What started the drain: a signal's name, or `admin`.
    package private(set) var trigger: String?
    package private(set) var started: NIODeadline?
    /// When the drain gives up waiting for requests.
    package private(set) var deadline: NIODeadline?
    package private(set) var ended: NIODeadline?
    /// Requests under way when the listeners closed, or when a second signal stopped the node.
    package private(set) var cut = 0
    /// Peers have been told (or the wait for it is over).
    package private(set) var isAnnounced = false
    /// The drain gave up waiting at its deadline.
    package private(set) var timedOut = false
    /// A signal has come (the one that began the drain, or one during a drain the admin plane began).
    private var signalled = false

    package init() {}

    /// A drain is asked for: the first starts it, with `timeout` to finish; later ones change nothing.
    package mutating func drainRequested(by trigger: String, timeout: Duration, now: NIODeadline) -> Action? {
        guard phase == .running else { return nil }
        phase = .draining
        self.trigger = trigger
        started = now
        deadline = now + TimeAmount(timeout)
        return .beginDrain
    }

    /// SIGTERM or SIGINT: the first drains; another during the drain stops at once, cutting the `inFlight` requests.
    package mutating func signal(_ name: String, timeout: Duration, inFlight: Int, now: NIODeadline) -> Action? {
        defer { signalled = true }
        switch phase {
        case .running:
            return drainRequested(by: name, timeout: timeout, now: now)
        case .draining, .leaving:
            guard signalled else { return nil }
            phase = .stopped
            cut = inFlight
            ended = now
            return .stopNow
        case .stopped:
            return nil
        }
    }

    /// The peers have been told that this node is terminating (or the wait for it is over).
    package mutating func announced() { isAnnounced = true }

    /// Checks the drain, as the driver does every few milliseconds: it leaves once the peers have been told and no
    /// request is under way, or when its time is up.
    package mutating func check(inFlight: Int, now: NIODeadline) -> Action? {
        guard phase == .draining, let deadline else { return nil }
        if now >= deadline {
            timedOut = true
        } else if !isAnnounced || inFlight > 0 {
            return nil
        }
        phase = .leaving
        return .leave(deadline: deadline)
    }

    /// The node has left and closed its listeners; `cut` requests were still under way when they closed.
    package mutating func stopped(cut: Int, now: NIODeadline) {
        guard phase != .stopped else { return }
        phase = .stopped
        self.cut = cut
        ended = now
    }

    /// The process's exit status: 3 when the drain cut requests.
    package var exitCode: Int32 { cut > 0 ? 3 : 0 }
}
