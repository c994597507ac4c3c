import RingsideSharding

/// Whether a member is reachable, as the failure detector sees it. Independent of its ``PeerState``.
public enum MemberStatus: UInt8, Hashable, Sendable, CustomStringConvertible {
    /// Answering probes.
    case alive = 0
    /// Failed a probe; will be declared dead unless it refutes in time.
    case suspect = 1
    /// Declared failed.
    case dead = 2
    /// Left the cluster on purpose.
    case left = 3

    /// Whether the member is still part of views (alive or suspect).
    public var isActive: Bool { self == .alive || self == .suspect }

    public var description: String {
        switch self {
        case .alive: "alive"
        case .suspect: "suspect"
        case .dead: "dead"
        case .left: "left"
        }
    }
}

/// One metadata entry. Deleted entries stay as tombstones for a while so that every member hears of the deletion.
public struct MetadataEntry: Hashable, Sendable {
    /// The value; empty for a tombstone.
    public var value: String
    /// The owner's incarnation when the entry last changed.
    public var version: UInt64
    /// Whether the entry was deleted.
    public var isDeleted: Bool

    /// Creates an entry.
    public init(value: String, version: UInt64, isDeleted: Bool = false) {
        self.value = value
        self.version = version
        self.isDeleted = isDeleted
    }
}

/// A member as every node gossips it: identity, address, incarnation, reachability, peer state and metadata.
public struct Member: Hashable, Sendable, CustomStringConvertible {
    /// The unique name.
    public var name: String
    /// The `host:port` of its cluster listener.
    public var address: String
    /// Bumped by the member itself on every change, and to refute a suspicion. Higher wins.
    public var incarnation: UInt64
    /// Reachability.
    public var status: MemberStatus
    /// Its state in the cluster's life cycle (viewer, participant, terminating, gone).
    public var state: PeerState
    /// Versioned key/value metadata, tombstones included.
    public var metadata: [String: MetadataEntry]

    /// Creates a member.
    public init(
        name: String,
        address: String,
        incarnation: UInt64,
        status: MemberStatus,
        state: PeerState,
        metadata: [String: MetadataEntry] = [:]
    ) {
        self.name = name
        self.address = address
        self.incarnation = incarnation
        self.status = status
        self.state = state
        self.metadata = metadata
    }

    /// The live metadata values, without tombstones.
    public var metadataValues: [String: String] {
        metadata.compactMapValues { $0.isDeleted ? nil : $0.value }
    }

    public var description: String { "\(name)@\(address) #\(incarnation) \(status) \(state)" }
}
