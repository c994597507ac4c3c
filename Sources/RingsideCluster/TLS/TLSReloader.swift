import Logging
import Metrics
import ServiceLifecycle

/// Re-reads the planes' certificate files when they change (checked every ``interval``) and when asked
/// (``reload(force:trigger:)``, SIGHUP), and keeps `ringside_tls_certificate_expiry_seconds{plane}` up to date.
/// New connections use the new certificates; connections open keep theirs. Files that do not load leave a plane as it
/// was, and the log says why, once for each change of the files.
public final class TLSReloader: Service, Sendable {
    public let planes: [PlaneTLS]
    public let interval: Duration
    private let logger: Logger
    private let expiry: [Gauge]

    public init(planes: [PlaneTLS], interval: Duration = .seconds(2), logger: Logger) {
        self.planes = planes
        self.interval = interval
        self.logger = logger
        expiry = planes.map {
            Gauge(label: "ringside_tls_certificate_expiry_seconds", dimensions: [("plane", $0.plane)])
        }
    }

    public func run() async throws {
        update()
        for plane in planes {
            if let left = plane.secondsUntilExpiry(), left <= 0 {
                logger.error(
                    "this node's certificate has expired: peers will refuse it",
                    metadata: ["ringside.plane": "\(plane.plane)", "ringside.file": "\(plane.files.certificate ?? "")"]
                )
            }
        }
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await Task.sleep(for: interval)
            reload(force: false, trigger: "files changed")
        }
    }

    /// Reloads every plane whose files changed (all of them when `force`), and says what happened.
    public func reload(force: Bool, trigger: String) {
        for plane in planes {
            let metadata: Logger.Metadata = [
                "ringside.plane": "\(plane.plane)", "ringside.trigger": "\(trigger)",
                "ringside.files": "\(plane.files.paths.joined(separator: ","))",
            ]
            switch plane.reload(force: force) {
            case .unchanged:
                break
            case .reloaded:
                logger.info("certificates reloaded: new connections use them", metadata: metadata)
            case .failed(let reason):
                var metadata = metadata
                metadata["ringside.error"] = "\(reason)"
                logger.error("certificates not reloaded: keeping the ones in use", metadata: metadata)
            }
        }
        update()
    }

    private func update() {
        for (plane, gauge) in zip(planes, expiry) {
            if let left = plane.secondsUntilExpiry() { gauge.record(left) }
        }
    }
}
