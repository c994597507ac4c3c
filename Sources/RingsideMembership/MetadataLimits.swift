/// How much metadata a node may carry. Metadata rides in every gossip message about the node, so it stays small:
/// keys of letters, digits and `._-/` up to 64 bytes, values up to 512 bytes, at most 32 entries and 2 KiB in all.
/// A deleted entry's tombstone counts against the entries and bytes until it expires or a new entry needs its room
/// (receivers replace a member's whole map with each newer incarnation, so dropping a tombstone early loses nothing).
public enum MetadataLimits {
    /// The longest key, in bytes.
    public static let maxKeyBytes = 64
    /// The longest value, in bytes.
    public static let maxValueBytes = 512
    /// The most entries a node carries, tombstones included.
    public static let maxEntries = 32
    /// The most key and value bytes a node carries, tombstones' keys included.
    public static let maxTotalBytes = 2048

    /// Why `key` is not a metadata key, or nil.
    public static func problem(key: String) -> MetadataRefusal? {
        let allowed = key.utf8.allSatisfy {
            ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A)
                || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-")
                || $0 == UInt8(ascii: "/")
        }
        guard !key.isEmpty, key.utf8.count <= maxKeyBytes, allowed, key != ".", key != ".." else {
            return MetadataRefusal(
                reason: .invalidKey,
                message: "a metadata key is 1 to \(maxKeyBytes) letters, digits, '.', '_', '-' or '/', and not . or .."
            )
        }
        return nil
    }

    /// Why setting `key` to `value` in `metadata` is refused, or nil. Only live entries count here: tombstones give
    /// way to a new entry.
    public static func problem(
        setting key: String,
        to value: String,
        in metadata: [String: MetadataEntry]
    )
        -> MetadataRefusal?
    {
        if let problem = problem(key: key) { return problem }
        if value.utf8.count > maxValueBytes {
            return MetadataRefusal(reason: .tooLarge, message: "a metadata value is at most \(maxValueBytes) bytes")
        }
        var live = metadata.filter { !$0.value.isDeleted }
        live[key] = MetadataEntry(value: value, version: 0)
        if live.count > maxEntries {
            return MetadataRefusal(reason: .tooLarge, message: "a node has at most \(maxEntries) metadata entries")
        }
        if bytes(live) > maxTotalBytes {
            return MetadataRefusal(
                reason: .tooLarge,
                message: "a node's metadata is at most \(maxTotalBytes) bytes in all"
            )
        }
        return nil
    }

    /// Whether `metadata`, tombstones included, is within the limits.
    static func fits(_ metadata: [String: MetadataEntry]) -> Bool {
        metadata.count <= maxEntries && bytes(metadata) <= maxTotalBytes
    }

    static func bytes(_ metadata: [String: MetadataEntry]) -> Int {
        metadata.reduce(0) { $0 + $1.key.utf8.count + $1.value.value.utf8.count }
    }
}

/// A metadata change refused by ``MetadataLimits``.
public struct MetadataRefusal: Error, Hashable, Sendable, CustomStringConvertible {
    /// Why the change was refused.
    public enum Reason: Hashable, Sendable {
        /// The key is not a metadata key.
        case invalidKey
        /// The value, or the node's metadata with it, is too large.
        case tooLarge
    }

    /// Why the change was refused.
    public var reason: Reason
    /// What the limit is, for the person who made the change.
    public var message: String

    public var description: String { message }
}
