import Foundation
import NIOCore
import RingsideCluster
import RingsideMembership

/// The decoders a client, a peer or a DNS server controls, each a fuzz target. `RINGSIDE_FUZZ_TARGET` names the one a
/// libFuzzer run drives (`engine` when unset); the replayer takes `--target NAME`.
enum FuzzTarget: String, CaseIterable {
    /// The HTTP/1.1 engine on the app plane, against its model (``EngineModel``).
    case engine
    /// The engine on the cluster port: requests a peer forwards, with the `x-ringside-*` fields it reads.
    case forwarded
    /// The gossip envelope and message codec: whatever decodes encodes back to the same envelope.
    case gossip
    /// DNS answers, as seed discovery reads SRV records from them.
    case dns

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Runs one input; throws what it found wrong (a crash is a finding too).
    func run(_ input: [UInt8]) throws {
        switch self {
        case .engine:
            try EngineModel.run(input)
        case .forwarded:
            try EngineModel.run(input, settings: EngineModel.forwardedSettings)
        case .gossip:
            try Self.gossip(input)
        case .dns:
            try Self.dns(input)
        }
    }

    /// An envelope that decodes is one the encoder writes back, compressed or not, to the same envelope.
    static func gossip(_ input: [UInt8]) throws {
        var limits = GossipCodec.Limits()
        limits.maxEnvelopeBytes = 1 << 20
        limits.inflateBudget = 256 << 10
        var inflated = 0
        guard let envelope = try? GossipCodec.decode(input, limits: limits, inflated: &inflated) else { return }
        guard inflated <= 256 << 10, inflated <= max(0, input.count - 2) * limits.maxInflateRatio else {
            throw Failure(description: "inflated \(inflated) bytes from \(input.count)")
        }
        for compress in [false, true] {
            let again = try? GossipCodec.decode(GossipCodec.encode(envelope, compress: compress))
            guard again == envelope else {
                throw Failure(description: "\(envelope) does not survive an encoding (compress: \(compress))")
            }
        }
    }

    /// SRV records come out of any message within its bounds: names of at most 255 bytes, ports of 16 bits.
    static func dns(_ input: [UInt8]) throws {
        for record in DNSMessage.srvRecords(in: input) {
            guard record.target.utf8.count <= 255 * 4, (0...65535).contains(record.port) else {
                throw Failure(description: "record out of bounds: \(record)")
            }
        }
        for start in stride(from: 0, to: min(input.count, 64), by: 7) {
            if let (name, end) = DNSMessage.name(in: input, at: start), end > input.count || name.utf8.count > 255 * 4 {
                throw Failure(description: "name \(name.debugDescription) ends at \(end) of \(input.count)")
            }
        }
    }

    /// The target a libFuzzer run drives.
    static let current =
        FuzzTarget(rawValue: getenv("RINGSIDE_FUZZ_TARGET").map { String(cString: $0) } ?? "engine")
        ?? .engine
}

/// One input for libFuzzer (through LLVMFuzzerRunDriver): a crash is a finding.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    do {
        try FuzzTarget.current.run(input)
    } catch {
        fatalError("\(error)")
    }
    return 0
}
