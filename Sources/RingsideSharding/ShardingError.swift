/// An error from the sharding layer: a stable code, a message that says what went wrong and what to do, and the
/// underlying cause where there is one.
public struct ShardingError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What kind of failure this is. Compare codes, not messages.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Value: String, Hashable, Sendable {
            case invalidStateTransition = "invalid-state-transition"
            case notEnoughPeers = "not-enough-peers"
            case duplicatePeerName = "duplicate-peer-name"
            case invalidArgument = "invalid-argument"
        }
        private let value: Value

        /// A peer was asked to move to a state it may not move to from its current one.
        public static let invalidStateTransition = Code(value: .invalidStateTransition)
        /// A lookup needed more owners than there are eligible peers.
        public static let notEnoughPeers = Code(value: .notEnoughPeers)
        /// Two peers in one set share a name; names are identities.
        public static let duplicatePeerName = Code(value: .duplicatePeerName)
        /// A parameter is out of its range (replica count, token count, table size).
        public static let invalidArgument = Code(value: .invalidArgument)

        public var description: String { value.rawValue }
    }

    /// The kind of failure.
    public var code: Code
    /// A sentence for a person: what happened and what to do about it.
    public var message: String

    /// Creates an error with a code and a message.
    public init(code: Code, message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(message) [\(code)]" }
}

extension ShardingError {
    static func notEnoughPeers(needed: Int, have: Int, op: ShardingOperation) -> ShardingError {
        ShardingError(
            code: .notEnoughPeers,
            message:
                "not enough peers for a \(op) lookup: need at least \(needed), have \(have) (\(op.eligibleStatesDescription))"
        )
    }

    static func invalidArgument(_ message: String) -> ShardingError {
        ShardingError(code: .invalidArgument, message: message)
    }
}
