import Synchronization

/// Keeps a log from being flooded by what outsiders can cause (refused gossip, refused requests): at most one line a
/// key and interval, and the line that is written says how many were held back before it. Keys must be few (a reason,
/// never a value an outsider chose).
public final class LogRateLimiter: Sendable {
    private struct Window {
        var start: ContinuousClock.Instant
        var suppressed: Int
    }

    private let interval: Duration
    private let windows = Mutex<[String: Window]>([:])

    /// A limiter that lets one line a key through every `interval`.
    public init(interval: Duration = .seconds(1)) { self.interval = interval }

    /// Whether to write a line for `key` now: nil when not, otherwise how many lines for it were held back since the
    /// last one written.
    public func allow(_ key: String, now: ContinuousClock.Instant = .now) -> Int? {
        windows.withLock { windows in
            if var window = windows[key], now < window.start + interval {
                window.suppressed += 1
                windows[key] = window
                return nil
            }
            if windows.count > 256 { windows = [:] }
            let held = windows[key]?.suppressed ?? 0
            windows[key] = Window(start: now, suppressed: 0)
            return held
        }
    }
}
