extension HashRing {
    /// Every owner's tokens, sorted, then the sentinel `UInt64.max`. Ties in position (vanishingly rare in 48 bits) fall to the owner earlier in name
    /// order, so the order is the same in every process.
    static func sortedTokens(owners: [Peer], tokensPerPeer: Int) -> [UInt64] {
        let count = owners.count * tokensPerPeer + 1
        var tokens = [UInt64](unsafeUninitializedCapacity: count) { buffer, initialized in
            // The sentinel sorts last: no token equals it, because owner indices stay below 0xFFFF.
            buffer.initializeElement(at: count - 1, to: .max)
            var next = 0
            for (ownerIndex, owner) in owners.enumerated() {
                var name = owner.name
                name.withUTF8 { name in
                    let nameBytes = UnsafeRawBufferPointer(name)
                    for seed in 0..<tokensPerPeer {
                        let position = XXHash64.hash(nameBytes, seed: UInt64(seed)) & ~0xFFFF
                        buffer.initializeElement(at: next, to: position | UInt64(ownerIndex))
                        next += 1
                    }
                }
            }
            initialized = count
        }
        radixSort(&tokens)
        return tokens
    }

    /// The bucket table for `tokens` (sorted, sentinel last): about one token a bucket, at most 2^21 buckets.
    static func bucketIndex(tokens allTokens: [UInt64]) -> (starts: [UInt32], shift: UInt64) {
        let tokens = allTokens.dropLast()
        let bits = min(21, max(1, UInt64.bitWidth - max(1, tokens.count - 1).leadingZeroBitCount))
        let bucketCount = 1 << bits
        let shift = UInt64(64 - bits)
        var starts = [UInt32](repeating: UInt32(tokens.count), count: bucketCount + 1)
        var bucket = 0
        for (index, token) in zip(tokens.indices, tokens) {
            let tokenBucket = Int(truncatingIfNeeded: token >> shift)
            while bucket <= tokenBucket {
                starts[bucket] = UInt32(index)
                bucket += 1
            }
        }
        return (starts, shift)
    }

    /// Sorts 64-bit values by a least-significant-digit radix sort, a byte at a time: linear in the count, which keeps
    /// a rebuild of a million tokens to milliseconds where a comparison sort takes tens of them.
    static func radixSort(_ values: inout [UInt64]) {
        guard values.count > 256 else {
            values.sort()
            return
        }
        var counts = [Int](repeating: 0, count: 8 * 256)
        for value in values {
            for digit in 0..<8 {
                counts[digit &* 256 &+ Int(truncatingIfNeeded: (value >> UInt64(digit &* 8)) & 0xFF)] &+= 1
            }
        }
        var scratch = [UInt64](repeating: 0, count: values.count)
        for digit in 0..<8 {
            // A byte that is the same in every value (a small owner index's high byte, say) needs no pass.
            let base = digit * 256
            if counts[base..<base + 256].contains(values.count) { continue }
            var offsets = [Int](repeating: 0, count: 256)
            var sum = 0
            for byte in 0..<256 {
                offsets[byte] = sum
                sum &+= counts[base &+ byte]
            }
            let shift = UInt64(digit * 8)
            values.withUnsafeBufferPointer { source in
                scratch.withUnsafeMutableBufferPointer { destination in
                    offsets.withUnsafeMutableBufferPointer { offsets in
                        for value in source {
                            let byte = Int(truncatingIfNeeded: (value >> shift) & 0xFF)
                            destination[offsets[byte]] = value
                            offsets[byte] &+= 1
                        }
                    }
                }
            }
            swap(&values, &scratch)
        }
    }
}
