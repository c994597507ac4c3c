import Foundation
import RingsideMembership
import RingsideSharding

/// Writes the gossip and DNS seed corpora (`ringside-fuzz --write-seeds FOLDER`): every gossip message kind, small and
/// large enough to be compressed, and SRV answers with and without name compression. Deterministic.
enum SeedWriter {
    static func write(into folder: String) throws -> Int {
        var written = 0
        func save(_ bytes: [UInt8], _ target: FuzzTarget, _ name: String) throws {
            let directory = "\(folder)/\(target.rawValue)"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            try Data(bytes).write(to: URL(fileURLWithPath: "\(directory)/\(name)"))
            written += 1
        }
        for (index, messages) in gossipMessages.enumerated() {
            let envelope = GossipEnvelope(
                clusterName: "prod",
                senderName: "ringside-0",
                senderAddress: "10.0.0.0:7401",
                messages: messages
            )
            try save(GossipCodec.encode(envelope, compress: false), .gossip, "envelope-\(index)")
            try save(GossipCodec.encode(envelope, compress: true), .gossip, "envelope-\(index)-compressed")
        }
        for (index, answer) in dnsAnswers.enumerated() { try save(answer, .dns, "srv-\(index)") }
        return written
    }

    static let member = Member(
        name: "ringside-1",
        address: "10.0.0.1:7401",
        incarnation: 3,
        status: .alive,
        state: .participant,
        metadata: [
            "zone": MetadataEntry(value: "eu-1", version: 2),
            "gone": MetadataEntry(value: "", version: 3, isDeleted: true),
        ]
    )

    static let crowd: [Member] = (0..<60).map { index -> Member in
        let status: MemberStatus = index % 7 == 0 ? .suspect : .alive
        let state: PeerState = index % 5 == 0 ? .viewer : .participant
        return Member(
            name: "ringside-\(index)",
            address: "10.0.0.\(index):7401",
            incarnation: UInt64(index),
            status: status,
            state: state
        )
    }

    static let gossipMessages: [[GossipMessage]] = [
        [.ping(sequence: 1, target: "ringside-2")],
        [.ack(sequence: 7), .nack(sequence: 8, refused: true)],
        [.pingRequest(sequence: 10, target: "ringside-3", targetAddress: "[::1]:7401")],
        [.alive(member), .suspect(name: "ringside-4", incarnation: 9, from: "ringside-1")],
        [.dead(name: "ringside-5", incarnation: 0, from: "ringside-5")],
        [.pushPull(isResponse: true, isJoin: false, members: [member])],
        [.pushPull(isResponse: false, isJoin: true, members: crowd)],
    ]

    /// SRV answers for `_gossip._tcp.ringside`: two records with their targets written out, then the same with the
    /// targets compressed against the question's name.
    static let dnsAnswers: [[UInt8]] = {
        func name(_ text: String) -> [UInt8] {
            text.split(separator: ".").flatMap { [UInt8($0.utf8.count)] + Array($0.utf8) } + [0]
        }
        let question = name("_gossip._tcp.ringside.svc")
        func answer(_ targets: [[UInt8]]) -> [UInt8] {
            var message: [UInt8] = [0x12, 0x34, 0x81, 0x80, 0, 1, 0, UInt8(targets.count), 0, 0, 0, 0]
            message += question + [0, 33, 0, 1]
            for (index, target) in targets.enumerated() {
                let data: [UInt8] = [0, 10, 0, 50, 0x1C, 0xE9] + target
                message += [0xC0, 12, 0, 33, 0, 1, 0, 0, 0, 30, 0, UInt8(data.count)] + data
                _ = index
            }
            return message
        }
        return [
            answer([name("ringside-0.ringside.svc"), name("ringside-1.ringside.svc")]),
            answer([
                [10] + Array("ringside-0".utf8) + [0xC0, 12 + 14], [10] + Array("ringside-1".utf8) + [0xC0, 12 + 14],
            ]),
            answer([]),
        ]
    }()
}
