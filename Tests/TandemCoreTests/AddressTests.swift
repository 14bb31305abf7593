import Testing
@testable import TandemCore

@Suite struct AddressTests {
    @Test(arguments: ["10.0.10.143", "0.0.0.0", "255.255.255.255", "1.2.3.4"])
    func roundTrip(_ text: String) throws {
        let a = try #require(IPv4Address(text))
        #expect(a.description == text)
        #expect(IPv4Address(networkOrder: a.networkOrder) == a)
    }

    @Test(arguments: ["", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", "1.2.3.-4", " 1.2.3.4", "a.b.c.d", "1..2.3", "1.2.3.4/32"])
    func rejectsMalformed(_ text: String) {
        #expect(IPv4Address(text) == nil)
    }

    @Test func prefixContains() throws {
        let p = try #require(IPv4Prefix("10.0.10.0/24"))
        #expect(p.contains(IPv4Address(10, 0, 10, 143)))
        #expect(!p.contains(IPv4Address(10, 0, 11, 1)))
        #expect(IPv4Prefix("10.0.10.0/33") == nil)
    }
}
