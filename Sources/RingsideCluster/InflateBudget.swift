import NIOConcurrencyHelpers

/// How many bytes the compressed gossip of one connection may inflate to in a window of time: a peer that keeps
/// sending small bodies that inflate large is refused once it has spent the window's budget, whatever each body's
/// own bound (``GossipCodec/Limits/maxInflateRatio``) allows.
final class InflateBudget: Sendable {
    private struct Window {
        var start: ContinuousClock.Instant
        var spent: Int
    }

    let bytesPerWindow: Int
    let window: Duration
    private let state: NIOLockedValueBox<Window>

    /// 64 MiB every 10 seconds by default: a full-state exchange of a 10,000-member cluster inflates to about 1 MiB.
    init(bytesPerWindow: Int = 64 << 20, window: Duration = .seconds(10)) {
        self.bytesPerWindow = bytesPerWindow
        self.window = window
        state = NIOLockedValueBox(Window(start: .now, spent: 0))
    }

    /// What is left in the current window.
    func remaining(now: ContinuousClock.Instant = .now) -> Int {
        state.withLockedValue { window in
            if now >= window.start + self.window { window = Window(start: now, spent: 0) }
            return max(0, bytesPerWindow - window.spent)
        }
    }

    /// Spends `bytes` of the current window.
    func spend(_ bytes: Int) { state.withLockedValue { $0.spent += bytes } }
}

/// Where a gossip frame came from: the sender's certificate (under mutual TLS) and its connection's inflate budget.
final class GossipSource: Sendable {
    let identity: PeerIdentity?
    let budget: InflateBudget
    private let refused = NIOLockedValueBox(false)

    init(identity: PeerIdentity?, budget: InflateBudget) {
        self.identity = identity
        self.budget = budget
    }

    /// True the first time it is called: a connection's impersonation is counted once, as its handshake was.
    func firstRefusal() -> Bool {
        refused.withLockedValue { refused in
            defer { refused = true }
            return !refused
        }
    }
}
