import Testing
import TandemCore
import TandemTestSupport
import TandemSyncWire

/// `endpointVerdicts` (proto/SPEC.md §14.5): sizes, canonical round trips and refusals beyond the
/// golden vectors.
@Suite struct VerdictCodecTests {
    static func ip(_ i: Int) -> IPv4Address { IPv4Address(UInt32(0x0a00_0000 + i)) }

    /// A service whose every endpoint is down, and a part as full as it can be.
    static func fullService(_ i: Int) -> ServiceVerdict {
        ServiceVerdict(key: ServiceKey(vip: IPv4Address(UInt32(0xc633_6400 + i)), port: 80, proto: .tcp),
                       down: (0..<DatapathLimits.maxEndpoints).map {
                           DownEndpoint(address: ip($0 + 1), port: 8080, reasons: [.probe], sinceMicros: UInt64($0 + 1))
                       })
    }

    @Test func aFullPartFitsAConfigFrameAndRoundTrips() throws {
        let perService = SyncCodec.serviceVerdictSize(Self.fullService(0))
        #expect(perService == 8 + 64 * 16)
        let budget = SyncChannel.config.maxPayload - SyncWire.endpointVerdictsFixed
        let services = (0..<(budget / perService)).map(Self.fullService)
        let m = SyncMessage.endpointVerdicts(EndpointVerdicts(generation: .max, part: 15, more: false,
                                                              services: services, hosts: []))
        let bytes = SyncCodec.encodePayload(m)
        #expect(bytes.count == SyncCodec.payloadSize(m))
        #expect(bytes.count <= SyncChannel.config.maxPayload)
        #expect(try SyncCodec.decodePayload(type: .endpointVerdicts, bytes) == m)
        #expect(SyncCodec.validate(m) == nil)
    }

    @Test func hostsOnlyAndEmptyPartsRoundTrip() throws {
        let hosts = (1...3637).map { HostVerdict(host: Self.ip($0), state: HostVerdictState(rawValue: UInt8($0 % 3 + 1)) ?? .red,
                                                 version: UInt64($0), origin: UInt32($0)) }
        for m in [SyncMessage.endpointVerdicts(EndpointVerdicts(generation: 7, services: [], hosts: hosts)),
                  .endpointVerdicts(EndpointVerdicts(generation: 1, part: 3, more: true, services: [], hosts: []))] {
            let bytes = SyncCodec.encodePayload(m)
            #expect(bytes.count <= SyncChannel.config.maxPayload)
            #expect(try SyncCodec.decodePayload(type: .endpointVerdicts, bytes) == m)
        }
    }

    @Test func everyTruncationOfTheFixtureIsRefused() {
        let bytes = SyncCodec.encodePayload(Fixtures.endpointVerdicts)
        for n in 0..<bytes.count {
            #expect(throws: SyncDecodeError.self) { try SyncCodec.decodePayload(type: .endpointVerdicts, Array(bytes.prefix(n))) }
        }
        #expect(throws: SyncDecodeError.self) { try SyncCodec.decodePayload(type: .endpointVerdicts, bytes + [0]) }
    }

    @Test func aRepeatedEndpointOrHostIsRefused() throws {
        guard case .endpointVerdicts(var v) = Fixtures.endpointVerdicts else { Issue.record("fixture"); return }
        var twice = v
        twice.services[0].down[1] = twice.services[0].down[0]
        let e = try #require(SyncCodec.validate(.endpointVerdicts(twice)))
        #expect(e.reason == .malformedPayload && e.detail.contains("not above"), "\(e)")
        v.hosts[1] = v.hosts[0]
        #expect(SyncCodec.validate(.endpointVerdicts(v))?.reason == .malformedPayload)
    }

    @Test func itTravelsOnlyOnTheConfigChannel() {
        #expect(SyncMessageType.endpointVerdicts.isConfig)
        #expect(!SyncMessageType.endpointVerdicts.isGossip)
        #expect(SyncMessageType.endpointVerdicts.wireName == "endpointVerdicts")
        #expect(SyncMessageType(rawValue: 17) == .endpointVerdicts)
    }
}
