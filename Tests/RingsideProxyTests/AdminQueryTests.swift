import Testing

@testable import RingsideProxy

@Suite("Admin query strings")
struct AdminQueryTests {
    @Test func escapesAndPlusesAreDecodedAndBrokenEscapesKept() {
        #expect(AdminServer.percentDecoded("a%20b+c") == "a b c")
        #expect(AdminServer.percentDecoded("%C3%BC%2F%26") == "ü/&")
        // Not two hex digits: the bytes stay as they came, none is swallowed.
        #expect(AdminServer.percentDecoded("%ZZ") == "%ZZ")
        #expect(AdminServer.percentDecoded("50%") == "50%")
        #expect(AdminServer.percentDecoded("%4") == "%4")
        #expect(AdminServer.percentDecoded("%+f") == "% f")
    }

    @Test func aQuerySplitsIntoDecodedParameters() {
        let (path, query) = AdminServer.split("/v1/lookup?key=a%3Db&replicas=2&flag")
        #expect(path == "/v1/lookup")
        #expect(query == ["key": "a=b", "replicas": "2", "flag": ""])
    }
}
