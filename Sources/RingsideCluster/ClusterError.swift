/// An error from a cluster node: a stable code, a message that says what to do, and the underlying cause.
public struct ClusterError: Error, CustomStringConvertible, Sendable {
    /// What kind of failure this is.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String

        /// An address could not be parsed or bound.
        public static let invalidAddress = Code(name: "invalid-address")
        /// The listener could not start.
        public static let listenFailed = Code(name: "listen-failed")
        /// The node is not running.
        public static let notRunning = Code(name: "not-running")
        /// A change did not reach other members before its deadline.
        public static let disseminationTimedOut = Code(name: "dissemination-timed-out")

        public var description: String { name }
    }

    /// The kind of failure.
    public var code: Code
    /// What happened and what to do.
    public var message: String
    /// The error underneath, if any.
    public var underlying: (any Error & Sendable)?

    /// Creates an error.
    public init(code: Code, message: String, underlying: (any Error & Sendable)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    public var description: String {
        underlying.map { "\(message) [\(code)]: \($0)" } ?? "\(message) [\(code)]"
    }
}
