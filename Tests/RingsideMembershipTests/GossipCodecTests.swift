import RingsideSharding
import Testing

@testable import RingsideMembership

@Suite("Gossip codec")
struct GossipCodecTests {
    static let member = Member(
        name: "ringside-1",
        address: "10.0.0.1:7401",
        incarnation: 1_700_000_000_123,
        status: .suspect,
        state: .terminating,
        metadata: [
            "zone": MetadataEntry(value: "eu-west-1a", version: 3),
            "old": MetadataEntry(value: "", version: 4, isDeleted: true),
        ]
    )

    static let everyMessage: [GossipMessage] = [
        .ping(sequence: 0, target: "ringside-2"),
        .ping(sequence: .max, target: ""),
        .ack(sequence: 7),
        .nack(sequence: 8, refused: true),
        .nack(sequence: 9, refused: false),
        .pingRequest(sequence: 10, target: "ringside-3", targetAddress: "[::1]:7401"),
        .alive(member),
        .suspect(name: "ringside-4", incarnation: .max, from: "ringside-1"),
        .dead(name: "ringside-5", incarnation: 0, from: "ringside-5"),
        .pushPull(isResponse: true, isJoin: false, members: [member, member]),
        .pushPull(isResponse: false, isJoin: true, members: []),
    ]

    /// Five hundred members: a full-state exchange that is compressed.
    static let crowd = (0..<500).map {
        Member(
            name: "ringside-\($0)",
            address: "10.0.1.\($0 % 256):7401",
            incarnation: 5,
            status: .alive,
            state: .participant
        )
    }

    static func envelope(_ messages: [GossipMessage]) -> GossipEnvelope {
        GossipEnvelope(
            clusterName: "prod",
            senderName: "ringside-0",
            senderAddress: "10.0.0.0:7401",
            messages: messages
        )
    }

    @Test func everyMessageRoundTrips() throws {
        let original = Self.envelope(Self.everyMessage)
        #expect(try GossipCodec.decode(GossipCodec.encode(original, compress: false)) == original)
        #expect(try GossipCodec.decode(GossipCodec.encode(original, compress: true)) == original)
    }

    @Test func largeBodiesAreCompressed() throws {
        let members = (0..<200).map {
            Member(
                name: "ringside-\($0)",
                address: "10.0.\($0 / 256).\($0 % 256):7401",
                incarnation: 5,
                status: .alive,
                state: .participant
            )
        }
        let original = Self.envelope([.pushPull(isResponse: false, isJoin: false, members: members)])
        let plain = GossipCodec.encode(original, compress: false)
        let compressed = GossipCodec.encode(original)
        #expect(compressed[1] == 1)
        #expect(compressed.count * 3 < plain.count)
        #expect(try GossipCodec.decode(compressed) == original)
    }

    @Test func framesFromAnotherVersionAreRefused() {
        var bytes = GossipCodec.encode(Self.envelope([.ack(sequence: 1)]))
        bytes[0] = 2
        #expect(throws: GossipCodecError.unsupportedVersion(2)) { try GossipCodec.decode(bytes) }
    }

    @Test func liesAboutCountsAreRefusedBeforeAllocating() {
        var writer = ByteWriter()
        writer.string("prod")
        writer.string("a")
        writer.string("a:1")
        writer.varint(3)  // three messages, but nothing follows
        #expect(throws: GossipCodecError.truncated) { try GossipCodec.decode([1, 0] + writer.bytes) }

        var huge = ByteWriter()
        huge.string("prod")
        huge.string("a")
        huge.string("a:1")
        huge.varint(1)
        huge.byte(8)
        huge.byte(0)
        huge.varint(UInt64(Int32.max))  // two billion members
        let error = #expect(throws: GossipCodecError.self) { try GossipCodec.decode([1, 0] + huge.bytes) }
        #expect(error.map { "\($0)" }?.contains("members") == true)
    }

    @Test func compressedBombsAreRefused() throws {
        let zeros = [UInt8](repeating: 0, count: 4 << 20)
        let bomb = try #require(Zlib.deflate(zeros))
        var limits = GossipCodec.Limits()
        limits.maxEnvelopeBytes = 1 << 20
        #expect(throws: GossipCodecError.self) { try GossipCodec.decode([1, 1] + bomb, limits: limits) }
    }

    @Test func aSmallBodyMayNotInflateBeyondAHundredTimesItsSize() throws {
        // 256 KiB of zeros deflate to a few hundred bytes: far within the envelope bound, far beyond the ratio.
        let bomb = try #require(Zlib.deflate([UInt8](repeating: 0, count: 256 << 10)))
        #expect(bomb.count * 100 < 256 << 10)
        let error = #expect(throws: GossipCodecError.self) { try GossipCodec.decode([1, 1] + bomb) }
        #expect(error.map { "\($0)" }?.contains("100 times") == true)
        // A real full-state exchange compresses well within it.
        let original = Self.envelope([.pushPull(isResponse: false, isJoin: false, members: Self.crowd)])
        var inflated = 0
        #expect(try GossipCodec.decode(GossipCodec.encode(original), inflated: &inflated) == original)
        #expect(inflated == GossipCodec.encode(original, compress: false).count - 2)
    }

    @Test func aCompressedBodyInflatesOnlyWithinTheBudgetLeft() throws {
        let frame = GossipCodec.encode(
            Self.envelope([.pushPull(isResponse: false, isJoin: false, members: Self.crowd)])
        )
        var limits = GossipCodec.Limits()
        limits.inflateBudget = 1000
        let error = #expect(throws: GossipCodecError.self) { try GossipCodec.decode(frame, limits: limits) }
        #expect(error.map { "\($0)" }?.contains("remaining budget") == true)
        limits.inflateBudget = 1 << 20
        #expect(throws: Never.self) { try GossipCodec.decode(frame, limits: limits) }
    }

    /// Random bytes, and valid frames with bytes flipped, cut short or extended: the decoder answers every one with a
    /// value or an error, never a crash.
    @Test func randomAndMutatedFramesNeverCrash() {
        var random = SplitMix64(seed: 0xF022)
        let valid = [
            GossipCodec.encode(Self.envelope(Self.everyMessage), compress: false),
            GossipCodec.encode(Self.envelope(Self.everyMessage), compress: true),
        ]
        var decoded = 0
        var refused = 0
        for round in 0..<30_000 {
            var bytes: [UInt8]
            if round % 3 == 0 {
                bytes = (0..<Int(random.next() % 300)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
                if round % 2 == 0, bytes.count >= 2 { bytes[0] = 1 }
            } else {
                bytes = valid[round % 2]
                for _ in 0..<(1 + Int(random.next() % 4)) {
                    let index = Int(random.next() % UInt64(bytes.count))
                    switch random.next() % 3 {
                    case 0: bytes[index] = UInt8(truncatingIfNeeded: random.next())
                    case 1: bytes.removeLast(bytes.count - index)
                    default: bytes.insert(UInt8(truncatingIfNeeded: random.next()), at: index)
                    }
                    if bytes.isEmpty { break }
                }
            }
            do {
                _ = try GossipCodec.decode(bytes)
                decoded += 1
            } catch {
                refused += 1
            }
        }
        #expect(decoded + refused == 30_000)
        #expect(refused > 20_000)
    }
}

@Suite("Lifeguard suspicion")
struct SuspicionTests {
    @Test func timeoutShrinksWithIndependentConfirmations() {
        var suspicion = Suspicion(
            incarnation: 1,
            from: "a",
            start: .zero,
            minimum: .seconds(4),
            maximum: .seconds(24),
            expectedConfirmations: 2
        )
        #expect(suspicion.timeout == .seconds(24))
        let original = suspicion.confirm(from: "a")
        #expect(original == false)
        let first = suspicion.confirm(from: "b")
        #expect(first)
        let once = suspicion.timeout
        #expect(once < .seconds(24) && once > .seconds(4))
        let second = suspicion.confirm(from: "c")
        #expect(second)
        #expect(suspicion.timeout == .seconds(4))
        // Beyond the expected confirmations, more change nothing.
        let third = suspicion.confirm(from: "d")
        #expect(third == false)
    }

    @Test func smallClustersUseTheMinimum() {
        let suspicion = Suspicion(
            incarnation: 1,
            from: "a",
            start: .zero,
            minimum: .seconds(4),
            maximum: .seconds(24),
            expectedConfirmations: 0
        )
        #expect(suspicion.deadline == GossipInstant.zero + .seconds(4))
    }
}
