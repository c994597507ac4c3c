#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Lifeguard's dynamic suspicion timeout for one suspected member.
///
/// The timeout starts at `maximum` and shrinks towards `minimum` as independent members confirm the suspicion,
/// logarithmically, reaching `minimum` at `expectedConfirmations`. A lone false suspicion (say, from a member whose own
/// network is slow) lasts long enough to be refuted; a real failure, seen by many, is declared quickly.
struct Suspicion: Sendable {
    let incarnation: UInt64
    let start: GossipInstant
    let minimum: Duration
    let maximum: Duration
    let expectedConfirmations: Int
    private(set) var confirmers: Set<String>

    init(
        incarnation: UInt64,
        from: String,
        start: GossipInstant,
        minimum: Duration,
        maximum: Duration,
        expectedConfirmations: Int
    ) {
        self.incarnation = incarnation
        self.start = start
        self.minimum = minimum
        self.maximum = maximum
        self.expectedConfirmations = expectedConfirmations
        self.confirmers = [from]
    }

    /// Independent confirmations beyond the first suspicion.
    var confirmations: Int { confirmers.count - 1 }

    /// Records a confirmation from `member`; true if it is a new one.
    mutating func confirm(from member: String) -> Bool {
        guard confirmations < expectedConfirmations else { return false }
        return confirmers.insert(member).inserted
    }

    var deadline: GossipInstant { start + timeout }

    var timeout: Duration {
        guard expectedConfirmations >= 1 else { return minimum }
        let fraction = log(Double(confirmations) + 1) / log(Double(expectedConfirmations) + 1)
        let shrunk = maximum - (maximum - minimum).scaled(by: min(1, fraction))
        return max(minimum, shrunk)
    }
}
