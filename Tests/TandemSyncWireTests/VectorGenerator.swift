import Crypto
import Foundation
import TandemCore
import TandemTestSupport
import TandemSync
import TandemSyncWire
import TandemSealing

/// Produces every file of proto/vectors (and the seed files of Fuzz/corpus) from the fixtures.
/// `VectorTests` checks that the committed files are exactly what this produces, and separately
/// decodes the committed files without it. Regenerate with:
///
///     TANDEM_WRITE_VECTORS=1 swift test --filter TandemSyncWireTests.VectorTests/write
enum VectorGenerator {
    struct File {
        /// Relative to the repository root.
        var path: String
        var bytes: [UInt8]
    }

    struct Invalid {
        var name: String
        var bytes: [UInt8]
        var channel: SyncChannel
        var expect: SyncDropReason
        var openFirst: [String] = []
        var note: String
        /// For malformed payloads: the type and plaintext payload (also a fuzz seed).
        var payload: (SyncMessageType, [UInt8])? = nil
    }

    struct Valid {
        var name: String
        var channel: SyncChannel
        var message: SyncMessage
        var bytes: [UInt8]
    }

    /// The valid vectors: one sealer per channel, messages in fixture order, so sequences count
    /// from 1 on each channel.
    static func valid() -> [Valid] {
        var sealer = SyncSealer(key: Fixtures.key, sender: Fixtures.sender, epoch: Fixtures.epoch)
        return Fixtures.messages.map { v in
            Valid(name: v.name, channel: v.channel, message: v.message, bytes: sealer.seal(v.message, channel: v.channel))
        }
    }

    static func header(_ type: SyncMessageType, sender: UInt32 = Fixtures.sender, epoch: UInt64 = Fixtures.epoch,
                       sequence: UInt64 = 1, channel: SyncChannel = .datagram) -> SyncHeader {
        Fixtures.header(type, sender: sender, epoch: epoch, sequence: sequence, channel: channel)
    }

    static func invalid() -> [Invalid] {
        let all = valid()
        let hello = all.first { $0.name == "hello" }!.bytes
        let bulkBegin = all.first { $0.name == "bulk-begin" }!.bytes
        let probe = all.first { $0.name == "probe" }!.bytes
        let serviceDigest = all.first { $0.name == "service-digest" }!.bytes
        let kernelHello = all.first { $0.name == "kernel-hello" }!.bytes
        let kernelBatch = all.first { $0.name == "kernel-delta-batch" }!.bytes
        let deltaBatch = all.first { $0.name == "delta-batch" }!.bytes
        let helloPayload = SyncCodec.encodePayload(Fixtures.messages[0].message)

        func patched(_ bytes: [UInt8], _ edits: [(Int, UInt8)]) -> [UInt8] {
            var b = bytes
            for (i, v) in edits { b[i] = v }
            return b
        }
        func flipped(_ bytes: [UInt8], at i: Int, _ mask: UInt8) -> [UInt8] {
            var b = bytes
            b[i] ^= mask
            return b
        }
        /// Hello's header with another length, followed by `count` zero bytes.
        func withLength(_ length: UInt16, count: Int) -> [UInt8] {
            var h = header(.hello)
            h.length = length
            return SyncCodec.encodeHeader(h) + [UInt8](repeating: 0, count: count)
        }

        var list: [Invalid] = [
            Invalid(name: "truncated-header", bytes: Array(hello.prefix(20)), channel: .datagram, expect: .truncated,
                    note: "20 bytes: shorter than the 28-byte header"),
            Invalid(name: "truncated-body", bytes: Array(hello.dropLast(5)), channel: .datagram, expect: .truncated,
                    note: "the hello vector without its last 5 bytes: fewer than 28 + length"),
            Invalid(name: "oversized", bytes: withLength(1445, count: 1445), channel: .datagram, expect: .oversized,
                    note: "1473 bytes on the datagram channel (limit 1472), whatever they contain"),
            Invalid(name: "bad-magic", bytes: patched(hello, [(1, 0x54)]), channel: .datagram, expect: .badMagic,
                    note: "the hello vector with magic 0x5454"),
            Invalid(name: "bad-version", bytes: patched(hello, [(2, 2)]), channel: .datagram, expect: .badVersion,
                    note: "the hello vector with version 2"),
            Invalid(name: "unknown-type", bytes: patched(hello, [(3, 200)]), channel: .datagram, expect: .unknownType,
                    note: "the hello vector with type 200 (unassigned)"),
            Invalid(name: "unknown-type-zero", bytes: patched(hello, [(3, 0)]), channel: .datagram, expect: .unknownType,
                    note: "the hello vector with type 0"),
            Invalid(name: "bad-flags", bytes: patched(hello, [(4, 0x10)]), channel: .datagram, expect: .badFlags,
                    note: "the hello vector with the undefined flag bit 0x10"),
            Invalid(name: "bad-flags-kernel-type-without-flag", bytes: patched(kernelBatch, [(4, 0x00)]), channel: .datagram,
                    expect: .badFlags, note: "the kernel-delta-batch vector without the kernel flag: kernel entries travel only on the kernel channels"),
            Invalid(name: "bad-flags-bpf-entries-with-kernel-flag", bytes: patched(deltaBatch, [(4, 0x08)]), channel: .kernelDatagram,
                    expect: .badFlags, note: "the delta-batch vector with the kernel flag: BPF entries never travel on the kernel channels"),
            Invalid(name: "bad-flags-kernel-and-gossip", bytes: patched(kernelHello, [(4, 0x0a)]), channel: .gossip,
                    expect: .badFlags, note: "the kernel-hello vector with both the kernel and the gossip flag"),
            Invalid(name: "bad-flags-kernel-on-datagram", bytes: kernelHello, channel: .datagram, expect: .badFlags,
                    note: "the kernel-hello vector (sealed for the kernel datagram channel) received on the datagram channel"),
            Invalid(name: "bad-flags-config-type-without-flag", bytes: patched(serviceDigest, [(4, 0x00)]), channel: .datagram,
                    expect: .badFlags, note: "the service-digest vector without the config flag: service sharing travels only on the config channel"),
            Invalid(name: "bad-flags-replication-type-with-config-flag", bytes: patched(hello, [(4, 0x04)]), channel: .config,
                    expect: .badFlags, note: "the hello vector with the config flag"),
            Invalid(name: "bad-flags-config-and-stream", bytes: patched(serviceDigest, [(4, 0x05)]), channel: .config,
                    expect: .badFlags, note: "the service-digest vector with both the config and the stream flag"),
            Invalid(name: "bad-flags-config-on-stream", bytes: serviceDigest, channel: .stream, expect: .badFlags,
                    note: "the service-digest vector (sealed for the config channel) received on the stream channel"),
            Invalid(name: "bad-flags-stream-and-gossip", bytes: patched(probe, [(4, 0x03)]), channel: .gossip,
                    expect: .badFlags, note: "the probe vector with both the stream and the gossip flag"),
            Invalid(name: "bad-flags-gossip-type-without-flag", bytes: patched(probe, [(4, 0x00)]), channel: .datagram,
                    expect: .badFlags, note: "the probe vector without the gossip flag: membership types travel only on the gossip channel"),
            Invalid(name: "bad-flags-replication-type-with-gossip-flag", bytes: patched(hello, [(4, 0x02)]), channel: .gossip,
                    expect: .badFlags, note: "the hello vector with the gossip flag: replication types never travel on the gossip channel"),
            Invalid(name: "bad-flags-gossip-on-datagram", bytes: probe, channel: .datagram, expect: .badFlags,
                    note: "the probe vector (sealed for the gossip channel) received on the datagram channel"),
            Invalid(name: "bad-flags-reserved", bytes: patched(hello, [(5, 0x01)]), channel: .datagram, expect: .badFlags,
                    note: "the hello vector with reserved byte 1"),
            Invalid(name: "bad-flags-stream-on-datagram", bytes: bulkBegin, channel: .datagram, expect: .badFlags,
                    note: "the bulk-begin vector (sealed for the stream channel) received on the datagram channel"),
            Invalid(name: "bad-flags-datagram-on-stream", bytes: hello, channel: .stream, expect: .badFlags,
                    note: "the hello vector (sealed for the datagram channel) received on the stream channel"),
            Invalid(name: "bad-length-trailing", bytes: hello + [0, 0, 0], channel: .datagram, expect: .badLength,
                    note: "the hello vector with 3 bytes more than 28 + length"),
            Invalid(name: "bad-length-short", bytes: withLength(10, count: 10), channel: .datagram, expect: .badLength,
                    note: "length 10: shorter than the 16-byte tag"),
            Invalid(name: "auth-failed-tag", bytes: flipped(hello, at: hello.count - 1, 0x01), channel: .datagram,
                    expect: .authFailed, note: "the hello vector with the tag's last bit flipped"),
            Invalid(name: "auth-failed-ciphertext", bytes: flipped(hello, at: 28, 0x80), channel: .datagram,
                    expect: .authFailed, note: "the hello vector with the first ciphertext byte's top bit flipped"),
            Invalid(name: "auth-failed-header", bytes: patched(hello, [(27, 2)]), channel: .datagram,
                    expect: .authFailed, note: "the hello vector with header sequence 2: the header is authenticated (and the nonce differs)"),
            Invalid(name: "auth-failed-wrong-key", bytes: Fixtures.sealRaw(.hello, helloPayload, key: Fixtures.otherKey),
                    channel: .datagram, expect: .authFailed,
                    note: "the hello message sealed with key 0x20..0x3f instead of 0x00..0x1f"),
            Invalid(name: "replayed", bytes: hello, channel: .datagram, expect: .replayed, openFirst: ["hello"],
                    note: "the hello vector again, after the hello vector was accepted"),
            Invalid(name: "stale-epoch", bytes: Fixtures.sealRaw(.hello, helloPayload, epoch: Fixtures.epoch - 1, sequence: 7),
                    channel: .datagram, expect: .staleEpoch, openFirst: ["hello"],
                    note: "sender 1 with epoch 1699999999999999, after the hello vector (epoch 1700000000000000) was accepted"),
            Invalid(name: "unknown-sender", bytes: Fixtures.sealRaw(.hello, helloPayload, sender: 9), channel: .datagram,
                    expect: .unknownSender, note: "sender 9, not in the members {1, 2, 3}"),
            Invalid(name: "self-sent", bytes: Fixtures.sealRaw(.hello, helloPayload, sender: 2), channel: .datagram,
                    expect: .selfSent, note: "sender 2, the receiving node itself"),
        ]

        // Authentic messages whose payload does not decode.
        func malformed(_ name: String, _ type: SyncMessageType, _ payload: [UInt8], _ note: String) -> Invalid {
            let channel: SyncChannel = type.isGossip ? .gossip : type.isConfig ? .config
                : type == .kernelBulkChunk ? .kernelStream : type.carriesKernelEntries ? .kernelDatagram : .datagram
            return Invalid(name: "malformed-" + name, bytes: Fixtures.sealRaw(type, payload, channel: channel), channel: channel,
                           expect: .malformedPayload, note: note, payload: (type, payload))
        }
        let probePayload = SyncCodec.encodePayload(Fixtures.probe)
        let recordsPayload = SyncCodec.encodePayload(Fixtures.serviceRecords)
        // Offsets in the endpoint-verdicts payload: fixed part 0-13; service 0 at 14 (its
        // endpoints at 22 and 38, 16 bytes each); service 1 at 54; hosts at 62 and 80.
        let verdicts = SyncCodec.encodePayload(Fixtures.endpointVerdicts)
        let batch = SyncCodec.encodePayload(.deltaBatch(DeltaBatch(firstSequence: 42, entries: [Fixtures.tcpUpsert, Fixtures.udpDelete])))
        let ack = SyncCodec.encodePayload(.ack(Ack(streamEpoch: Fixtures.epoch, cumulative: 41)))
        // Kernel entries: fixed part 0-9, entry i at 10 + 60 i (masquerade, port forward, ping,
        // delete). In an entry: present at 2, window scales at 6-7, l4Kind at 10, timeout at
        // 20-23, origin at 56-59.
        let kernel = SyncCodec.encodePayload(.kernelDeltaBatch(KernelDeltaBatch(
            firstSequence: 7, entries: [Fixtures.kernelMasquerade, Fixtures.kernelPortForward, Fixtures.kernelPing,
                                        Fixtures.kernelDelete])))
        list += [
            malformed("count", .deltaBatch, patched(batch, [(9, 3)]),
                      "delta batch with count 3 but 2 entries (104 bytes) following"),
            malformed("count-over-limit", .deltaBatch, patched(batch, [(8, 0), (9, 28)]),
                      "delta batch with count 28 (limit 27; checked before the bytes)"),
            malformed("first-sequence-zero", .deltaBatch, patched(batch, [(7, 0), (6, 0), (5, 0), (4, 0)]),
                      "delta batch with firstSequence 0"),
            malformed("trailing", .ack, ack + [0], "ack with one byte too many"),
            malformed("short", .ack, Array(ack.dropLast()), "ack with one byte too few"),
            malformed("empty", .hello, [], "hello with an empty payload (length 16: the tag only)"),
            malformed("bool", .hello, patched(helloPayload, [(2, 2)]), "hello with inSync 2"),
            malformed("entry-from-peer", .deltaBatch, patched(batch, [(10 + 4, 0x0c)]),
                      "delta batch whose first entry carries the local fromPeer flag (0x08)"),
            malformed("entry-proto", .deltaBatch, patched(batch, [(10 + 1, 47)]),
                      "delta batch whose first entry has protocol 47"),
            malformed("entry-op", .deltaBatch, patched(batch, [(10, 3)]), "delta batch whose first entry has op 3"),
            malformed("entry-state", .deltaBatch, patched(batch, [(10 + 3, 10)]),
                      "delta batch whose first entry has state 10"),
            malformed("entry-reserved", .deltaBatch, patched(batch, [(10 + 7, 1)]),
                      "delta batch whose first entry has reserved 1"),
            malformed("kernel-count-over-limit", .kernelDeltaBatch, patched(kernel, [(8, 0), (9, 24)]),
                      "kernel delta batch with count 24 (limit 23; checked before the bytes)"),
            malformed("kernel-entry-present-bits", .kernelDeltaBatch, patched(kernel, [(10 + 2, 0x7f)]),
                      "kernel delta batch whose first entry has the undefined present bit 0x40"),
            malformed("kernel-entry-tcp-on-udp", .kernelDeltaBatch, patched(kernel, [(70 + 2, 0x03)]),
                      "kernel delta batch whose second entry (UDP) says it carries TCP state"),
            malformed("kernel-entry-absent-timeout", .kernelDeltaBatch, patched(kernel, [(70 + 2, 0x00)]),
                      "kernel delta batch whose second entry has timeout 29 but no timeout present bit"),
            malformed("kernel-entry-window-scale", .kernelDeltaBatch, patched(kernel, [(10 + 6, 15)]),
                      "kernel delta batch whose first entry has window scale 15 (at most 14)"),
            malformed("kernel-entry-l4-kind", .kernelDeltaBatch, patched(kernel, [(10 + 10, 2)]),
                      "kernel delta batch whose first entry (TCP) has L4 kind icmp"),
            malformed("kernel-entry-reserved", .kernelDeltaBatch, patched(kernel, [(10 + 11, 1)]),
                      "kernel delta batch whose first entry has reserved 1"),
            malformed("kernel-entry-origin-zero", .kernelDeltaBatch, patched(kernel, (56..<60).map { (10 + $0, UInt8(0)) }),
                      "kernel delta batch whose first entry is from origin node 0"),
            malformed("nack-order", .nack,
                      SyncCodec.encodePayload(.nack(Nack(streamEpoch: Fixtures.epoch, cumulative: 41, missing: [50...50, 43...45]))),
                      "nack whose ranges are not ascending"),
            malformed("nack-below-cumulative", .nack,
                      SyncCodec.encodePayload(.nack(Nack(streamEpoch: Fixtures.epoch, cumulative: 41, missing: [41...45]))),
                      "nack whose first range starts at the cumulative ack"),
            malformed("digest-count", .digest,
                      SyncCodec.encodePayload(.digest(Digest(level: 0, bucket: 0, entryCount: 1, hashes: Array(Fixtures.digestHashes(0).prefix(127))))),
                      "digest with 127 hashes (must be 128)"),
            malformed("digest-level", .digest,
                      SyncCodec.encodePayload(.digest(Digest(level: 2, bucket: 0, entryCount: 1, hashes: Fixtures.digestHashes(0)))),
                      "digest of level 2"),
            malformed("bulk-request-order", .bulkRequest,
                      SyncCodec.encodePayload(.bulkRequest(BulkRequest(requestID: 1, leaves: [5, 5]))),
                      "bulk request listing leaf 5 twice"),
            malformed("probe-target-zero", .probe, patched(probePayload, [(4, 0), (5, 0), (6, 0), (7, 0)]),
                      "probe with target 0 (node ids are non-zero)"),
            malformed("gossip-count", .probe, patched(probePayload, [(12, 3)]),
                      "probe whose gossip says 3 updates but carries 2"),
            malformed("gossip-count-over-limit", .probe, patched(probePayload, [(12, 33)]),
                      "probe whose gossip says 33 updates (limit 32; checked before the bytes)"),
            malformed("gossip-status", .probe, patched(probePayload, [(14 + 8, 6)]),
                      "probe whose first member update has status 6"),
            malformed("gossip-update-node-zero", .probe, patched(probePayload, [(14, 0), (15, 0), (16, 0), (17, 0)]),
                      "probe whose first member update is about node 0"),
            malformed("advert-role", .probeAck, patched(SyncCodec.encodePayload(Fixtures.probeAck), [(14 + 9 + 12, 4)]),
                      "probe ack whose advert has role 4"),
            malformed("advert-flags", .probeAck, patched(SyncCodec.encodePayload(Fixtures.probeAck), [(14 + 9 + 14, 0x08)]),
                      "probe ack whose advert has the undefined flag bit 0x08"),
            malformed("service-digest-empty", .serviceDigest, [0, 0, 0, 0] + [UInt8](repeating: 1, count: 8) + [UInt8](repeating: 0, count: 8),
                      "service digest of 0 services with a non-zero digest"),
            malformed("service-record-proto", .serviceRecords, patched(recordsPayload, [(2 + 6, 1)]),
                      "service record with protocol 1 (services are TCP or UDP)"),
            malformed("service-record-port-zero", .serviceRecords, patched(recordsPayload, [(2 + 4, 0), (2 + 5, 0)]),
                      "service record with port 0"),
            malformed("service-record-flags", .serviceRecords, patched(recordsPayload, [(2 + 7, 0x02)]),
                      "service record with the undefined flag bit 0x02"),
            malformed("service-record-version-zero", .serviceRecords, patched(recordsPayload, (8..<16).map { (2 + $0, UInt8(0)) }),
                      "service record with version 0"),
            malformed("service-record-origin-zero", .serviceRecords, patched(recordsPayload, (16..<20).map { (2 + $0, UInt8(0)) }),
                      "service record from origin node 0"),
            malformed("service-record-tombstone-spec", .serviceRecords, patched(recordsPayload, [(2 + 7, 0x01)]),
                      "a tombstone (flag 0x01) that carries a spec"),
            malformed("service-record-empty-spec", .serviceRecords, [0, 1] + Array(recordsPayload[2..<(2 + 20)]) + [0, 0],
                      "a live record (no tombstone flag) with a 0-byte spec"),
            malformed("service-record-spec-length", .serviceRecords, patched(recordsPayload, [(2 + 20, 0x7f)]),
                      "service record whose spec length runs past the payload"),
            malformed("service-records-count", .serviceRecords, patched(recordsPayload, [(1, 3)]),
                      "service records whose count says 3 but carries 2"),
            malformed("service-records-count-over-bytes", .serviceRecords, [0xff, 0xff] + Array(recordsPayload.dropFirst(2)),
                      "service records whose count 65535 cannot fit in the bytes (checked before decoding)"),
            malformed("advert-reserved", .probeAck, patched(SyncCodec.encodePayload(Fixtures.probeAck), [(14 + 9 + 15, 1)]),
                      "probe ack whose advert has reserved 1"),
            malformed("verdicts-generation-zero", .endpointVerdicts, patched(verdicts, (0..<8).map { ($0, UInt8(0)) }),
                      "endpoint verdicts of generation 0"),
            malformed("verdicts-flags", .endpointVerdicts, patched(verdicts, [(8, 0x02)]),
                      "endpoint verdicts with the undefined flag bit 0x02"),
            malformed("verdicts-part-over-limit", .endpointVerdicts, patched(verdicts, [(9, 16)]),
                      "endpoint verdicts part 16 (a set has at most 16 parts, 0-15)"),
            malformed("verdicts-last-part-more", .endpointVerdicts, patched(verdicts, [(8, 0x01), (9, 15)]),
                      "endpoint verdicts part 15 that says more parts follow"),
            malformed("verdicts-counts-over-bytes", .endpointVerdicts, patched(verdicts, [(10, 0xff), (11, 0xff)]),
                      "endpoint verdicts whose serviceCount 65535 cannot fit in the bytes (checked before decoding)"),
            malformed("verdicts-service-order", .endpointVerdicts, patched(verdicts, [(57, 9)]),
                      "endpoint verdicts whose second service (198.51.100.9) is not above the first (198.51.100.10)"),
            malformed("verdicts-service-proto", .endpointVerdicts, patched(verdicts, [(20, 1)]),
                      "endpoint verdicts for a service of protocol 1"),
            malformed("verdicts-endpoint-count", .endpointVerdicts, patched(verdicts, [(21, 65)]),
                      "endpoint verdicts with 65 endpoints down in one service (limit 64)"),
            malformed("verdicts-endpoint-order", .endpointVerdicts, patched(verdicts, [(41, 10)]),
                      "endpoint verdicts whose second endpoint (10.0.0.10:8080) is not above the first (10.0.0.11:8080)"),
            malformed("verdicts-endpoint-reasons", .endpointVerdicts, patched(verdicts, [(28, 0)]),
                      "endpoint verdicts with an endpoint down for no reason (reasons 0)"),
            malformed("verdicts-endpoint-reserved", .endpointVerdicts, patched(verdicts, [(29, 1)]),
                      "endpoint verdicts with an endpoint's reserved byte 1"),
            malformed("verdicts-endpoint-since-zero", .endpointVerdicts, patched(verdicts, (30..<38).map { ($0, UInt8(0)) }),
                      "endpoint verdicts with an endpoint down since 0"),
            malformed("verdicts-host-state", .endpointVerdicts, patched(verdicts, [(66, 4)]),
                      "endpoint verdicts with host state 4"),
            malformed("verdicts-host-order", .endpointVerdicts, patched(verdicts, [(83, 11)]),
                      "endpoint verdicts whose second host (10.0.0.11) is not above the first (10.0.0.12)"),
            malformed("verdicts-host-origin-zero", .endpointVerdicts, patched(verdicts, (76..<80).map { ($0, UInt8(0)) }),
                      "endpoint verdicts with a host state from origin node 0"),
        ]
        return list
    }

    static func subkeyBytes(sender: UInt32, epoch: UInt64) -> [UInt8] {
        SyncSealing.subkey(Fixtures.key, sender: sender, epoch: epoch).withUnsafeBytes { Array($0) }
    }

    static let hashKeys: [FlowTuple] = [
        Fixtures.tcpUpsert.record.key, Fixtures.udpDelete.record.key, Fixtures.tcpFin.record.key, Fixtures.icmp.record.key,
        Fixtures.tuple("0.0.0.0", 0, "0.0.0.0", 0, 0),
    ]
    static let hashEntries: [SyncEntry] = [Fixtures.tcpUpsert, Fixtures.udpDelete, Fixtures.tcpFin, Fixtures.icmp]
    static let kernelHashEntries: [KernelSyncEntry] = [Fixtures.kernelMasquerade, Fixtures.kernelPortForward,
                                                       Fixtures.kernelPing, Fixtures.kernelDelete]

    static func files() throws -> [File] {
        var files: [File] = []
        func text(_ path: String, _ s: String) { files.append(File(path: path, bytes: Array(s.utf8))) }

        for v in valid() {
            let h = try SyncCodec.decodeHeader(v.bytes)
            text("proto/vectors/valid/\(v.name).hex", Hex.wrapped(v.bytes))
            text("proto/vectors/valid/\(v.name).json", try Describe.json([
                "name": v.name, "channel": v.channel.description, "header": Describe.header(h),
                "message": Describe.message(v.message), "payload": Hex.encode(SyncCodec.encodePayload(v.message)),
            ]))
            files.append(File(path: "Fuzz/corpus/seed-\(v.name)", bytes: [v.message.type.rawValue] + SyncCodec.encodePayload(v.message)))
        }
        for v in valid() where ["hello", "bulk-chunk", "kernel-delta-batch"].contains(v.name) {
            files.append(File(path: "Fuzz/corpus/seed-frame-\(v.name)", bytes: [v.message.type.rawValue] + v.bytes))
        }
        for v in invalid() {
            text("proto/vectors/invalid/\(v.name).hex", Hex.wrapped(v.bytes))
            var d: [String: Any] = ["name": v.name, "channel": v.channel.description, "expect": v.expect.rawValue,
                                    "note": v.note]
            if !v.openFirst.isEmpty { d["openFirst"] = v.openFirst }
            if let (type, payload) = v.payload {
                d["type"] = Int(type.rawValue)
                d["payload"] = Hex.encode(payload)
                files.append(File(path: "Fuzz/corpus/seed-\(v.name)", bytes: [type.rawValue] + payload))
            }
            text("proto/vectors/invalid/\(v.name).json", try Describe.json(d))
        }

        text("proto/vectors/hashes.json", try Describe.json([
            "mix": [UInt64(0), 1, SyncHashing.golden, .max].map { ["in": Describe.hash($0), "out": Describe.hash(SyncHashing.mix($0))] },
            "flows": hashKeys.map { k -> [String: Any] in
                let h = SyncHashing.flowHash(k)
                var key = Describe.tuple(k)
                key["proto"] = Int(k.proto)
                return ["key": key, "flowHash": Describe.hash(h), "bucket": SyncHashing.bucket(ofFlowHash: h),
                        "subBucket": SyncHashing.subBucket(ofFlowHash: h), "leaf": SyncHashing.leaf(ofFlowHash: h)]
            },
            "entries": hashEntries.map { e -> [String: Any] in
                var key = Describe.tuple(e.record.key)
                key["proto"] = Int(e.record.key.proto)
                return ["op": Int(e.operation.rawValue), "key": key, "version": Describe.u64(e.version),
                        "entryHash": Describe.hash(SyncHashing.entryHash(e))]
            },
            "kernelEntries": kernelHashEntries.map { e -> [String: Any] in
                var key = Describe.kernelTuple(e.connection.original)
                key["proto"] = Int(e.connection.proto)
                key["zone"] = Int(e.connection.zone)
                let h = SyncHashing.kernelKeyHash(e.connection.key)
                return ["op": Int(e.operation.rawValue), "key": key, "version": Describe.u64(e.version),
                        "kernelKeyHash": Describe.hash(h), "leaf": SyncHashing.leaf(ofFlowHash: h),
                        "entryHash": Describe.hash(SyncHashing.entryHash(e))]
            },
            "services": [Fixtures.liveService.key, Fixtures.deletedService.key].map { k -> [String: Any] in
                let spec = Fixtures.liveService.spec ?? []
                return ["vip": k.vip.description, "port": Int(k.port), "proto": Int(k.proto.rawValue),
                        "spec": String(decoding: spec, as: UTF8.self), "fnv1a64": Describe.hash(SyncHashing.fnv1a64(spec)),
                        "serviceHash": Describe.hash(SyncHashing.serviceHash(key: k, spec: spec))]
            },
        ]))

        var info: [UInt8] = []
        withUnsafeBytes(of: Fixtures.sender.bigEndian) { info += $0 }
        withUnsafeBytes(of: Fixtures.epoch.bigEndian) { info += $0 }
        text("proto/vectors/sealing.json", try Describe.json([
            "clusterKey": Fixtures.key.hexString,
            "salt": "tandem-sync-v1",
            "sender": Int(Fixtures.sender),
            "epoch": Describe.u64(Fixtures.epoch),
            "info": Hex.encode(info),
            "subkey": Hex.encode(subkeyBytes(sender: Fixtures.sender, epoch: Fixtures.epoch)),
            "nonces": [(SyncChannel.datagram, UInt64(1)), (.stream, 1), (.datagram, 0x0102_0304_0506_0708),
                       (.kernelDatagram, 1), (.kernelStream, 1)].map { c, s in
                ["channel": Int(c.rawValue), "sequence": Describe.u64(s),
                 "nonce": Hex.encode(SyncSealing.nonceBytes(channel: c, sequence: s))] as [String: Any]
            },
        ]))
        return files
    }
}
