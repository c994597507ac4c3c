import NIOConcurrencyHelpers

/// Keyed GETs sent without pause by the threads that call ``run()``, each to an entry port picked at random among those
/// that are up, every answer checked (200, and the echo backend's `x-echo-uri` for this very request): the load of a
/// rolling-deploy test or benchmark.
public final class KeyedLoad: Sendable {
    /// What happened, so far or in all.
    public struct Outcome: Sendable {
        public var answered = 0
        public var failures: [String] = []
        var stopped = false
        var entries: [Int]
    }

    private let state: NIOLockedValueBox<Outcome>
    private let keys: Int
    private let started = ContinuousClock.now

    /// Load over `keys` distinct keys (`key-0` …), entering by the app ports `entries`.
    public init(entries: [Int], keys: Int) {
        state = NIOLockedValueBox(Outcome(entries: entries))
        self.keys = keys
    }

    /// Sends requests to `port` again.
    public func add(_ port: Int) { state.withLockedValue { $0.entries.append(port) } }

    /// Sends no new request to `port` (as a load balancer once the node is terminating).
    public func remove(_ port: Int) { state.withLockedValue { $0.entries.removeAll { $0 == port } } }

    /// What happened so far.
    public var outcome: Outcome { state.withLockedValue { $0 } }

    /// Stops the threads after their current request, and returns what happened.
    @discardableResult
    public func stop() -> Outcome {
        state.withLockedValue {
            $0.stopped = true
            return $0
        }
    }

    /// Sends requests until ``stop()``; run it on a thread of its own.
    public func run() {
        var number = 0
        while true {
            number += 1
            let (stopped, entries) = state.withLockedValue { ($0.stopped, $0.entries) }
            if stopped { return }
            guard let port = entries.randomElement() else { continue }
            let key = "key-\(Int.random(in: 0..<keys))"
            let path = "/load/\(number)"
            let raw = rawExchange(
                port: port,
                Array("GET \(path) HTTP/1.1\r\nHost: app\r\nX-Shard-Key: \(key)\r\n\r\n".utf8),
                timeout: .seconds(10)
            )
            let response = parseResponse(raw.bytes)
            state.withLockedValue { outcome in
                guard !outcome.stopped else { return }
                if response?.status == 200, response?.header("x-echo-uri") == path {
                    outcome.answered += 1
                } else {
                    let at = ContinuousClock.now - self.started
                    outcome.failures.append(
                        "port \(port) key \(key) at \(at): "
                            + (response.map { "status \($0.status)" } ?? "no answer, \(raw.bytes.count) bytes")
                            + (raw.closed ? ", closed" : "")
                    )
                }
            }
        }
    }
}
