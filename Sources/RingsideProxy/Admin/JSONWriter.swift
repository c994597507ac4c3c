/// Builds JSON text for the admin API (and the `ringside` command's JSON log lines), without Foundation.
package struct JSONWriter {
    private(set) var text = ""

    /// A JSON string literal for `value`, escaped per RFC 8259.
    package static func quoted(_ value: String) -> String {
        var result = "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                result += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result + "\""
    }

    /// `{"key": value, …}` from already-encoded values, in the order given.
    static func object(_ fields: [(String, String)]) -> String {
        "{" + fields.map { "\(quoted($0.0)):\($0.1)" }.joined(separator: ",") + "}"
    }

    /// `[value, …]` from already-encoded values.
    static func array(_ values: [String]) -> String { "[" + values.joined(separator: ",") + "]" }
}
