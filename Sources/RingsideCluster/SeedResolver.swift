import CResolv
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// Turns seed entries into `host:port` addresses to join.
///
/// - `host:port`: an IP literal as is; a name, every A and AAAA record it resolves to (getaddrinfo, so `/etc/hosts` and
///   the search domains apply, as for every other program on the host).
/// - `dnssrv+NAME`: the SRV records of NAME (search domains apply), each target resolved as above with the record's
///   port. A Kubernetes headless service publishes one per pod: `dnssrv+_gossip._tcp.ringside`.
///
/// Entries that do not resolve are skipped: a seed that is down must not stop a node from joining through the others.
struct SeedResolver: Sendable {
    /// The nameserver for SRV queries, instead of the system's (for tests).
    var nameserver: SocketAddress?

    static let srvPrefix = "dnssrv+"

    /// Every address the seeds resolve to, without duplicates, in the order found.
    func resolve(_ seeds: [String]) async -> [String] {
        var addresses: [String] = []
        for seed in seeds {
            let found: [HostAndPort]
            if seed.hasPrefix(Self.srvPrefix) {
                found = await resolveSRV(String(seed.dropFirst(Self.srvPrefix.count)))
            } else if let target = HostAndPort(seed) {
                found = await resolveHost(target)
            } else {
                found = []
            }
            for address in found.map(\.description) where !addresses.contains(address) {
                addresses.append(address)
            }
        }
        return addresses
    }

    /// The A and AAAA records of `target.host` with `target.port`; an IP literal as is.
    func resolveHost(_ target: HostAndPort) async -> [HostAndPort] {
        if (try? SocketAddress(ipAddress: target.host, port: target.port)) != nil { return [target] }
        return await Self.blocking {
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            var list: UnsafeMutablePointer<addrinfo>?
            guard getaddrinfo(target.host, String(target.port), &hints, &list) == 0, let first = list else { return [] }
            defer { freeaddrinfo(list) }
            var found: [HostAndPort] = []
            var entry: UnsafeMutablePointer<addrinfo>? = first
            while let current = entry {
                if let address = current.pointee.ai_addr, let ip = Self.numericHost(address) {
                    let resolved = HostAndPort(host: ip, port: target.port)
                    if !found.contains(resolved) { found.append(resolved) }
                }
                entry = current.pointee.ai_next
            }
            return found
        }
    }

    /// The numeric form of an IPv4 or IPv6 socket address.
    private static func numericHost(_ address: UnsafeMutablePointer<sockaddr>) -> String? {
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        let written: UnsafePointer<CChar>?
        switch Int32(address.pointee.sa_family) {
        case AF_INET:
            written = address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { address in
                var raw = address.pointee.sin_addr
                return inet_ntop(AF_INET, &raw, &text, socklen_t(text.count))
            }
        case AF_INET6:
            written = address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { address in
                var raw = address.pointee.sin6_addr
                return inet_ntop(AF_INET6, &raw, &text, socklen_t(text.count))
            }
        default:
            return nil
        }
        guard written != nil, let end = text.firstIndex(of: 0) else { return nil }
        return String(decoding: text[..<end].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The SRV records of `name`, each target resolved to its addresses.
    func resolveSRV(_ name: String) async -> [HostAndPort] {
        let nameserver = self.nameserver
        let records: [SRVRecord] = await Self.blocking {
            guard let state = ringside_res_open() else { return [] }
            defer { ringside_res_close(state) }
            if case .v4(let address)? = nameserver {
                var socketAddress = address.address
                ringside_res_use_nameserver(state, &socketAddress)
            }
            var answer = [UInt8](repeating: 0, count: 65_535)
            let length = res_nsearch(
                state,
                name,
                Int32(ns_c_in.rawValue),
                Int32(ns_t_srv.rawValue),
                &answer,
                Int32(answer.count)
            )
            guard length > 0 else { return [] }
            return DNSMessage.srvRecords(in: Array(answer.prefix(Int(length))))
        }
        var found: [HostAndPort] = []
        for record in records.sorted(by: { ($0.priority, $0.target) < ($1.priority, $1.target) }) {
            for address in await resolveHost(HostAndPort(host: record.target, port: record.port))
            where !found.contains(address) {
                found.append(address)
            }
        }
        return found
    }

    /// Runs blocking resolver calls on NIO's thread pool, off the event loops and the cooperative pool.
    private static func blocking<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            NIOThreadPool.singleton.submit { _ in continuation.resume(returning: work()) }
        }
    }
}

/// One SRV record.
package struct SRVRecord: Hashable, Sendable {
    package var priority: Int
    package var weight: Int
    package var port: Int
    package var target: String
}

/// Reads the records Ringside needs from a DNS answer (RFC 1035 §4), bounds-checked throughout.
package enum DNSMessage {
    /// The SRV records in the answer section of `message`; an empty list for anything malformed.
    package static func srvRecords(in message: [UInt8]) -> [SRVRecord] {
        guard message.count >= 12 else { return [] }
        let questions = Int(message[4]) << 8 | Int(message[5])
        let answers = Int(message[6]) << 8 | Int(message[7])
        var offset = 12
        for _ in 0..<questions {
            guard let (_, end) = name(in: message, at: offset), end + 4 <= message.count else { return [] }
            offset = end + 4
        }
        var records: [SRVRecord] = []
        for _ in 0..<answers {
            guard let (_, end) = name(in: message, at: offset), end + 10 <= message.count else { return records }
            let type = Int(message[end]) << 8 | Int(message[end + 1])
            let length = Int(message[end + 8]) << 8 | Int(message[end + 9])
            let data = end + 10
            guard data + length <= message.count else { return records }
            if type == 33, length >= 7, let (target, _) = name(in: message, at: data + 6) {
                records.append(
                    SRVRecord(
                        priority: Int(message[data]) << 8 | Int(message[data + 1]),
                        weight: Int(message[data + 2]) << 8 | Int(message[data + 3]),
                        port: Int(message[data + 4]) << 8 | Int(message[data + 5]),
                        target: target
                    )
                )
            }
            offset = data + length
        }
        return records
    }

    /// The domain name at `offset` (following compression pointers, at most 64 of them) and the offset just after it
    /// in the record; nil past RFC 1035's 255 bytes.
    package static func name(in message: [UInt8], at start: Int) -> (String, Int)? {
        var labels: [String] = []
        var offset = start
        var end: Int?
        var jumps = 0
        var size = 1
        while true {
            guard offset < message.count else { return nil }
            let length = Int(message[offset])
            if length == 0 {
                return (labels.joined(separator: "."), end ?? offset + 1)
            } else if length & 0xC0 == 0xC0 {
                guard offset + 1 < message.count, jumps < 64 else { return nil }
                if end == nil { end = offset + 2 }
                offset = (length & 0x3F) << 8 | Int(message[offset + 1])
                jumps += 1
            } else {
                guard length <= 63, offset + 1 + length <= message.count else { return nil }
                size += 1 + length
                guard size <= 255 else { return nil }
                labels.append(String(decoding: message[(offset + 1)..<(offset + 1 + length)], as: UTF8.self))
                offset += 1 + length
            }
        }
    }
}
