/// xxHash64, the 64-bit member of the xxHash family (https://github.com/Cyan4973/xxHash, `doc/xxhash_spec.md`).
///
/// Ringside hashes shard keys and peer tokens with it, so every process (and any other implementation of the
/// specification) places a key on the same peer. The one-shot form is all Ringside needs: keys and names are short.
public enum XXHash64 {
    @usableFromInline static let prime1: UInt64 = 0x9E37_79B1_85EB_CA87
    @usableFromInline static let prime2: UInt64 = 0xC2B2_AE3D_27D4_EB4F
    @usableFromInline static let prime3: UInt64 = 0x1656_67B1_9E37_79F9
    @usableFromInline static let prime4: UInt64 = 0x85EB_CA77_C2B2_AE63
    @usableFromInline static let prime5: UInt64 = 0x27D4_EB2F_1656_67C5

    /// The hash of `bytes` with `seed`.
    @inlinable
    public static func hash(_ bytes: UnsafeRawBufferPointer, seed: UInt64 = 0) -> UInt64 {
        let count = bytes.count
        var offset = 0
        var h: UInt64

        if count >= 32 {
            var v1 = seed &+ prime1 &+ prime2
            var v2 = seed &+ prime2
            var v3 = seed
            var v4 = seed &- prime1
            repeat {
                v1 = round(v1, lane(bytes, offset))
                v2 = round(v2, lane(bytes, offset + 8))
                v3 = round(v3, lane(bytes, offset + 16))
                v4 = round(v4, lane(bytes, offset + 24))
                offset += 32
            } while offset + 32 <= count
            h = v1.rotated(1) &+ v2.rotated(7) &+ v3.rotated(12) &+ v4.rotated(18)
            h = merge(h, v1)
            h = merge(h, v2)
            h = merge(h, v3)
            h = merge(h, v4)
        } else {
            h = seed &+ prime5
        }

        h &+= UInt64(truncatingIfNeeded: count)

        while offset + 8 <= count {
            h ^= round(0, lane(bytes, offset))
            h = h.rotated(27) &* prime1 &+ prime4
            offset += 8
        }
        if offset + 4 <= count {
            let word = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
            h ^= UInt64(word) &* prime1
            h = h.rotated(23) &* prime2 &+ prime3
            offset += 4
        }
        while offset < count {
            h ^= UInt64(bytes[offset]) &* prime5
            h = h.rotated(11) &* prime1
            offset += 1
        }
        return avalanche(h)
    }

    /// The hash of the UTF-8 bytes of `string` with `seed`. Native Swift strings are hashed in place, without a copy.
    @inlinable
    public static func hash(_ string: String, seed: UInt64 = 0) -> UInt64 {
        if let hash = string.utf8.withContiguousStorageIfAvailable({ hash(UnsafeRawBufferPointer($0), seed: seed) }) {
            return hash
        }
        var copy = string
        return copy.withUTF8 { hash(UnsafeRawBufferPointer($0), seed: seed) }
    }

    /// The hash of `bytes` with `seed`.
    @inlinable
    public static func hash(_ bytes: some Sequence<UInt8>, seed: UInt64 = 0) -> UInt64 {
        if let hash = bytes.withContiguousStorageIfAvailable({ hash(UnsafeRawBufferPointer($0), seed: seed) }) {
            return hash
        }
        return Array(bytes).withUnsafeBytes { hash($0, seed: seed) }
    }

    /// The final mixing step of xxHash64: a bijection on 64 bits in which every input bit affects every output bit.
    @inlinable
    public static func avalanche(_ value: UInt64) -> UInt64 {
        var h = value
        h ^= h >> 33
        h &*= prime2
        h ^= h >> 29
        h &*= prime3
        h ^= h >> 32
        return h
    }

    @inlinable
    static func lane(_ bytes: UnsafeRawBufferPointer, _ offset: Int) -> UInt64 {
        UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }

    @inlinable
    static func round(_ accumulator: UInt64, _ input: UInt64) -> UInt64 {
        (accumulator &+ input &* prime2).rotated(31) &* prime1
    }

    @inlinable
    static func merge(_ accumulator: UInt64, _ value: UInt64) -> UInt64 {
        (accumulator ^ round(0, value)) &* prime1 &+ prime4
    }
}

extension UInt64 {
    @inlinable
    func rotated(_ bits: UInt64) -> UInt64 {
        (self << bits) | (self >> (64 &- bits))
    }
}
