import Foundation
import TandemCore
import TandemStatus

/// Renders the CLI's tables in loxicmd's boxed style.
public enum TableRenderer {
    public static func render(headers: [String], rows: [[String]]) -> String {
        var widths = headers.map(\.count)
        for r in rows {
            for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) }
        }
        let sep = "|" + widths.map { String(repeating: "-", count: $0 + 2) }.joined(separator: "|") + "|"
        func line(_ cells: [String]) -> String {
            "|" + cells.enumerated().map { i, c in " " + c + String(repeating: " ", count: widths[i] - c.count) + " " }
                .joined(separator: "|") + "|"
        }
        var out = [sep, line(headers), sep]
        out += rows.map { line($0 + Array(repeating: "", count: max(0, headers.count - $0.count))) }
        out.append(sep)
        return out.joined(separator: "\n")
    }

    public static func loadBalancers(_ list: [LoadBalancerEntry], wide: Bool) -> String {
        var headers = ["EXT IP", "PORT", "PROTO", "NAME", "MARK", "SEL", "MODE", "# OF ENDPOINTS", "MONITOR"]
        if wide { headers += ["ENDPOINT", "EPORT", "WEIGHT", "STATE", "COUNTERS (pkts:bytes:active)"] }
        var rows: [[String]] = []
        for e in list {
            let a = e.serviceArguments
            let sel = selName(a.sel)
            let mode = modeName(a.mode)
            let base = [a.externalIP, "\(a.port)", a.protocol_, a.name ?? "", "\(a.block ?? 0)", sel, mode, "\(e.endpoints.count)",
                        (a.monitor ?? false) ? "On" : "Off"]
            if !wide {
                rows.append(base)
                continue
            }
            for (i, ep) in e.endpoints.enumerated() {
                let lead = i == 0 ? base : Array(repeating: "", count: base.count)
                rows.append(lead + [ep.endpointIP, "\(ep.targetPort)", "\(ep.weight ?? 1)", ep.state ?? "-", ep.counter ?? "-"])
            }
        }
        return render(headers: headers, rows: rows)
    }

    /// `tandem get ep`: loxicmd's endpoint table.
    public static func endpointHosts(_ list: [EndpointHostEntry]) -> String {
        let headers = ["HOST", "NAME", "PTYPE", "PORT", "DURATION", "RETRIES", "MINDELAY", "AVGDELAY", "MAXDELAY", "STATE",
                       "LAST PROBE", "PROBED", "IN STATE", "IN FORCE", "FROM"]
        let rows = list.map { e in
            [e.hostName, e.name, e.probeReq.isEmpty ? e.probeType : "\(e.probeType):\(e.probeReq)", "\(e.probePort)",
             "\(e.probeDuration)", "\(e.inactiveReTries)", e.minDelay, e.avgDelay, e.maxDelay, e.currState,
             e.lastProbe ?? "-", e.lastProbeSecondsAgo.map { String(format: "%.1f s ago", $0) } ?? "-",
             e.stateSeconds.map { String(format: "%.1f s", $0) } ?? "-", e.verdict ?? "-", e.verdictFrom ?? "-"]
        }
        return render(headers: headers, rows: rows)
    }

    public static func conntrack(_ list: [ConntrackEntry]) -> String {
        let headers = ["SERVICE", "DEST IP", "SRC IP", "DPORT", "SPORT", "PROTO", "STATE", "ACT", "PACKETS", "BYTES"]
        let rows = list.map { c in
            [c.serviceName, c.destinationIP, c.sourceIP, "\(c.destinationPort)", "\(c.sourcePort)", c.protocol_,
             c.conntrackState + (c.learnedFromPeer ? " (peer)" : ""), c.conntrackAct, "\(c.packets)", "\(c.bytes)"]
        }
        return render(headers: headers, rows: rows)
    }

    /// `tandem get sync`: this node's replication state, its peers, then the counters.
    public static func sync(_ s: ReplicationStatus, wide: Bool) -> String {
        var out = "NODE \(IPv4Address(s.nodeID))  IN SYNC \(s.inSync ? "yes" : "no")  ENTRIES \(s.liveEntries)"
            + "  LAG p50/p99 \(s.lagP50Micros)/\(s.lagP99Micros) us\n\n"
        out += render(headers: ["PEER", "ADDRESS", "IN SYNC", "LAST HEARD", "STREAM", "GAP"], rows: s.peers.map { p in
            [IPv4Address(p.id).description, p.address, p.inSync ? "yes" : "no",
             p.lastHeardMillisecondsAgo.map { "\($0) ms ago" } ?? "never",
             p.streamCumulative.map { "\($0)" } ?? "-", p.streamHasGap ? "yes" : "no"]
        })
        let c = s.counters
        var rows: [[String]] = [
            ["sent", "\(c.entriesSent)"], ["received", "\(c.entriesReceived)"], ["applied", "\(c.entriesApplied)"],
            ["retransmitted", "\(c.retransmittedEntries)"], ["nacks sent", "\(c.nacksSent)"],
            ["bulk transfers", "\(c.bulkTransfersCompleted)"], ["anti-entropy repaired", "\(c.antiEntropyRepaired)"],
            ["install failures", "\(s.installFailures)"],
        ]
        for (reason, n) in s.dropped.sorted(by: { $0.key < $1.key }) { rows.append(["dropped: \(reason)", "\(n)"]) }
        if wide {
            rows += [["duplicates", "\(c.duplicateEntries)"], ["stale", "\(c.staleEntries)"],
                     ["coalesced", "\(c.deltasCoalesced)"], ["refreshes", "\(c.refreshesSent)"],
                     ["anti-entropy rounds", "\(c.antiEntropyRounds)"], ["anti-entropy pulls", "\(c.antiEntropyPulls)"],
                     ["datagrams sent", "\(s.datagramsSent)"], ["datagrams received", "\(s.datagramsReceived)"],
                     ["bytes sent", "\(s.bytesSent)"], ["next sequence", "\(s.nextSequence)"],
                     ["retransmit window", "\(s.retransmitWindow)"]]
        }
        return out + "\n\n" + render(headers: ["COUNTER", "VALUE"], rows: rows)
    }

    /// `tandem get cluster`: members with their roles, then each HA instance.
    public static func cluster(_ s: HAStatus, wide: Bool) -> String {
        var out = "NODE \(s.address)  PROVIDER \(s.provider)  IN SYNC \(s.inSync ? "yes" : "no")  INCARNATION \(s.incarnation)\n\n"
        let names = s.instances.map(\.name)
        out += render(headers: ["MEMBER", "STATE", "INCARNATION", "LAST HEARD", "IN SYNC"] + names.map { "ROLE \($0)" } + ["TERM"],
                      rows: s.members.map { m in
            [m.address, m.state, "\(m.incarnation)", m.lastHeardMs.map { "\($0) ms ago" } ?? (m.state == "self" ? "-" : "never"),
             m.inSync.map { $0 ? "yes" : "no" } ?? "-"]
                + names.map { m.roles[$0] ?? "-" }
                + [names.compactMap { m.terms[$0] }.map(String.init).joined(separator: ",")]
        })
        out += "\n\n" + render(headers: ["INSTANCE", "ROLE", "TERM", "MASTER", "PRIORITY", "VIPS", "TAKEOVERS", "LAST TAKEOVER"],
                               rows: s.instances.map { i in
            [i.name + (i.external ? " (external)" : ""), i.role, "\(i.term)", i.master.map { IPv4Address($0).description } ?? "-",
             "\(i.priority)", i.vips.joined(separator: ","), "\(i.takeovers)" + (i.takeoverFailures > 0 ? " (\(i.takeoverFailures) failed)" : ""),
             i.lastTakeoverMs.map { String(format: "%.1f ms", $0) } ?? "-"]
        })
        if wide {
            for i in s.instances where !i.transitions.isEmpty {
                out += "\n\n" + render(headers: ["\(i.name): FROM", "TO", "TERM", "REASON", "AT (unix ms)"],
                                       rows: i.transitions.map { [$0.from, $0.to, "\($0.term)", $0.reason, "\($0.atUnixMs)"] })
            }
            var rows = s.counters.sorted { $0.key < $1.key }.map { [$0.key, "\($0.value)"] }
            rows += s.drops.sorted { $0.key < $1.key }.map { ["dropped: \($0.key)", "\($0.value)"] }
            out += "\n\n" + render(headers: ["COUNTER", "VALUE"], rows: rows)
        }
        return out
    }

    /// Service sharing: whether every node holds the same services, and which differ.
    public static func serviceSync(_ s: ServiceSyncStatus, wide: Bool) -> String {
        let verdict = s.peers.isEmpty ? "no peers" : s.allAgree ? "all nodes agree"
            : "differ: " + s.peers.filter { $0.agrees != true }.map(\.address).joined(separator: ", ")
        var out = "SERVICES \(s.services)  DIGEST \(s.digest)  TOMBSTONES \(s.tombstones)  (\(verdict))\n\n"
        out += render(headers: ["PEER", "SERVICES", "DIGEST", "AGREES", "LAST EXCHANGE", "ERROR"], rows: s.peers.map { p in
            [p.address, p.services.map(String.init) ?? "-", p.digest ?? "-",
             p.agrees.map { $0 ? "yes" : "NO" } ?? "unknown",
             p.lastExchangeSecondsAgo.map { String(format: "%.0f s ago", $0) } ?? "never", p.lastError ?? "-"]
        })
        if wide {
            var rows = [["accepted", "\(s.counters.accepted)"], ["stale", "\(s.counters.stale)"],
                        ["applyFailed", "\(s.counters.applyFailed)"], ["tombstonesExpired", "\(s.counters.tombstonesExpired)"],
                        ["refused", "\(s.refused)"]]
            rows += s.dropped.sorted { $0.key < $1.key }.map { ["dropped: \($0.key)", "\($0.value)"] }
            if let v = s.verdicts {
                rows += [["verdict sets received", "\(v.counters.received)"], ["verdict sets outdated", "\(v.counters.outdated)"],
                         ["peer verdicts applied", "\(v.applied)"], ["host states merged", "\(v.counters.hostStatesMerged)"]]
            }
            out += "\n\n" + render(headers: ["SHARING COUNTER", "VALUE"], rows: rows)
            if let v = s.verdicts, !v.peers.isEmpty {
                out += "\n\n" + render(headers: ["VERDICTS FROM", "GENERATION", "DOWN", "RECEIVED", "FRESH"], rows: v.peers.map { p in
                    [p.address, "\(p.generation)", "\(p.down)", String(format: "%.1f s ago", p.receivedSecondsAgo), p.fresh ? "yes" : "no"]
                })
            }
        }
        return out
    }

    static func selName(_ v: NumberOrName?) -> String {
        switch v {
        case .number(let n)?: ["rr", "hash", "priority", "persist"].indices.contains(n) ? ["rr", "hash", "priority", "persist"][n] : "\(n)"
        case .name(let s)?: s
        case nil: "rr"
        }
    }

    static func modeName(_ v: NumberOrName?) -> String {
        switch v {
        case .number(let n)?: ["default", "onearm", "fullnat"].indices.contains(n) ? ["default", "onearm", "fullnat"][n] : "\(n)"
        case .name(let s)?: s
        case nil: "default"
        }
    }
}

/// Parses loxicmd-style CLI arguments into an API request.
public enum CLIArguments {
    /// "56002:80,8080:80" -> [(56002, 80), (8080, 80)]; a lone "80" maps to itself.
    public static func portPairs(_ text: String) throws -> [(Int, Int)] {
        try text.split(separator: ",").map { part in
            let p = part.split(separator: ":", omittingEmptySubsequences: false)
            guard (1...2).contains(p.count), let a = Int(p[0]), let b = Int(p.count == 2 ? p[1] : p[0]),
                  (1...65535).contains(a), (1...65535).contains(b) else {
                throw CLIError("'\(part)' is not PORT:TARGETPORT with ports 1-65535")
            }
            return (a, b)
        }
    }

    /// "10.0.10.21:1,10.0.10.22:2" -> endpoints with weights (weight defaults to 1).
    public static func endpoints(_ text: String, targetPort: Int) throws -> [EndpointArguments] {
        try text.split(separator: ",").map { part in
            let p = part.split(separator: ":", omittingEmptySubsequences: false)
            guard (1...2).contains(p.count), IPv4Address(p[0]) != nil else {
                throw CLIError("'\(part)' is not IP[:WEIGHT]")
            }
            var w = 1
            if p.count == 2 {
                guard let v = Int(p[1]), (1...255).contains(v) else { throw CLIError("weight in '\(part)' must be 1-255") }
                w = v
            }
            return EndpointArguments(endpointIP: String(p[0]), targetPort: targetPort, weight: w)
        }
    }
}

public struct CLIError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

