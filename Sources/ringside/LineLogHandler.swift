import Foundation
import Logging
import NIOConcurrencyHelpers
import RingsideProxy

/// How `ringside run` writes its log lines.
enum LogFormat: String, Sendable {
    /// `time=… level=info msg="member joined" ringside.peer=node-2 …`: what logfmt readers (Loki, Heroku, Grafana)
    /// take apart, and what a person reads.
    case logfmt
    /// One JSON object a line with the same keys: what Elastic, Datadog and `jq` take.
    case json
}

/// A log handler that writes one line per message to standard error, in logfmt or JSON: `time`, `level`, `msg`,
/// `logger`, then the metadata sorted by key. Messages are static texts and metadata keys dot-named
/// (`ringside.peer`), so a line is found by its message and filtered by its keys.
struct LineLogHandler: LogHandler {
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level
    let label: String
    let format: LogFormat
    /// The file descriptor lines go to: standard error for diagnostics, standard output for the access log.
    let output: Int32

    init(label: String, format: LogFormat, level: Logger.Level, output: Int32 = STDERR_FILENO) {
        self.label = label
        self.format = format
        self.logLevel = level
        self.output = output
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        let fields =
            [
                ("time", Self.timestamp()), ("level", event.level.rawValue), ("msg", "\(event.message)"),
                ("logger", label),
            ] + merged.sorted { $0.key < $1.key }.map { ($0.key, "\($0.value)") }
        Self.write(format == .json ? Self.json(fields) : Self.logfmt(fields), to: output)
    }

    /// `key=value` pairs; a value with a space, a quote, an equals sign or a control character is quoted, with `\"`,
    /// `\\` and `\n`-style escapes.
    static func logfmt(_ fields: [(String, String)]) -> String {
        var line = ""
        for (key, value) in fields {
            if !line.isEmpty { line += " " }
            line += key + "="
            let needsQuotes =
                value.isEmpty
                || value.unicodeScalars.contains { $0 == " " || $0 == "\"" || $0 == "=" || $0.value < 0x20 }
            line += needsQuotes ? "\"" + escaped(value) + "\"" : value
        }
        return line + "\n"
    }

    /// One JSON object, keys in the given order, values as strings.
    static func json(_ fields: [(String, String)]) -> String {
        "{" + fields.map { "\"\(escaped($0.0))\":\"\(escaped($0.1))\"" }.joined(separator: ",") + "}\n"
    }

    /// `text` as the inside of a JSON string (which logfmt's quoted values share).
    static func escaped(_ text: String) -> String { String(JSONWriter.quoted(text).dropFirst().dropLast()) }

    /// RFC 3339 in UTC with milliseconds.
    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var parts = tm()
        var seconds = now.tv_sec
        gmtime_r(&seconds, &parts)
        return String(
            format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
            parts.tm_year + 1900,
            parts.tm_mon + 1,
            parts.tm_mday,
            parts.tm_hour,
            parts.tm_min,
            parts.tm_sec,
            now.tv_nsec / 1_000_000
        )
    }

    /// One `write(2)` per line, so that lines from several threads never interleave.
    private static let lock = NIOLock()
    private static func write(_ line: String, to output: Int32) {
        var bytes = Array(line.utf8)
        lock.withLock {
            bytes.withUnsafeMutableBytes { buffer in
                var offset = 0
                while offset < buffer.count {
                    let written = Glibc.write(output, buffer.baseAddress! + offset, buffer.count - offset)
                    if written <= 0 {
                        if written < 0, errno == EINTR { continue }
                        return
                    }
                    offset += written
                }
            }
        }
    }
}
