import Metrics
import NIOHTTP1

/// The data plane's metrics, created once: request totals by path and status class, durations, retries, misroutes.
///
/// `path` is `local` (served by this node's backend for its own app), `forwarded_out` (sent to the owner) or
/// `forwarded_in` (served here for another node); `code` is the status class.
public final class ProxyMetrics: Sendable {
    /// Where a request went.
    public enum Path: String, Sendable, CaseIterable {
        case local
        case forwardedOut = "forwarded_out"
        case forwardedIn = "forwarded_in"

        /// Where a request on `plane` that took `route` went.
        init(plane: ProxyHandler.Plane, route: ProxyRoute) {
            switch (plane, route) {
            case (.cluster, _): self = .forwardedIn
            case (.app, .local): self = .local
            case (.app, .peer): self = .forwardedOut
            }
        }

        /// Where a request on `plane` answered before it had a route is counted: on the app plane as local, on the
        /// cluster plane as forwarded in (a 421 "not owner" among them).
        init(unroutedOn plane: ProxyHandler.Plane) { self = plane == .app ? .local : .forwardedIn }

        var index: Int {
            switch self {
            case .local: 0
            case .forwardedOut: 1
            case .forwardedIn: 2
            }
        }
    }

    /// By path (in `Path.allCases` order), then status class.
    private let requests: [[Counter]]
    private let durations: [Timer]
    /// Responses the proxy made itself, by status.
    private let generated: [Int: Counter]
    private let generatedOther: Counter
    /// Requests under way, by where they came in (what a drain waits for).
    public let inFlight = InFlightRequests()
    let retries = Counter(label: "ringside_request_retries_total")
    let misroutes = Counter(label: "ringside_request_misroutes_total")

    /// The metrics, registered with the process's metrics backend.
    public init() {
        requests = Path.allCases.map { path in
            (1...5).map {
                Counter(label: "ringside_requests_total", dimensions: [("path", path.rawValue), ("code", "\($0)xx")])
            }
        }
        generated = Dictionary(
            uniqueKeysWithValues: Self.generatedReasons.map { code, reason in
                (
                    code,
                    Counter(
                        label: "ringside_generated_responses_total",
                        dimensions: [("code", "\(code)"), ("reason", reason)]
                    )
                )
            }
        )
        generatedOther = Counter(
            label: "ringside_generated_responses_total",
            dimensions: [("code", "other"), ("reason", "other")]
        )
        durations = Path.allCases.map {
            Timer(label: "ringside_request_duration_seconds", dimensions: [("path", $0.rawValue)])
        }
    }

    /// What each status the proxy answers with itself means, as the `reason` label says it.
    static let generatedReasons: [Int: String] = [
        400: "bad_request", 403: "not_from_a_peer", 408: "head_timeout", 413: "body_too_large", 417: "expectation",
        421: "not_owner", 431: "head_too_large", 499: "client_closed", 501: "not_implemented", 502: "bad_gateway",
        503: "no_owner", 504: "upstream_timeout",
    ]

    /// Counts a response the proxy made itself.
    func generated(_ code: Int) {
        (generated[code] ?? generatedOther).increment()
    }

    /// Records a finished request.
    func record(_ path: Path, status: HTTPResponseStatus, nanoseconds: Int64) {
        record(path, code: Int(status.code), nanoseconds: nanoseconds)
    }

    /// Records a finished request by its status code.
    func record(_ path: Path, code: Int, nanoseconds: Int64) {
        let group = min(5, max(1, code / 100))
        let index = path.index
        requests[index][group - 1].increment()
        durations[index].recordNanoseconds(nanoseconds)
    }
}
