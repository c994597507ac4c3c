import NIOCore

/// The address a node tells other nodes to dial when it listens on every address (`0.0.0.0` or `::`) and nobody
/// said what to advertise.
///
/// Advertising the wildcard itself, or loopback, would send every peer to its own machine, so the node takes an
/// address of its own network interfaces, as memberlist does: a private IPv4 address first (RFC 1918 or the
/// shared 100.64/10 range), then any other IPv4 address that is neither loopback nor link-local, then (when listening
/// on `::`) a unique-local IPv6 address, then any other IPv6 address that is neither loopback nor link-local.
/// Interfaces are taken in the order the system lists them. Only a machine with nothing but loopback advertises
/// loopback: there a single node, or several on the one machine, still work.
public enum AdvertisedHost {
    /// Whether `host` is a wildcard address (without brackets, as ``HostAndPort`` holds it): one to listen on, never
    /// one to dial.
    public static func isWildcard(_ host: String) -> Bool {
        host == "0.0.0.0" || host == "::"
    }

    /// Whether `host` is a loopback address or `localhost`: reachable from this machine only.
    public static func isLoopback(_ host: String) -> Bool {
        if host == "localhost" || host == "::1" { return true }
        guard case .v4(let v4)? = try? SocketAddress(ipAddress: host, port: 0) else { return false }
        return UInt32(bigEndian: v4.address.sin_addr.s_addr) >> 24 == 127
    }

    /// Whether another node can dial `address` when it is given as the address to advertise: not a wildcard, not
    /// port 0.
    public static func canBeDialled(_ address: HostAndPort) -> Bool {
        !isWildcard(address.host) && address.port != 0
    }

    /// The host to advertise for a listener on `listenHost`: `listenHost` itself unless it is a wildcard.
    public static func forListener(on listenHost: String) -> String {
        guard isWildcard(listenHost) else { return listenHost }
        let ipv6 = listenHost != "0.0.0.0"
        let interfaceAddresses = (try? System.enumerateDevices())?.compactMap(\.address) ?? []
        return choose(among: interfaceAddresses, ipv6: ipv6) ?? (ipv6 ? "::1" : "127.0.0.1")
    }

    /// The best of `addresses` to advertise, or nil when none is fit to be dialled from another machine.
    public static func choose(among addresses: [SocketAddress], ipv6: Bool) -> String? {
        var best: (rank: Int, host: String)?
        for address in addresses {
            guard let rank = rank(address, ipv6: ipv6), let host = address.ipAddress else { continue }
            if let current = best, current.rank <= rank { continue }
            best = (rank, host)
        }
        return best?.host
    }

    /// Lower is better; nil for an address another machine cannot dial.
    private static func rank(_ address: SocketAddress, ipv6: Bool) -> Int? {
        switch address {
        case .v4(let v4):
            let value = UInt32(bigEndian: v4.address.sin_addr.s_addr)
            let (a, b) = (value >> 24, (value >> 16) & 0xFF)
            if a == 0 || a == 127 || (a == 169 && b == 254) || a >= 224 { return nil }
            let isPrivate =
                a == 10 || (a == 172 && (16...31).contains(b)) || (a == 192 && b == 168)
                || (a == 100 && (64...127).contains(b))
            return isPrivate ? 0 : 1
        case .v6(let v6):
            guard ipv6 else { return nil }
            let bytes = withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
            if bytes.allSatisfy({ $0 == 0 }) || bytes == Array(repeating: 0, count: 15) + [1] { return nil }
            if bytes[0] == 0xFE && bytes[1] & 0xC0 == 0x80 { return nil }  // link-local, fe80::/10
            if bytes[0] == 0xFF { return nil }  // multicast
            // IPv4-mapped, ::ffff:0:0/96: the IPv4 address is listed on its own.
            if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF { return nil }
            return bytes[0] & 0xFE == 0xFC ? 2 : 3  // unique-local fc00::/7 before the rest
        case .unixDomainSocket:
            return nil
        }
    }
}
