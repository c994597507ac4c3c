/// A point in time for the protocol core: nanoseconds from an origin the driver chooses.
///
/// The core never reads a clock. The NIO shell passes the monotonic clock's time since the node started; the simulator
/// passes its virtual time. Either way the core's decisions depend only on the instants it is given.
public struct GossipInstant: Comparable, Hashable, Sendable, CustomStringConvertible {
    /// Nanoseconds since the driver's origin.
    public var nanoseconds: Int64

    /// An instant `nanoseconds` after the origin.
    public init(nanoseconds: Int64) { self.nanoseconds = nanoseconds }

    /// The origin.
    public static let zero = GossipInstant(nanoseconds: 0)

    public static func < (lhs: GossipInstant, rhs: GossipInstant) -> Bool { lhs.nanoseconds < rhs.nanoseconds }

    public static func + (lhs: GossipInstant, rhs: Duration) -> GossipInstant {
        GossipInstant(nanoseconds: lhs.nanoseconds &+ rhs.nanoseconds)
    }

    public static func - (lhs: GossipInstant, rhs: GossipInstant) -> Duration {
        .nanoseconds(lhs.nanoseconds &- rhs.nanoseconds)
    }

    public var description: String { "\(Double(nanoseconds) / 1e9)s" }
}

extension Duration {
    /// The duration in whole nanoseconds, saturating at the bounds of `Int64`.
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        return scaled &+ attoseconds / 1_000_000_000
    }

    /// This duration multiplied by a real factor.
    func scaled(by factor: Double) -> Duration {
        .nanoseconds(Int64(Double(nanoseconds) * factor))
    }
}
