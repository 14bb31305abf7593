import Testing
@testable import TandemCore

@Suite struct TCPStateMachineTests {
    typealias S = ConnectionState

    func run(_ steps: [(FlowDirection, TCPFlags)]) -> [S] {
        var state = TCPStateMachine.initial(tcp: steps[0].1)
        var flags: ConnectionFlags = []
        var out = [state]
        for (dir, f) in steps.dropFirst() {
            (state, flags) = TCPStateMachine.next(state: state, flags: flags, direction: dir, tcp: f)
            out.append(state)
        }
        return out
    }

    @Test func handshakeAndGracefulClose() {
        let states = run([(.original, .syn), (.reply, [.syn, .ack]), (.original, .ack), (.original, [.psh, .ack]),
                          (.original, [.fin, .ack]), (.reply, .ack), (.reply, [.fin, .ack]), (.original, .ack)])
        #expect(states == [.synSent, .synReceived, .established, .established, .finWait, .finWait, .timeWait, .timeWait])
    }

    @Test func resetClosesFromAnyState() {
        #expect(run([(.original, .syn), (.reply, [.rst, .ack])]) == [.synSent, .closed])
        #expect(run([(.original, .ack), (.original, .rst)]) == [.established, .closed])
    }

    @Test func midFlowPacketIsPickedUpAsEstablished() {
        #expect(TCPStateMachine.initial(tcp: .ack) == .established)
        #expect(TCPStateMachine.initial(tcp: [.syn, .ack]) == .established)
        #expect(TCPStateMachine.initial(tcp: .syn) == .synSent)
    }

    @Test func synAckFromClientDoesNotAdvance() {
        #expect(run([(.original, .syn), (.original, [.syn, .ack])]) == [.synSent, .synSent])
    }

    @Test func timeoutsPerState() {
        let t = Timeouts()
        #expect(t.seconds(for: .established) > t.seconds(for: .synSent))
        #expect(t.seconds(for: .timeWait) <= 10)
        #expect(t.nanosecondsByState.count == ConnectionState.allCases.count)
    }
}

@Suite struct ServiceTableTests {
    func svc(_ port: UInt16 = 80, eps: [Endpoint] = [Endpoint(ip: IPv4Address(10, 0, 10, 21), port: 80)]) -> Service {
        Service(key: ServiceKey(vip: IPv4Address(10, 0, 10, 143), port: port, proto: .tcp), mode: .fullnat, endpoints: eps)
    }

    @Test func addRemoveReusesSlots() throws {
        var t = ServiceTable(capacity: 2)
        let a = try t.add(svc(1))
        let b = try t.add(svc(2))
        #expect(a != b)
        #expect(throws: ServiceError.self) { try t.add(svc(3)) }
        try t.remove(svc(1).key)
        #expect(try t.add(svc(3)) == a)
    }

    @Test func duplicateRefusedAndTableUnchanged() throws {
        var t = ServiceTable()
        try t.add(svc())
        let before = t.services
        #expect(throws: ServiceError("service 10.0.10.143:80/tcp already exists")) { try t.add(svc()) }
        #expect(t.services == before)
    }

    @Test(arguments: [
        ("port 0", Service(key: ServiceKey(vip: IPv4Address(10, 0, 10, 143), port: 0, proto: .tcp),
                           endpoints: [Endpoint(ip: IPv4Address(10, 0, 10, 21), port: 80)])),
        ("no endpoints", Service(key: ServiceKey(vip: IPv4Address(10, 0, 10, 143), port: 80, proto: .tcp), endpoints: [])),
        ("endpoint port 0", Service(key: ServiceKey(vip: IPv4Address(10, 0, 10, 143), port: 80, proto: .tcp),
                                    endpoints: [Endpoint(ip: IPv4Address(10, 0, 10, 21), port: 0)])),
        ("weight 0", Service(key: ServiceKey(vip: IPv4Address(10, 0, 10, 143), port: 80, proto: .tcp),
                             endpoints: [Endpoint(ip: IPv4Address(10, 0, 10, 21), port: 80, weight: 0)])),
        ("vip 0", Service(key: ServiceKey(vip: IPv4Address(0), port: 80, proto: .tcp),
                          endpoints: [Endpoint(ip: IPv4Address(10, 0, 10, 21), port: 80)])),
        ("duplicate endpoint", Service(key: ServiceKey(vip: IPv4Address(10, 0, 10, 143), port: 80, proto: .tcp),
                                       endpoints: [Endpoint(ip: IPv4Address(10, 0, 10, 21), port: 80),
                                                   Endpoint(ip: IPv4Address(10, 0, 10, 21), port: 80)])),
    ])
    func invalidServicesRefused(_ label: String, _ s: Service) {
        var t = ServiceTable()
        #expect(throws: ServiceError.self, "\(label)") { try t.add(s) }
        #expect(t.services.isEmpty)
    }

    @Test func tooManyEndpoints() {
        let eps = (0..<65).map { Endpoint(ip: IPv4Address(10, 0, 11, UInt8($0)), port: 80) }
        #expect(throws: ServiceError.self) { try svc(eps: eps).validate() }
    }

    @Test func namesParse() {
        #expect(NATMode(name: "FULLNAT") == .fullnat)
        #expect(NATMode(name: "dsr") == nil)
        #expect(Selection(name: "hash") == .maglev)
        #expect(Selection(loxiNumber: 3) == .persist)
        #expect(Selection(loxiNumber: 9) == nil)
        #expect(L4Protocol(name: "sctp") == nil)
    }
}

@Suite struct ConnectionJoinTests {
    func entry(_ dir: FlowDirection, key: FlowTuple, peer: FlowTuple, idle: Double, state: ConnectionState = .established) -> ConnectionEntry {
        ConnectionEntry(key: key, translated: peer.reversed, peerKey: peer, direction: dir, state: state, flags: [],
                        natMode: .fullnat, serviceSlot: 0, endpointIndex: 0, version: 1, packets: 3, bytes: 100,
                        ageSeconds: 10, idleSeconds: idle)
    }

    @Test func joinsDirectionsAndSumsCounters() {
        let k = FlowTuple(source: IPv4Address(10, 0, 20, 10), destination: IPv4Address(10, 0, 10, 143), sourcePort: 1234, destinationPort: 80, proto: 6)
        let r = FlowTuple(source: IPv4Address(10, 0, 10, 21), destination: IPv4Address(10, 0, 10, 143), sourcePort: 80, destinationPort: 1234, proto: 6)
        let conns = Connection.join([entry(.original, key: k, peer: r, idle: 5), entry(.reply, key: r, peer: k, idle: 1)])
        #expect(conns.count == 1)
        #expect(conns[0].packets == 6)
        #expect(conns[0].idleSeconds == 1)
    }
}
