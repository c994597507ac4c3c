import CZlib
import RingsideSharding

/// The wire format of gossip envelopes.
///
/// ```
/// envelope := version:u8 flags:u8 body            flags bit 0: body is zlib-compressed
/// body     := cluster:str sender:str address:str count:varint message*
/// message  := type:u8 fields (see `encode(_:into:)`)
/// str      := length:varint utf8-bytes
/// ```
///
/// Every length and count is checked against ``Limits`` before anything is allocated, so a hostile or corrupt frame
/// costs at most its own size; a bad frame is a ``GossipCodecError``, never a crash.
public enum GossipCodec {
    /// The wire version this build writes and reads.
    public static let version: UInt8 = 1

    /// Bounds on what a decoder accepts.
    public struct Limits: Sendable {
        /// The largest envelope, compressed or not, and the largest a compressed body may inflate to.
        public var maxEnvelopeBytes = 16 << 20
        /// The longest name, address, cluster label or metadata key.
        public var maxNameBytes = 512
        /// The longest metadata value.
        public var maxValueBytes = 64 << 10
        /// The most messages in one envelope.
        public var maxMessages = 4096
        /// The most members in one full-state exchange.
        public var maxMembers = 100_000
        /// The most metadata entries of one member.
        public var maxMetadataEntries = 256
        /// How many times its compressed size a body may inflate to (zlib reaches about 1000:1 on a bomb; gossip,
        /// names and addresses, compresses about 5:1).
        public var maxInflateRatio = 100
        /// What is left of the connection's inflate budget (``InflateBudget``), when it has one.
        public var inflateBudget: Int?

        /// The default limits.
        public init() {}
    }

    /// Bodies larger than this are compressed when compression is allowed.
    public static let compressionThreshold = 1024

    // MARK: Encoding

    /// The bytes of `envelope`; the body is compressed when it is larger than ``compressionThreshold`` and
    /// `compress` is true.
    public static func encode(_ envelope: GossipEnvelope, compress: Bool = true) -> [UInt8] {
        var body = ByteWriter()
        body.string(envelope.clusterName)
        body.string(envelope.senderName)
        body.string(envelope.senderAddress)
        body.varint(UInt64(envelope.messages.count))
        for message in envelope.messages { encode(message, into: &body) }

        if compress && body.bytes.count > compressionThreshold, let deflated = Zlib.deflate(body.bytes) {
            return [version, 1] + deflated
        }
        return [version, 0] + body.bytes
    }

    /// The encoded size of one message, used to fill a piggyback budget.
    static func encodedSize(_ message: GossipMessage) -> Int {
        var writer = ByteWriter()
        encode(message, into: &writer)
        return writer.bytes.count
    }

    static func encode(_ message: GossipMessage, into writer: inout ByteWriter) {
        switch message {
        case .ping(let sequence, let target):
            writer.byte(1)
            writer.varint(UInt64(sequence))
            writer.string(target)
        case .ack(let sequence):
            writer.byte(2)
            writer.varint(UInt64(sequence))
        case .nack(let sequence, let refused):
            writer.byte(3)
            writer.varint(UInt64(sequence))
            writer.byte(refused ? 1 : 0)
        case .pingRequest(let sequence, let target, let targetAddress):
            writer.byte(4)
            writer.varint(UInt64(sequence))
            writer.string(target)
            writer.string(targetAddress)
        case .alive(let member):
            writer.byte(5)
            encode(member, into: &writer)
        case .suspect(let name, let incarnation, let from):
            writer.byte(6)
            writer.string(name)
            writer.varint(incarnation)
            writer.string(from)
        case .dead(let name, let incarnation, let from):
            writer.byte(7)
            writer.string(name)
            writer.varint(incarnation)
            writer.string(from)
        case .pushPull(let isResponse, let isJoin, let members):
            writer.byte(8)
            writer.byte((isResponse ? 1 : 0) | (isJoin ? 2 : 0))
            writer.varint(UInt64(members.count))
            for member in members { encode(member, into: &writer) }
        }
    }

    static func encode(_ member: Member, into writer: inout ByteWriter) {
        writer.string(member.name)
        writer.string(member.address)
        writer.varint(member.incarnation)
        writer.byte(member.status.rawValue)
        writer.byte(member.state.rawValue)
        writer.varint(UInt64(member.metadata.count))
        // Sorted, so that equal members encode to equal bytes.
        for key in member.metadata.keys.sorted() {
            let entry = member.metadata[key]!
            writer.string(key)
            writer.string(entry.value)
            writer.varint(entry.version)
            writer.byte(entry.isDeleted ? 1 : 0)
        }
    }

    // MARK: Decoding

    /// Decodes an envelope, or throws a ``GossipCodecError`` that says what is wrong with it.
    public static func decode(_ bytes: [UInt8], limits: Limits = Limits()) throws(GossipCodecError) -> GossipEnvelope {
        var inflated = 0
        return try decode(bytes, limits: limits, inflated: &inflated)
    }

    /// Decodes an envelope, and sets `inflated` to the bytes its compressed body inflated to (0 when it had none).
    public static func decode(
        _ bytes: [UInt8],
        limits: Limits = Limits(),
        inflated inflatedCount: inout Int
    ) throws(GossipCodecError) -> GossipEnvelope {
        guard bytes.count <= limits.maxEnvelopeBytes else { throw .tooLarge("envelope of \(bytes.count) bytes") }
        guard bytes.count >= 2 else { throw .truncated }
        guard bytes[0] == version else { throw .unsupportedVersion(bytes[0]) }
        let flags = bytes[1]
        guard flags & ~1 == 0 else { throw .malformed("unknown flags \(flags)") }
        var body = Array(bytes[2...])
        if flags & 1 == 1 {
            let byRatio = body.count.multipliedReportingOverflow(by: limits.maxInflateRatio)
            let limit = min(limits.maxEnvelopeBytes, byRatio.overflow ? .max : byRatio.partialValue)
            let budget = limits.inflateBudget ?? .max
            guard let inflated = Zlib.inflate(body, limit: min(limit, budget)) else {
                throw .malformed(
                    budget < limit
                        ? "compressed body does not inflate within the connection's remaining budget of \(budget) bytes"
                        : "compressed body does not inflate within \(limit) bytes (\(limits.maxInflateRatio) times "
                            + "its \(body.count) bytes, at most \(limits.maxEnvelopeBytes))"
                )
            }
            inflatedCount = inflated.count
            body = inflated
        }
        var reader = ByteReader(body, limits: limits)
        let clusterName = try reader.name()
        let senderName = try reader.name()
        let senderAddress = try reader.name()
        let count = try reader.count(max: limits.maxMessages, what: "messages")
        var messages: [GossipMessage] = []
        messages.reserveCapacity(count)
        for _ in 0..<count { messages.append(try decodeMessage(&reader)) }
        guard reader.isAtEnd else { throw .malformed("\(reader.remaining) bytes after the last message") }
        return GossipEnvelope(
            clusterName: clusterName,
            senderName: senderName,
            senderAddress: senderAddress,
            messages: messages
        )
    }

    static func decodeMessage(_ reader: inout ByteReader) throws(GossipCodecError) -> GossipMessage {
        let type = try reader.byte()
        switch type {
        case 1:
            return .ping(sequence: try reader.sequence(), target: try reader.name())
        case 2:
            return .ack(sequence: try reader.sequence())
        case 3:
            return .nack(sequence: try reader.sequence(), refused: try reader.flag())
        case 4:
            return .pingRequest(
                sequence: try reader.sequence(),
                target: try reader.name(),
                targetAddress: try reader.name()
            )
        case 5:
            return .alive(try decodeMember(&reader))
        case 6:
            return .suspect(name: try reader.name(), incarnation: try reader.varint(), from: try reader.name())
        case 7:
            return .dead(name: try reader.name(), incarnation: try reader.varint(), from: try reader.name())
        case 8:
            let flags = try reader.byte()
            guard flags & ~3 == 0 else { throw .malformed("unknown push-pull flags \(flags)") }
            let count = try reader.count(max: reader.limits.maxMembers, what: "members")
            var members: [Member] = []
            members.reserveCapacity(count)
            for _ in 0..<count { members.append(try decodeMember(&reader)) }
            return .pushPull(isResponse: flags & 1 == 1, isJoin: flags & 2 == 2, members: members)
        default:
            throw .malformed("unknown message type \(type)")
        }
    }

    static func decodeMember(_ reader: inout ByteReader) throws(GossipCodecError) -> Member {
        let name = try reader.name()
        let address = try reader.name()
        let incarnation = try reader.varint()
        let statusByte = try reader.byte()
        guard let status = MemberStatus(rawValue: statusByte) else { throw .malformed("unknown status \(statusByte)") }
        let stateByte = try reader.byte()
        guard let state = PeerState(rawValue: stateByte) else { throw .malformed("unknown peer state \(stateByte)") }
        let count = try reader.count(max: reader.limits.maxMetadataEntries, what: "metadata entries")
        var metadata: [String: MetadataEntry] = [:]
        for _ in 0..<count {
            let key = try reader.name()
            let value = try reader.string(max: reader.limits.maxValueBytes)
            let entry = MetadataEntry(value: value, version: try reader.varint(), isDeleted: try reader.flag())
            metadata[key] = entry
        }
        return Member(
            name: name,
            address: address,
            incarnation: incarnation,
            status: status,
            state: state,
            metadata: metadata
        )
    }
}

/// Why a frame could not be decoded. Frames that fail are dropped and counted, never acted on.
public enum GossipCodecError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The frame ends in the middle of a field.
    case truncated
    /// The frame was written by a version of Ringside this one does not read.
    case unsupportedVersion(UInt8)
    /// A length or count exceeds the decoder's limits.
    case tooLarge(String)
    /// A field holds a value no encoder writes.
    case malformed(String)

    public var description: String {
        switch self {
        case .truncated: "gossip frame is truncated"
        case .unsupportedVersion(let version):
            "gossip frame has wire version \(version); this node reads version \(GossipCodec.version)"
        case .tooLarge(let what): "gossip frame exceeds a limit: \(what)"
        case .malformed(let what): "gossip frame is malformed: \(what)"
        }
    }
}

/// Appends wire fields to a byte array.
struct ByteWriter {
    var bytes: [UInt8] = []

    mutating func byte(_ value: UInt8) { bytes.append(value) }

    mutating func varint(_ value: UInt64) {
        var remaining = value
        while remaining >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: remaining) | 0x80)
            remaining >>= 7
        }
        bytes.append(UInt8(remaining))
    }

    mutating func string(_ value: String) {
        varint(UInt64(value.utf8.count))
        bytes.append(contentsOf: value.utf8)
    }
}

/// Reads wire fields from a byte array, checking every length against the limits first.
struct ByteReader {
    private let bytes: [UInt8]
    private var offset = 0
    let limits: GossipCodec.Limits

    init(_ bytes: [UInt8], limits: GossipCodec.Limits) {
        self.bytes = bytes
        self.limits = limits
    }

    var isAtEnd: Bool { offset == bytes.count }
    var remaining: Int { bytes.count - offset }

    mutating func byte() throws(GossipCodecError) -> UInt8 {
        guard offset < bytes.count else { throw .truncated }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func flag() throws(GossipCodecError) -> Bool {
        let value = try byte()
        guard value <= 1 else { throw .malformed("flag byte \(value)") }
        return value == 1
    }

    mutating func varint() throws(GossipCodecError) -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            let next = try byte()
            guard shift < 64, shift < 63 || next <= 1 else { throw .malformed("varint longer than 64 bits") }
            result |= UInt64(next & 0x7F) << shift
            if next & 0x80 == 0 { return result }
            shift += 7
        }
    }

    mutating func sequence() throws(GossipCodecError) -> UInt32 {
        let value = try varint()
        guard let sequence = UInt32(exactly: value) else { throw .malformed("sequence number \(value)") }
        return sequence
    }

    mutating func count(max: Int, what: String) throws(GossipCodecError) -> Int {
        let value = try varint()
        guard value <= UInt64(max) else { throw .tooLarge("\(value) \(what), at most \(max)") }
        // Each item takes at least one byte, so a count beyond the bytes left is a lie; refuse before allocating.
        guard value <= UInt64(remaining) else { throw .truncated }
        return Int(value)
    }

    mutating func name() throws(GossipCodecError) -> String { try string(max: limits.maxNameBytes) }

    mutating func string(max: Int) throws(GossipCodecError) -> String {
        let length = try varint()
        guard length <= UInt64(max) else { throw .tooLarge("string of \(length) bytes, at most \(max)") }
        guard length <= UInt64(remaining) else { throw .truncated }
        let end = offset + Int(length)
        defer { offset = end }
        return String(decoding: bytes[offset..<end], as: UTF8.self)
    }
}

/// zlib's deflate and inflate over whole buffers (the system libz).
enum Zlib {
    /// `bytes` compressed in the zlib format, or nil if zlib fails.
    static func deflate(_ bytes: [UInt8]) -> [UInt8]? {
        var output = [UInt8](repeating: 0, count: Int(compressBound(uLong(bytes.count))))
        var outputLength = uLongf(output.count)
        let status = bytes.withUnsafeBufferPointer { input in
            output.withUnsafeMutableBufferPointer { output in
                compress2(output.baseAddress, &outputLength, input.baseAddress, uLong(input.count), Z_BEST_SPEED)
            }
        }
        guard status == Z_OK else { return nil }
        output.removeLast(output.count - Int(outputLength))
        return output
    }

    /// `bytes` inflated, or nil if they are not a complete zlib stream or inflate beyond `limit` bytes.
    static func inflate(_ bytes: [UInt8], limit: Int) -> [UInt8]? {
        var stream = z_stream()
        guard inflateInit_(&stream, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else { return nil }
        defer { inflateEnd(&stream) }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        return bytes.withUnsafeBufferPointer { input -> [UInt8]? in
            stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress)
            stream.avail_in = uInt(input.count)
            while true {
                let status = chunk.withUnsafeMutableBufferPointer { chunk -> Int32 in
                    stream.next_out = chunk.baseAddress
                    stream.avail_out = uInt(chunk.count)
                    return CZlib.inflate(&stream, Z_NO_FLUSH)
                }
                let produced = chunk.count - Int(stream.avail_out)
                guard output.count + produced <= limit else { return nil }
                output.append(contentsOf: chunk[0..<produced])
                switch status {
                case Z_STREAM_END: return stream.avail_in == 0 ? output : nil
                case Z_OK where produced > 0 || stream.avail_in > 0: continue
                default: return nil
                }
            }
        }
    }
}
