import NIOCore

/// A `host:port` pair as written in configuration: `10.0.0.1:7401`, `[::1]:7401`, `ringside-0.ringside:7401`.
public struct HostAndPort: Hashable, Sendable, CustomStringConvertible {
    /// The host name or address, without brackets.
    public var host: String
    /// The port.
    public var port: Int

    /// Parses `text`, or returns nil when it is not `host:port` with a port from 0 to 65535.
    public init?(_ text: String) {
        let hostPart: Substring
        let portPart: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                return nil
            }
            hostPart = text[text.index(after: text.startIndex)..<close]
            portPart = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":") else { return nil }
            hostPart = text[..<colon]
            portPart = text[text.index(after: colon)...]
        }
        guard !hostPart.isEmpty, let port = Int(portPart), (0...65_535).contains(port) else { return nil }
        self.host = String(hostPart)
        self.port = port
    }

    /// A pair from its parts.
    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// The address and port of an IP socket address, or nil for any other kind.
    public init?(_ address: SocketAddress) {
        guard let host = address.ipAddress, let port = address.port else { return nil }
        self.init(host: host, port: port)
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
