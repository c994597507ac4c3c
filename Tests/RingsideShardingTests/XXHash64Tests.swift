import RingsideSharding
import Testing

@Suite("xxHash64")
struct XXHash64Tests {
    /// The sanity buffer of the reference `xxhsum`: 101 bytes from a 32-bit generator that squares itself.
    static let sanityBuffer: [UInt8] = {
        var generator: UInt32 = 2_654_435_761
        return (0..<101).map { _ in
            defer { generator = generator &* generator }
            return UInt8(truncatingIfNeeded: generator >> 24)
        }
    }()

    static let prime: UInt64 = 2_654_435_761

    /// The reference vectors of xxHash's sanity check: empty, short (1 and 14 bytes) and long (101 bytes, more than
    /// one 32-byte stripe) inputs, each with seed 0 and a non-zero seed.
    @Test(
        arguments: [
            (0, 0, 0xEF46_DB37_51D8_E999),
            (0, prime, 0xAC75_FDA2_929B_17EF),
            (1, 0, 0x4FCE_394C_C889_52D8),
            (1, prime, 0x7398_40CB_819F_A723),
            (14, 0, 0xCFFA_8DB8_81BC_3A3D),
            (14, prime, 0x5B96_1158_5EFC_C9CB),
            (101, 0, 0x0EAB_5433_84F8_78AD),
            (101, prime, 0xCAA6_5939_306F_1E21),
        ] as [(Int, UInt64, UInt64)]
    )
    func referenceSanityVectors(length: Int, seed: UInt64, expected: UInt64) {
        let input = Array(Self.sanityBuffer.prefix(length))
        #expect(XXHash64.hash(input, seed: seed) == expected)
    }

    @Test(
        arguments: [
            ("a", 0xD24E_C4F1_A98C_6E5B),
            ("abc", 0x44BC_2CF5_AD77_0999),
            ("Nobody inspects the spammish repetition", 0xFBCE_A83C_8A37_8BF1),
        ] as [(String, UInt64)]
    )
    func knownStrings(text: String, expected: UInt64) {
        #expect(XXHash64.hash(text) == expected)
    }

    @Test func everyInputFormHashesTheSameBytes() {
        let text = "ringside-42:a key long enough to cross a 32-byte stripe"
        let bytes = Array(text.utf8)
        let expected = bytes.withUnsafeBytes { XXHash64.hash($0, seed: 7) }
        #expect(XXHash64.hash(text, seed: 7) == expected)
        #expect(XXHash64.hash(bytes, seed: 7) == expected)
        // A sequence without contiguous storage takes the copying path.
        #expect(XXHash64.hash(bytes.lazy.map { $0 }, seed: 7) == expected)
        #expect(ShardKey.hash(text) == XXHash64.hash(text, seed: 0))
    }
}
