import Foundation
import Logging
import RingsideTestSupport
import Testing

@testable import RingsideCluster

@Suite("A plane's TLS files")
struct PlaneTLSTests {
    @Test func filesThatChangeAreReadAgainAndABadSetKeepsTheOldOne() throws {
        let ca = try TestCA(directory: TestCA.temporaryDirectory())
        let bundle = try ca.writeBundle()
        let first = try ca.issue(["node-1"], file: "node-1", notValidAfter: Date() + 86_400)
        let tls = try PlaneTLS.cluster(
            certificate: first.certificate,
            key: first.key,
            ca: bundle,
            logger: Logger(label: "t")
        )
        let before = tls.context(.clusterServer)
        let expiry = try #require(tls.secondsUntilExpiry())
        // A second either way: the certificate holds whole seconds, the clock does not.
        #expect((86_000...86_401).contains(expiry))
        #expect(tls.reload() == .unchanged)

        // A half-written certificate: the old contexts stay, and the reason is given.
        try "-----BEGIN CERTIFICATE-----\nMIIB".write(toFile: first.certificate, atomically: true, encoding: .utf8)
        guard case .failed(let reason) = tls.reload() else {
            Issue.record("a certificate that does not load was taken")
            return
        }
        #expect(reason.contains(first.certificate))
        #expect(tls.context(.clusterServer) === before)
        // Reported once per change of the files, not at every check.
        #expect(tls.reload() == .unchanged)

        // A key that belongs to another certificate does not load either.
        let other = try ca.issue(["node-2"], file: "node-2")
        try FileManager.default.removeItem(atPath: first.certificate)
        try FileManager.default.copyItem(atPath: other.certificate, toPath: first.certificate)
        guard case .failed = tls.reload() else {
            Issue.record("a certificate without its key was taken")
            return
        }
        #expect(tls.context(.clusterServer) === before)

        // The whole new pair is taken: new contexts, a new expiry.
        try ca.issue(["node-1"], file: "node-1", notValidAfter: Date() + 86_400 * 7)
        #expect(tls.reload() == .reloaded)
        #expect(tls.context(.clusterServer) !== before)
        #expect(try #require(tls.secondsUntilExpiry()) > 86_400 * 6)
    }

    @Test func filesThatDoNotLoadAtStartNameTheFile() throws {
        let ca = try TestCA(directory: TestCA.temporaryDirectory())
        let bundle = try ca.writeBundle()
        let node = try ca.issue(["node-1"], file: "node-1")
        let missing = ca.directory.appendingPathComponent("missing.pem").path
        for (certificate, key, ca, file) in [
            (missing, node.key, bundle, missing), (node.certificate, missing, bundle, missing),
            (node.certificate, node.key, missing, missing), (node.key, node.key, bundle, node.key),
        ] {
            let error = #expect(throws: TLSLoadError.self) {
                _ = try PlaneTLS.cluster(certificate: certificate, key: key, ca: ca, logger: Logger(label: "t"))
            }
            #expect(error?.file == file, "\(error?.description ?? "")")
        }
    }
}
