import RingsideCluster
import Testing

@Suite("Rate-limited log lines")
struct LogRateLimiterTests {
    @Test func oneLineAKeyAndIntervalSayingHowManyWereHeldBack() {
        let limiter = LogRateLimiter(interval: .seconds(1))
        let start = ContinuousClock.now
        #expect(limiter.allow("a", now: start) == 0)
        #expect(limiter.allow("a", now: start + .milliseconds(10)) == nil)
        #expect(limiter.allow("a", now: start + .milliseconds(20)) == nil)
        // Another key has a window of its own.
        #expect(limiter.allow("b", now: start + .milliseconds(30)) == 0)
        #expect(limiter.allow("a", now: start + .seconds(1)) == 2)
        #expect(limiter.allow("a", now: start + .seconds(2)) == 0)
    }
}
