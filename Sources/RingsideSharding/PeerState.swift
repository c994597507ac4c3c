/// Where a peer is in its life in the cluster. States only move forward: `viewer → participant → terminating → gone`.
///
/// - `viewer`: a member that routes requests but owns no keys (a gateway or edge node).
/// - `participant`: owns keys for reads and writes.
/// - `terminating`: draining; owns keys for reads only, so that requests already under way still find it.
/// - `gone`: has left the cluster; owns nothing and is removed from every view.
public enum PeerState: UInt8, Hashable, Sendable, CaseIterable, Comparable, CustomStringConvertible {
    case viewer = 0
    case participant = 1
    case terminating = 2
    case gone = 3

    /// Whether a peer in this state may move to `next`: any strictly later state.
    public func canTransition(to next: PeerState) -> Bool {
        next.rawValue > rawValue
    }

    /// The state `next`, or an error naming both states when the move goes backwards or stays put.
    public func transition(to next: PeerState) throws(ShardingError) -> PeerState {
        guard canTransition(to: next) else {
            throw ShardingError(
                code: .invalidStateTransition,
                message:
                    "a peer cannot move from \(self) to \(next): states only move forward (viewer → participant → terminating → gone)"
            )
        }
        return next
    }

    /// Whether a peer in this state owns keys for `op`.
    @inlinable
    public func owns(for op: ShardingOperation) -> Bool {
        switch self {
        case .participant: true
        case .terminating: op == .read
        case .viewer, .gone: false
        }
    }

    public static func < (lhs: PeerState, rhs: PeerState) -> Bool { lhs.rawValue < rhs.rawValue }

    public var description: String {
        switch self {
        case .viewer: "viewer"
        case .participant: "participant"
        case .terminating: "terminating"
        case .gone: "gone"
        }
    }

    /// Parses the lowercase name of a state, as used in configuration and on the wire.
    public init?(name: String) {
        guard let state = Self.allCases.first(where: { $0.description == name }) else { return nil }
        self = state
    }
}

/// What a lookup is for, which decides who may own the key (grafana/ckit's OpRead and OpReadWrite).
public enum ShardingOperation: Hashable, Sendable, CustomStringConvertible {
    /// Participants and terminating peers own keys: a draining peer still answers for what it holds.
    case read
    /// Only participants own keys: new work never goes to a draining peer.
    case readWrite

    public var description: String {
        switch self {
        case .read: "read"
        case .readWrite: "read-write"
        }
    }

    var eligibleStatesDescription: String {
        switch self {
        case .read: "participant and terminating peers own keys for reads"
        case .readWrite: "only participant peers own keys for read-write"
        }
    }
}
