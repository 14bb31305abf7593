import CLibBPF
import CTandemShim
import Foundation
import Glibc
import Logging
import TandemCore
import Synchronization

/// Node-wide datapath settings.
public struct DatapathSettings: Equatable, Sendable {
    public var nodeIP: IPv4Address
    public var hashSeed: UInt32
    public var portSlice: PortSlice
    public var timeouts: Timeouts
    public var answerICMP: Bool
    public var emitEvents: Bool
    /// In a cluster: serve a VIP only while this node owns it (`setActiveVIPs`); a standalone node
    /// serves every VIP.
    public var gateVIPs: Bool
    /// The node's interfaces do not forward IPv4, so the datapath skips the FIB lookup (the kernel
    /// would refuse it) and redirects through the neighbour table out of the ingress interface.
    public var skipFIB: Bool
    /// The fullnat source of services that set none (default: the VIP itself). Active-active
    /// BGP gives each node its own, so replies return to the node that made the flow.
    public var defaultSNAT: IPv4Address?

    public init(nodeIP: IPv4Address, hashSeed: UInt32 = 0x7461_6e64, portSlice: PortSlice = PortSlice(low: 32768, high: 65535),
                timeouts: Timeouts = Timeouts(), answerICMP: Bool = true, emitEvents: Bool = true, gateVIPs: Bool = false,
                skipFIB: Bool = false) {
        self.nodeIP = nodeIP
        self.hashSeed = hashSeed
        self.portSlice = portSlice
        self.timeouts = timeouts
        self.answerICMP = answerICMP
        self.emitEvents = emitEvents
        self.gateVIPs = gateVIPs
        self.skipFIB = skipFIB
    }
}

/// Packets, bytes and new flows summed over CPUs.
public struct TrafficCounters: Equatable, Sendable, Codable {
    public var packets: UInt64 = 0
    public var bytes: UInt64 = 0
    public var newFlows: UInt64 = 0
    /// New connections refused because their source is outside the service's allowedSources
    /// (service counters only; always 0 for an endpoint).
    public var denied: UInt64 = 0
    /// New connections that found no eligible (active and up) endpoint and were refused at once
    /// with a TCP RST or an ICMP port unreachable (service counters only).
    public var noEndpoint: UInt64 = 0
    /// Established connections dropped because their endpoint went down, on a service with
    /// `resetOnEndpointDown` (TCP ones got a RST; service counters only).
    public var resetDown: UInt64 = 0
    public init() {}
}

/// Datapath-wide counters (enum tdm_stat), summed over CPUs.
public struct DatapathStats: Equatable, Sendable, Codable {
    public var noEndpoint: UInt64 = 0
    public var noPort: UInt64 = 0
    public var tableFull: UInt64 = 0
    public var eventsLost: UInt64 = 0
    public var icmpReplied: UInt64 = 0
    public var redirectFailed: UInt64 = 0
    public var expiredReused: UInt64 = 0
    public var pickedUp: UInt64 = 0
    /// Packets to a VIP this node does not own, left to the kernel (gated VIPs only).
    public var standbyPassed: UInt64 = 0
    /// Packets of established flows forwarded by the XDP fast path (0 without it).
    public var xdpForwarded: UInt64 = 0
    /// Idle connections, and orphaned or stale reply halves, removed by the in-kernel reap.
    public var reaped: UInt64 = 0
    public var reapedHalves: UInt64 = 0
    /// New connections refused by a service's allowedSources, all services.
    public var sourceDenied: UInt64 = 0
    /// TCP RSTs the datapath sent to clients: no eligible endpoint, or an endpoint marked down.
    public var resetsSent: UInt64 = 0
    /// ICMP port unreachables sent for UDP to a service with no eligible endpoint.
    public var unreachablesSent: UInt64 = 0
    public init() {}
}

/// The loaded BPF object and its attachments. One owner (this actor) holds libbpf's objects;
/// others get map descriptors. Detaches everything it attached on `close()`.
public actor Datapath {
    public let objectPath: String
    /// The connection map's capacity (its hash has the next power of two of buckets).
    public nonisolated let connectionTableSize: UInt32
    private let object: OpaquePointer
    private let programFD: Int32
    public nonisolated let maps: Maps
    /// Installs replicated connections in the kernel; nil where the kernel lacks syscall programs
    /// (the user-space path in Replication.swift is used then).
    nonisolated let installer: KernelInstaller?
    private var attached: [(name: String, ifindex: Int32, createdQdisc: Bool, xdp: Bool)] = []
    /// The optional XDP fast path (tandem_xdp), or -1 if the object has none.
    private let xdpProgramFD: Int32
    private let logger: Logger
    private var closed = false
    /// `DatapathSettings.defaultSNAT`, for the services installed after `apply(settings:)`.
    private var defaultSNAT: IPv4Address?
    /// How this start found the pin directory (`.fresh` without persistence).
    public nonisolated let adoption: DatapathAdoption
    /// What the previous run's graceful exit left (adopted starts only).
    public nonisolated let resumeRecord: GracefulExitRecord?
    private let pins: PinDirectory?
    private let metaFD: Int32
    private var meta: PinMeta?

    public struct Maps: Sendable {
        public let ct, services, vips, endpoints, schedules, maglev, rr, persist: BPFMap
        public let serviceStats, endpointStats, stats, config, events, activeVIPs: BPFMap
        /// The ring buffer's wakeup handshake (struct tdm_event_ctl), mmapped by `RingBufferReader`.
        public let eventControl: BPFMap
        /// allowedSources prefixes (LPM trie of struct tdm_source_key).
        public let sources: BPFMap
        /// Active connections per endpoint (least connections), mmapped as `activeCounters`.
        public let lcActive: BPFMap
        /// Per-service idle timeouts in ns by slot (0 = the node's).
        public let serviceTimeouts: BPFMap
        /// Endpoint health (struct tdm_ep_state) by endpoint index, as tdm_endpoints.
        public let endpointState: BPFMap
    }

    /// What `install` last wrote per slot, for rebuilding Maglev on a health change.
    private var installed: [UInt32: (service: Service, hashSeed: UInt32)] = [:]
    /// Endpoints marked down per slot, by identity (ip:port), so a reinstall that reorders, adds or
    /// removes endpoints keeps the verdicts of those that stay.
    private var downIdentities: [UInt32: Set<String>] = [:]

    /// What tdm_svc_timeout holds, in seconds by slot, for the Swift paths that need it per
    /// connection (the reap's candidate pick, replicated installs) without a map read each.
    nonisolated let idleTimeouts = ServiceIdleTimeouts()

    /// tdm_lc_active, mapped: user space gives back the counts of connections it deletes.
    nonisolated let activeCounters: ActiveCounters?

    /// Opens and loads the object: every program passes the kernel verifier here or this throws.
    ///
    /// With `pinDirectory` (a directory on a BPF filesystem, one per node instance) every map is
    /// pinned there, and a start that finds maps pinned by a build with the same layout adopts
    /// them: the connection table, services and events ring of the previous run carry on (see
    /// `adoption`). A layout that differs is refused and removed, and the datapath starts empty.
    public init(objectPath: String, connectionTableSize: UInt32 = UInt32(TDM_CT_DEFAULT_MAX),
                eventRingBytes: UInt32 = UInt32(TDM_RINGBUF_BYTES), pinDirectory: String? = nil,
                logger: Logger) throws {
        self.objectPath = objectPath
        self.logger = logger
        self.connectionTableSize = connectionTableSize
        tdm_set_libbpf_verbosity(1)
        guard access(objectPath, R_OK) == 0 else {
            throw DatapathError("BPF object \(objectPath) is missing or unreadable; run `make bpf` first")
        }
        func open() throws -> OpaquePointer {
            try Self.openObject(objectPath, connectionTableSize: connectionTableSize, eventRingBytes: eventRingBytes)
        }
        let pins = try pinDirectory.map { try PinDirectory(path: $0) }
        var adoption = DatapathAdoption.fresh
        var pinned: (fd: Int32, meta: PinMeta)?
        var fingerprint: UInt64 = 0
        if let pins {
            let probe = try open()
            fingerprint = tdm_layout_fingerprint(probe)
            bpf_object__close(probe)
            pinned = PinMeta.open(pins)
            adoption = DatapathAdoption.decide(
                pinnedFingerprint: pinned?.meta.raw.fingerprint, pinnedLayoutVersion: pinned?.meta.raw.layout_version,
                otherPins: !pins.entries().isEmpty, fingerprint: fingerprint, layoutVersion: UInt32(TDM_LAYOUT_VERSION))
            if case .refused = adoption {
                if let fd = pinned?.fd { Glibc.close(fd) }
                pinned = nil
                pins.removeAll()
            }
        }
        /// Opens the object and loads it, with or without the replication installer; with pins,
        /// libbpf reuses each map pinned under its name (checking type and sizes) or creates and
        /// pins it.
        func openAndLoad(installer: Bool) throws -> (OpaquePointer, Int32) {
            let obj = try open()
            if !installer {
                // Both are BPF_PROG_TYPE_SYSCALL programs: without them the user-space paths run.
                for name in ["tandem_install", "tandem_reap"] {
                    if let p = bpf_object__find_program_by_name(obj, name) { bpf_program__set_autoload(p, false) }
                }
            }
            if let pins {
                var m = bpf_object__next_map(obj, nil)
                while let map = m {
                    if !bpf_map__is_internal(map), let name = bpf_map__name(map) {
                        bpf_map__set_pin_path(map, pins.mapPath(String(cString: name)))
                    }
                    m = bpf_object__next_map(obj, map)
                }
            }
            return (obj, bpf_object__load(obj))
        }
        // The installer is a sleepable BPF_PROG_TYPE_SYSCALL program (kernel 5.14+, bpf_loop
        // 5.17+). Where the kernel has none, or refuses it, load the object without it rather than
        // fail the datapath: installs then fall back to map calls from user space.
        let wantInstaller = libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_SYSCALL, nil) == 1
        var (obj, rc) = try openAndLoad(installer: wantInstaller)
        if rc != 0 && wantInstaller {
            bpf_object__close(obj)
            logger.warning("loading without the in-kernel replication installer", metadata: ["object": "\(objectPath)"])
            (obj, rc) = try openAndLoad(installer: false)
        }
        if rc != 0, adoption == .adopted, let pins {
            // libbpf refused to reuse a pinned map (its own check, beyond our fingerprint): start
            // empty rather than not at all.
            bpf_object__close(obj)
            if let fd = pinned?.fd { Glibc.close(fd) }
            pinned = nil
            pins.removeAll()
            adoption = .refused("libbpf could not reuse the pinned maps (errno \(abs(rc)))")
            (obj, rc) = try openAndLoad(installer: wantInstaller)
            if rc != 0 && wantInstaller {
                bpf_object__close(obj)
                (obj, rc) = try openAndLoad(installer: false)
            }
        }
        if rc != 0 {
            bpf_object__close(obj)
            if let fd = pinned?.fd { Glibc.close(fd) }
            throw DatapathError("load \(objectPath) (verifier log above)", errno: rc)
        }
        self.adoption = adoption
        self.pins = pins
        if let pins {
            if let p = pinned {
                metaFD = p.fd
                meta = p.meta
                resumeRecord = p.meta.resume
            } else {
                var m = PinMeta()
                m.raw.fingerprint = fingerprint
                m.raw.layout_version = UInt32(TDM_LAYOUT_VERSION)
                do {
                    let fd = try PinMeta.create(pins)
                    try m.write(fd)
                    metaFD = fd
                } catch {
                    bpf_object__close(obj)
                    pins.removeAll()
                    throw error
                }
                meta = m
                resumeRecord = nil
            }
        } else {
            metaFD = -1
            meta = nil
            resumeRecord = nil
        }
        switch adoption {
        case .fresh where pins != nil:
            logger.info("datapath pinned", metadata: ["directory": "\(pinDirectory ?? "")"])
        case .adopted:
            logger.notice("datapath adopted: connections and services carried over from the previous run",
                          metadata: ["directory": "\(pinDirectory ?? "")", "resume": "\(pinned?.meta.resume != nil)"])
        case .refused(let why):
            logger.error("pinned datapath not adopted; starting empty (connections are pulled from peers, if any)",
                         metadata: ["directory": "\(pinDirectory ?? "")", "reason": "\(why)"])
        default:
            break
        }
        let installProg = bpf_object__find_program_by_name(obj, "tandem_install")
        guard let prog = bpf_object__find_program_by_name(obj, "tandem_ingress") else {
            bpf_object__close(obj)
            throw DatapathError("program tandem_ingress not found in \(objectPath)")
        }
        object = obj
        programFD = bpf_program__fd(prog)
        xdpProgramFD = bpf_object__find_program_by_name(obj, "tandem_xdp").map { bpf_program__fd($0) } ?? -1
        if let installProg, bpf_program__autoload(installProg),
           let m = bpf_object__find_map_by_name(obj, "tdm_install") {
            let reapProg = bpf_object__find_program_by_name(obj, "tandem_reap")
            installer = KernelInstaller(programFD: bpf_program__fd(installProg),
                                        reapProgramFD: reapProg.map { bpf_program__fd($0) } ?? -1,
                                        mapFD: bpf_map__fd(m), valueSize: Int(bpf_map__value_size(m)))
        } else {
            installer = nil
        }
        func map(_ name: String) throws -> BPFMap {
            guard let m = bpf_object__find_map_by_name(obj, name) else {
                throw DatapathError("map \(name) not found in \(objectPath)")
            }
            return BPFMap(name: name, fd: bpf_map__fd(m), keySize: Int(bpf_map__key_size(m)),
                          valueSize: Int(bpf_map__value_size(m)))
        }
        do {
            maps = Maps(ct: try map("tdm_ct"), services: try map("tdm_services"), vips: try map("tdm_vips"),
                        endpoints: try map("tdm_endpoints"), schedules: try map("tdm_schedules"),
                        maglev: try map("tdm_maglev"), rr: try map("tdm_rr"), persist: try map("tdm_persist"),
                        serviceStats: try map("tdm_service_stats"), endpointStats: try map("tdm_endpoint_stats"),
                        stats: try map("tdm_stats"), config: try map("tdm_config"), events: try map("tdm_events"),
                        activeVIPs: try map("tdm_active_vips"), eventControl: try map("tdm_event_ctl"),
                        sources: try map("tdm_sources"), lcActive: try map("tdm_lc_active"),
                        serviceTimeouts: try map("tdm_svc_timeout"), endpointState: try map("tdm_ep_state"))
        } catch {
            installer?.unmap()
            bpf_object__close(obj)
            throw error
        }
        activeCounters = ActiveCounters(map: maps.lcActive)
    }

    /// Opens the object (no load) with the node's table sizes, which are part of its layout.
    static func openObject(_ objectPath: String, connectionTableSize: UInt32, eventRingBytes: UInt32) throws -> OpaquePointer {
        guard let obj = bpf_object__open_file(objectPath, nil), libbpf_get_error(UnsafeRawPointer(obj)) == 0 else {
            throw DatapathError("open \(objectPath)", errno: errno)
        }
        if let ctMap = bpf_object__find_map_by_name(obj, "tdm_ct") {
            bpf_map__set_max_entries(ctMap, connectionTableSize)
        }
        if let ring = bpf_object__find_map_by_name(obj, "tdm_events") {
            bpf_map__set_max_entries(ring, eventRingBytes)
        }
        return obj
    }

    public nonisolated var ingressProgramFD: Int32 { programFD }
    /// The XDP fast path (tandem_xdp), or -1 if the object has none: for attaching it where
    /// `attach(interface:xdp:)` cannot run (another namespace, in tests).
    public nonisolated var fastPathProgramFD: Int32 { xdpProgramFD }

    /// Attaches the ingress program to an interface by name, and with `xdp` the XDP fast path in
    /// front of it (native mode only: generic XDP would cost more than it saves). On an adopted
    /// datapath this replaces the previous run's programs in one step each (same filter handle,
    /// XDP replace): packets never find the interface without a program.
    public func attach(interface name: String, xdp: Bool = false) throws {
        let ifindex = Int32(bitPattern: if_nametoindex(name))
        guard ifindex > 0 else { throw DatapathError("interface \(name) does not exist") }
        if xdp && xdpProgramFD < 0 { throw DatapathError("the BPF object \(objectPath) has no XDP program (tandem_xdp)") }
        let previous = meta?.interfaces[ifindex]
        var created: Int32 = 0
        let rc = tdm_tc_attach_ingress(ifindex, programFD, &created)
        guard rc == 0 else { throw DatapathError("attach to \(name)", errno: rc) }
        // The qdisc is ours to remove if this run or the one it adopted created it.
        let ownsQdisc = created != 0 || (previous ?? 0) & UInt8(TDM_META_IF_QDISC) != 0
        if xdp {
            let xrc = bpf_xdp_attach(ifindex, xdpProgramFD, UInt32(XDP_FLAGS_DRV_MODE), nil)
            if xrc != 0 {
                if previous == nil { _ = tdm_tc_detach_ingress(ifindex, created) }
                throw DatapathError("attach XDP to \(name) (native mode; does its driver support XDP?)", errno: xrc)
            }
        } else if let previous, previous & UInt8(TDM_META_IF_XDP) != 0 {
            // The previous run had the fast path here; this one does not.
            _ = bpf_xdp_detach(ifindex, UInt32(XDP_FLAGS_DRV_MODE), nil)
        }
        attached.append((name, ifindex, ownsQdisc, xdp))
        recordAttachments()
        logger.info("datapath attached", metadata: ["interface": "\(name)", "ifindex": "\(ifindex)", "xdp": "\(xdp)",
                                                    "replaced": "\(previous != nil)"])
    }

    /// After the interfaces are attached: detaches the programs an adopted run left on interfaces
    /// this run does not use.
    public func detachLeftovers() {
        guard let m = meta else { return }
        let mine = Set(attached.map(\.ifindex))
        for (ifindex, flags) in m.interfaces where !mine.contains(ifindex) {
            if flags & UInt8(TDM_META_IF_XDP) != 0 { _ = bpf_xdp_detach(ifindex, UInt32(XDP_FLAGS_DRV_MODE), nil) }
            _ = tdm_tc_detach_ingress(ifindex, flags & UInt8(TDM_META_IF_QDISC) != 0 ? 1 : 0)
            logger.info("datapath detached from an interface the previous run used", metadata: ["ifindex": "\(ifindex)"])
        }
        recordAttachments()
    }

    /// Writes where the programs are attached into tdm_meta, for the next run's release.
    private func recordAttachments() {
        guard var m = meta, metaFD >= 0 else { return }
        var list: [Int32: UInt8] = [:]
        for a in attached {
            list[a.ifindex] = (a.createdQdisc ? UInt8(TDM_META_IF_QDISC) : 0) | (a.xdp ? UInt8(TDM_META_IF_XDP) : 0)
        }
        m.interfaces = list
        do { try m.write(metaFD) } catch {
            logger.warning("tdm_meta not updated", metadata: ["error": "\(error)"])
        }
        meta = m
    }

    public var attachedInterfaces: [String] { attached.map(\.name) }

    /// Whether the maps are pinned (the datapath can outlive this process).
    public nonisolated var isPinned: Bool { pins != nil }

    /// Consumes the resume record the previous run left, so a later crash does not resume it again.
    public func clearResumeRecord() {
        guard var m = meta, metaFD >= 0, m.resume != nil else { return }
        m.resume = nil
        try? m.write(metaFD)
        meta = m
    }

    /// Detaches from every interface (removing clsact qdiscs this process, or the run it adopted,
    /// created), unpins everything and frees the object: nothing is left behind.
    public func close() {
        close(release: true)
    }

    /// With `release` false (a graceful restart of a pinned datapath): the programs stay attached
    /// and the maps pinned, so forwarding goes on while no daemon runs; `resume`, when given, is
    /// left for the next start. Without pins there is nothing to keep: the datapath is released.
    public func close(release: Bool, resume: GracefulExitRecord? = nil) {
        guard !closed else { return }
        closed = true
        let keep = !release && pins != nil
        if keep {
            if var m = meta, metaFD >= 0 {
                m.resume = resume
                do { try m.write(metaFD) } catch {
                    logger.warning("resume record not written", metadata: ["error": "\(error)"])
                }
            }
            logger.notice("datapath left running for the next start", metadata: [
                "directory": "\(pins?.path ?? "")", "interfaces": "\(attached.map(\.name).joined(separator: ","))"])
        } else {
            for a in attached.reversed() {
                if a.xdp {
                    let xrc = bpf_xdp_detach(a.ifindex, UInt32(XDP_FLAGS_DRV_MODE), nil)
                    if xrc != 0 {
                        logger.warning("XDP detach failed", metadata: ["interface": "\(a.name)", "error": "\(DatapathError("detach", errno: xrc))"])
                    }
                }
                let rc = tdm_tc_detach_ingress(a.ifindex, a.createdQdisc ? 1 : 0)
                if rc != 0 {
                    logger.warning("detach failed", metadata: ["interface": "\(a.name)", "error": "\(DatapathError("detach", errno: rc))"])
                } else {
                    logger.info("datapath detached", metadata: ["interface": "\(a.name)"])
                }
            }
            pins?.removeAll(removingDirectory: true)
        }
        attached.removeAll()
        if metaFD >= 0 { Glibc.close(metaFD) }
        installer?.unmap()
        activeCounters?.unmap()
        bpf_object__close(object)
    }

    public func apply(settings s: DatapathSettings) throws {
        var c = tdm_config()
        let t = s.timeouts.nanosecondsByState
        withUnsafeMutableBytes(of: &c.timeout_ns) { raw in
            for (i, v) in t.enumerated() where i < Int(TDM_CT_STATE_COUNT.rawValue) {
                raw.storeBytes(of: v, toByteOffset: i * 8, as: UInt64.self)
            }
        }
        c.node_ip = s.nodeIP.networkOrder
        c.hash_seed = s.hashSeed
        c.port_lo = s.portSlice.low
        c.port_hi = s.portSlice.high
        c.answer_icmp = s.answerICMP ? 1 : 0
        c.emit_events = s.emitEvents ? 1 : 0
        c.gate_vips = s.gateVIPs ? 1 : 0
        c.skip_fib = s.skipFIB ? 1 : 0
        try maps.config.update(UInt32(0), c)
        defaultSNAT = s.defaultSNAT
    }

    /// Makes `vips` exactly the set this node answers for (with `gateVIPs`). Additions are written
    /// before removals, so a VIP that stays owned is never briefly unserved.
    public nonisolated func setActiveVIPs(_ vips: Set<IPv4Address>) throws {
        let one: UInt8 = 1
        for v in vips { try maps.activeVIPs.update(v.networkOrder, one) }
        for raw in maps.activeVIPs.keys(as: UInt32.self) where !vips.contains(IPv4Address(networkOrder: raw)) {
            _ = maps.activeVIPs.delete(raw)
        }
    }

    /// The VIPs this node currently answers for (gated mode).
    public nonisolated func activeVIPs() -> Set<IPv4Address> {
        Set(maps.activeVIPs.keys(as: UInt32.self).map { IPv4Address(networkOrder: $0) })
    }

    /// Writes a service and its endpoints, schedule and Maglev table into the maps. Tables are
    /// written before the service entry, so a packet never sees a service without them.
    ///
    /// Health: endpoints already marked down in this slot (by ip:port, see `setDownEndpoints`) stay
    /// down, and the Maglev table leaves them out. `downEndpoints`, when given, replaces that set
    /// first (indices into `svc.endpoints`), so a service whose verdicts are known before it is
    /// created never sends a connection to a dead endpoint.
    public func install(_ svc: Service, slot: UInt32, hashSeed: UInt32, downEndpoints: Set<Int>? = nil) throws {
        let base = slot * UInt32(TDM_MAX_ENDPOINTS)
        let identities = Set(svc.endpoints.map(\.identity))
        var known: Set<String>
        if let given = downEndpoints {
            known = Set(given.filter { svc.endpoints.indices.contains($0) }.map { svc.endpoints[$0].identity })
        } else {
            known = downIdentities[slot] ?? []
        }
        known.formIntersection(identities) // a removed endpoint's verdict goes with it
        let down = Set(svc.endpoints.indices.filter { known.contains(svc.endpoints[$0].identity) })
        for i in 0..<Int(TDM_MAX_ENDPOINTS) {
            var ep = tdm_endpoint()
            if i < svc.endpoints.count {
                let e = svc.endpoints[i]
                ep.ip = e.ip.networkOrder
                ep.port = e.port.bigEndian
                ep.weight = e.weight
                ep.active = 1
            }
            try maps.endpoints.update(base + UInt32(i), ep)
            try maps.endpointState.update(base + UInt32(i), endpointState(down: down.contains(i)))
        }
        let weights = svc.endpoints.map { svc.selection == .roundRobin ? UInt8(1) : $0.weight }
        let schedule = WeightedSchedule.build(weights: weights)
        var sched = [UInt8](repeating: 0, count: Int(TDM_SCHED_LEN))
        sched.replaceSubrange(0..<schedule.count, with: schedule)
        try maps.schedules.updateRaw(slot, bytes: sched)
        if svc.selection == .maglev {
            try writeMaglev(svc, slot: slot, hashSeed: hashSeed, down: down)
        }
        // Prefixes go in before the service entry that points packets at them; stale ones of the
        // slot leave after it, so a narrowed list takes effect once the new entry is written.
        let sourceKeys = Set(svc.allowedSources.prefix(Int(TDM_MAX_SOURCES)).map { SourceKey(slot: slot, prefix: $0) })
        for k in sourceKeys { try maps.sources.update(k.raw, UInt8(1)) }
        // Before the service entry, so its first connection already idles on its own timeout.
        try maps.serviceTimeouts.update(slot, UInt64(svc.idleTimeout ?? 0) * 1_000_000_000)
        idleTimeouts.set(slot, svc.idleTimeout)
        var v = tdm_service()
        v.id = slot
        v.flags = (sourceKeys.isEmpty ? 0 : UInt8(TDM_SVC_F_SOURCES))
            | (svc.resetOnEndpointDown ? UInt8(TDM_SVC_F_RESET_DOWN) : 0)
        v.snat_ip = (svc.snatIP ?? defaultSNAT)?.networkOrder ?? 0
        v.persist_timeout_s = svc.persistTimeout
        v.endpoint_count = UInt16(svc.endpoints.count)
        v.sched_len = UInt16(schedule.count)
        v.nat_mode = svc.mode.rawValue
        v.sel = svc.selection.rawValue
        // A rewrite of an installed service (same key: new endpoints, selection, timeouts) keeps
        // its VIP's service count; only a new key adds one.
        let isNew = maps.services.lookup(serviceKey(svc.key), as: tdm_service.self) == nil
        try maps.services.update(serviceKey(svc.key), v)
        removeSources(slot: slot, keeping: sourceKeys)
        if isNew {
            let vip = svc.key.vip.networkOrder
            let n = maps.vips.lookup(vip, as: UInt32.self) ?? 0
            try maps.vips.update(vip, n + 1)
        }
        installed[slot] = (svc, hashSeed)
        downIdentities[slot] = known.isEmpty ? nil : known
    }

    private func endpointState(down: Bool) -> tdm_ep_state {
        var st = tdm_ep_state()
        st.down = down ? 1 : 0
        return st
    }

    /// The Maglev table without the `down` endpoints (see `Maglev.table(endpoints:seed:down:)`),
    /// padded to the map's slot count. With every endpoint down the table is all zeros, which the
    /// datapath finds ineligible: no endpoint.
    private func writeMaglev(_ svc: Service, slot: UInt32, hashSeed: UInt32, down: Set<Int>) throws {
        var table = Maglev.table(endpoints: svc.endpoints, seed: hashSeed, down: down)
        table.append(contentsOf: [UInt8](repeating: 0, count: Int(TDM_MAGLEV_SLOTS) - table.count))
        try maps.maglev.updateRaw(slot, bytes: table)
    }

    /// Marks one endpoint (an index into the installed service's endpoints) up or down. See
    /// `setDownEndpoints`.
    public func setEndpointState(slot: UInt32, index: Int, up: Bool) throws {
        var down = downEndpoints(slot: slot)
        if up { down.remove(index) } else { down.insert(index) }
        try setDownEndpoints(slot: slot, down)
    }

    /// Makes `down` (indices into the service installed in `slot`) exactly the set of endpoints
    /// marked down; every other endpoint of the service is up. Down endpoints get no new
    /// connections in any selection mode; their established ones are kept until their own timeout,
    /// or reset when the service has `resetOnEndpointDown`. A Maglev service's table is rebuilt
    /// without them, identically on every node given the same service, seed and down set.
    ///
    /// Writes only the endpoint state map (and the Maglev table): the service entry, its
    /// counters, cursors and connections are untouched. Endpoints coming up are marked before the
    /// table is rewritten, endpoints going down after, so no pick ever lands on a down endpoint the
    /// table still holds. Throws for a slot with no service or an index outside its endpoints.
    public func setDownEndpoints(slot: UInt32, _ down: Set<Int>) throws {
        guard let entry = installed[slot] else { throw DatapathError("slot \(slot) has no service installed") }
        let (svc, seed) = entry
        if let bad = down.first(where: { !svc.endpoints.indices.contains($0) }) {
            throw DatapathError("service \(svc.key) has no endpoint \(bad) (it has \(svc.endpoints.count))")
        }
        let before = downEndpoints(slot: slot)
        guard down != before else { return }
        let base = slot * UInt32(TDM_MAX_ENDPOINTS)
        for i in before.subtracting(down) { try maps.endpointState.update(base + UInt32(i), endpointState(down: false)) }
        if svc.selection == .maglev { try writeMaglev(svc, slot: slot, hashSeed: seed, down: down) }
        for i in down.subtracting(before) { try maps.endpointState.update(base + UInt32(i), endpointState(down: true)) }
        let ids = Set(down.map { svc.endpoints[$0].identity })
        downIdentities[slot] = ids.isEmpty ? nil : ids
        logger.debug("endpoint states", metadata: ["service": "\(svc.key)", "slot": "\(slot)",
                                                  "down": "\(down.sorted())"])
    }

    /// `setDownEndpoints` by service and endpoint address, as a health monitor knows them: the
    /// endpoints of the installed service `key` whose ip:port is among `down` are marked down, the
    /// rest up (weights are ignored; addresses not in the service are). Throws when no service
    /// with that key is installed.
    public func setDownEndpoints(_ key: ServiceKey, _ down: [Endpoint]) throws {
        guard let found = installed.first(where: { $0.value.service.key == key }) else {
            throw DatapathError("service \(key) is not installed")
        }
        let eps = found.value.service.endpoints
        let ids = Set(down.map(\.identity))
        try setDownEndpoints(slot: found.key, Set(eps.indices.filter { ids.contains(eps[$0].identity) }))
    }

    /// Indices of the endpoints marked down in the service installed in `slot`.
    public func downEndpoints(slot: UInt32) -> Set<Int> {
        guard let svc = installed[slot]?.service, let ids = downIdentities[slot] else { return [] }
        return Set(svc.endpoints.indices.filter { ids.contains(svc.endpoints[$0].identity) })
    }

    /// The Maglev table the datapath holds for a slot (its first TDM_MAGLEV_M entries): nodes
    /// that agree on it pick the same endpoint for every new flow.
    public nonisolated func maglevTable(slot: UInt32) -> [UInt8] {
        guard slot < UInt32(TDM_MAX_SERVICES), let raw = maps.maglev.lookupRaw(slot) else { return [] }
        return Array(raw.prefix(Int(TDM_MAGLEV_M)))
    }

    /// What the datapath holds: for each of the first `count` endpoints of a slot, whether it is
    /// marked down (read from the map, for checks and listings).
    public nonisolated func endpointDownStates(slot: UInt32, count: Int) -> [Bool] {
        let n = max(0, min(count, Int(TDM_MAX_ENDPOINTS)))
        guard slot < UInt32(TDM_MAX_SERVICES) else { return [Bool](repeating: false, count: n) }
        return (0..<n).map { i in
            (maps.endpointState.lookup(slot * UInt32(TDM_MAX_ENDPOINTS) + UInt32(i), as: tdm_ep_state.self)?.down ?? 0) != 0
        }
    }

    /// Deletes the slot's allowedSources prefixes except `keep`.
    private func removeSources(slot: UInt32, keeping keep: Set<SourceKey>) {
        for raw in maps.sources.keys(as: tdm_source_key.self) where raw.service_id == slot {
            let k = SourceKey(raw)
            if !keep.contains(k) { maps.sources.delete(raw) }
        }
    }

    /// The allowedSources prefixes the datapath holds for a slot (what packets are checked against).
    public nonisolated func allowedSources(slot: UInt32) -> [IPv4Prefix] {
        maps.sources.keys(as: tdm_source_key.self).filter { $0.service_id == slot }
            .map { SourceKey($0).prefix }.sorted { ($0.address, $0.length) < ($1.address, $1.length) }
    }

    /// Removes a service; its existing connections stay until they end or expire.
    public func uninstall(_ key: ServiceKey, slot: UInt32) {
        maps.services.delete(serviceKey(key))
        let vip = key.vip.networkOrder
        let n = maps.vips.lookup(vip, as: UInt32.self) ?? 0
        if n <= 1 { maps.vips.delete(vip) } else { try? maps.vips.update(vip, n - 1) }
        let zero = [UInt8](repeating: 0, count: Int(TDM_SCHED_LEN))
        try? maps.schedules.updateRaw(slot, bytes: zero)
        try? maps.rr.update(slot, UInt32(0))
        removeSources(slot: slot, keeping: [])
        // Its remaining connections fall back to the node's timeouts.
        try? maps.serviceTimeouts.update(slot, UInt64(0))
        idleTimeouts.set(slot, nil)
        // Verdicts belong to the service: the slot's next one starts with every endpoint up.
        installed[slot] = nil
        downIdentities[slot] = nil
        let base = slot * UInt32(TDM_MAX_ENDPOINTS)
        for i in 0..<UInt32(TDM_MAX_ENDPOINTS) { try? maps.endpointState.update(base + i, endpointState(down: false)) }
    }

    /// `base` (the node's timeouts) with every installed service's idle timeout: what
    /// `ConnectionReaper`, `Connection.isExpired(timeouts:)` and replication's remaining-lifetime
    /// computations should be given so they agree with the datapath.
    public nonisolated func effectiveTimeouts(_ base: Timeouts) -> Timeouts {
        var t = base
        t.perService = idleTimeouts.snapshot()
        return t
    }

    /// The services the maps hold now, by key, with their slots: on an adopted datapath, what the
    /// previous run installed, so a restore can put each service back in the slot its connections
    /// (and per-endpoint counts) refer to.
    public nonisolated func installedServiceSlots() -> [ServiceKey: UInt32] {
        var out: [ServiceKey: UInt32] = [:]
        for (k, v) in maps.services.entries(key: tdm_service_key.self, value: tdm_service.self) {
            guard let proto = L4Protocol(rawValue: k.proto), v.id < UInt32(TDM_MAX_SERVICES) else { continue }
            out[ServiceKey(vip: IPv4Address(networkOrder: k.vip), port: UInt16(bigEndian: k.port), proto: proto)] = v.id
        }
        return out
    }

    /// The endpoints (ip:port) each installed service holds down, read from the maps themselves:
    /// on an adopted datapath, what the previous run's verdicts were, so a restart can keep an
    /// endpoint that was down out of rotation until its probes pass again.
    public nonisolated func heldDownEndpoints() -> [ServiceKey: Set<String>] {
        var out: [ServiceKey: Set<String>] = [:]
        for (k, v) in maps.services.entries(key: tdm_service_key.self, value: tdm_service.self) {
            guard let proto = L4Protocol(rawValue: k.proto), v.id < UInt32(TDM_MAX_SERVICES) else { continue }
            let base = v.id * UInt32(TDM_MAX_ENDPOINTS)
            var down = Set<String>()
            for i in 0..<min(UInt32(v.endpoint_count), UInt32(TDM_MAX_ENDPOINTS)) {
                guard (maps.endpointState.lookup(base + i, as: tdm_ep_state.self)?.down ?? 0) != 0,
                      let ep = maps.endpoints.lookup(base + i, as: tdm_endpoint.self) else { continue }
                down.insert(Endpoint(ip: IPv4Address(networkOrder: ep.ip), port: UInt16(bigEndian: ep.port)).identity)
            }
            if !down.isEmpty {
                out[ServiceKey(vip: IPv4Address(networkOrder: k.vip), port: UInt16(bigEndian: k.port), proto: proto)] = down
            }
        }
        return out
    }

    private func serviceKey(_ k: ServiceKey) -> tdm_service_key {
        var sk = tdm_service_key()
        sk.vip = k.vip.networkOrder
        sk.port = k.port.bigEndian
        sk.proto = k.proto.rawValue
        return sk
    }

    /// Every entry of the connection table (both directions of each connection).
    public nonisolated func connectionEntries() -> [ConnectionEntry] {
        let now = monotonicNanoseconds()
        return maps.ct.entries(key: tdm_flow_key.self, value: tdm_ct_entry.self).map {
            ConnectionEntry(key: $0.0, value: $0.1, nowNanoseconds: now)
        }
    }

    /// One reap pass (see tandem_reap in bpf/): walks the table a chunk at a time, picks the keys
    /// idle by their own half, and lets the kernel decide and remove (idle connections, reported
    /// with `expired` events on the ring buffer; orphaned and stale reply halves). Returns the
    /// connections removed, or nil where the program is unavailable or the pass could not finish
    /// (use `ConnectionReaper` over `connectionEntries()` then).
    ///
    /// - Parameter checkOrphans: also hand the kernel every reply half idle over 2 s, to find the
    ///   ones whose original is gone (LRU eviction). Every one-way flow's reply half is idle, so
    ///   on a table of a million such flows this is a million lookups; the scanner asks for it on
    ///   some passes only. Without it a reply half is a candidate once idle past its timeout.
    public nonisolated func reapInKernel(checkOrphans: Bool = true) -> Int? {
        reapInKernel(checkOrphans: checkOrphans, visit: nil)
    }

    /// A reap pass that also returns every entry it read (before reaping), so a pass that needs
    /// the table too (replication's scan) walks the map once, not twice. nil as `reapInKernel`.
    public nonisolated func reapInKernelCollecting(checkOrphans: Bool = true) -> (reaped: Int, entries: [ConnectionEntry])? {
        var entries: [ConnectionEntry] = []
        let now = monotonicNanoseconds()
        let ks = maps.ct.keySize, vs = maps.ct.valueSize
        guard let n = reapInKernel(checkOrphans: checkOrphans, visit: { keys, values, count in
            for i in 0..<count {
                entries.append(ConnectionEntry(key: keys.loadUnaligned(fromByteOffset: i * ks, as: tdm_flow_key.self),
                                               value: values.loadUnaligned(fromByteOffset: i * vs, as: tdm_ct_entry.self),
                                               nowNanoseconds: now))
            }
        }) else { return nil }
        return (n, entries)
    }

    private nonisolated func reapInKernel(checkOrphans: Bool,
                                          visit: ((UnsafeRawPointer, UnsafeRawPointer, Int) -> Void)?) -> Int? {
        guard let installer, installer.canReap,
              let cfg = maps.config.lookup(UInt32(0), as: tdm_config.self) else { return nil }
        let timeouts: [UInt64] = withUnsafeBytes(of: cfg.timeout_ns) { Array($0.bindMemory(to: UInt64.self)) }
        // Per-service idle timeouts replace the node's for the idle states (entry_timeout in bpf/).
        let perService = idleTimeouts.snapshot().mapValues { UInt64($0) * 1_000_000_000 }
        let idleStates: Set<Int> = [Int(TDM_CT_ESTABLISHED.rawValue), Int(TDM_CT_UDP_NEW.rawValue), Int(TDM_CT_UDP_EST.rawValue)]
        let serviceOffset = MemoryLayout<tdm_ct_entry>.offset(of: \tdm_ct_entry.service_id) ?? 0
        let orphanIdle: UInt64 = 2_000_000_000
        let now = monotonicNanoseconds()
        var candidates: [tdm_flow_key] = []
        var reaped = 0
        var failed = false
        func flush() {
            guard !candidates.isEmpty else { return }
            var i = 0
            while i < candidates.count {
                let end = min(i + Int(TDM_INSTALL_BATCH), candidates.count)
                if let n = try? installer.reap(candidates[i..<end]) { reaped += n } else { failed = true }
                i = end
            }
            candidates.removeAll(keepingCapacity: true)
        }
        let stateOffset = MemoryLayout<tdm_ct_entry>.offset(of: \tdm_ct_entry.state) ?? 0
        let dirOffset = MemoryLayout<tdm_ct_entry>.offset(of: \tdm_ct_entry.dir) ?? 0
        let seenOffset = MemoryLayout<tdm_ct_entry>.offset(of: \tdm_ct_entry.last_seen_ns) ?? 0
        let keySize = maps.ct.keySize, valueSize = maps.ct.valueSize
        let walked = maps.ct.forEachBatch { keys, values, count in
            visit?(keys, values, count)
            for i in 0..<count {
                let v = values + i * valueSize
                let seen = v.loadUnaligned(fromByteOffset: seenOffset, as: UInt64.self)
                let idle = now > seen ? now - seen : 0
                let state = Int(v.load(fromByteOffset: stateOffset, as: UInt8.self))
                let isReply = v.load(fromByteOffset: dirOffset, as: UInt8.self) == UInt8(TDM_DIR_REPLY.rawValue)
                var timeout = state < timeouts.count ? timeouts[state] : 0
                if !perService.isEmpty, idleStates.contains(state),
                   let t = perService[v.loadUnaligned(fromByteOffset: serviceOffset, as: UInt32.self)] {
                    timeout = t
                }
                if idle > timeout || (checkOrphans && isReply && idle > orphanIdle) {
                    candidates.append(keys.loadUnaligned(fromByteOffset: i * keySize, as: tdm_flow_key.self))
                }
            }
            if candidates.count >= Int(TDM_INSTALL_BATCH) { flush() }
        }
        flush()
        // A pass cut short falls back to the Swift reaper, which reads everything again: removals are idempotent.
        return walked && !failed ? reaped : nil
    }

    /// Deletes one half (the Swift reaper's removal), giving back the connection's active count
    /// when the connection goes with it (see `releaseCount`).
    @discardableResult
    public nonisolated func deleteEntry(_ key: FlowTuple) -> Bool {
        let k = tdm_flow_key(key)
        let e = lookupEntry(k)
        guard maps.ct.delete(k) else { return false }
        if let e { releaseCount(of: e, at: k) }
        return true
    }

    /// Active connections per endpoint of a slot, as least-connections sees them: counted from a
    /// connection's creation (or install from a peer) until it closes or goes.
    public nonisolated func endpointActiveConnections(slot: UInt32, count: Int) -> [UInt64] {
        let n = max(0, min(count, Int(TDM_MAX_ENDPOINTS)))
        guard slot < UInt32(TDM_MAX_SERVICES) else { return [UInt64](repeating: 0, count: n) }
        return (0..<n).map { i in
            let idx = slot * UInt32(TDM_MAX_ENDPOINTS) + UInt32(i)
            return activeCounters?.load(idx) ?? maps.lcActive.lookup(idx, as: UInt64.self) ?? 0
        }
    }

    public nonisolated func serviceCounters(slot: UInt32) -> TrafficCounters {
        sum(maps.serviceStats.lookupPerCPU(slot, as: tdm_counters.self))
    }

    public nonisolated func endpointCounters(slot: UInt32, index: Int) -> TrafficCounters {
        sum(maps.endpointStats.lookupPerCPU(slot * UInt32(TDM_MAX_ENDPOINTS) + UInt32(index), as: tdm_counters.self))
    }

    /// Clears a slot's counters when a service is created in it.
    public func resetCounters(slot: UInt32) throws {
        let cpus = Int(libbpf_num_possible_cpus())
        let zero = [UInt8](repeating: 0, count: max(cpus, 1) * MemoryLayout<tdm_counters>.stride)
        func clear(_ m: BPFMap, _ k: UInt32) throws {
            var key = k
            let rc = withUnsafeBytes(of: &key) { kp in
                zero.withUnsafeBytes { bpf_map_update_elem(m.fd, kp.baseAddress, $0.baseAddress, UInt64(BPF_ANY)) }
            }
            if rc != 0 { throw DatapathError("clear \(m.name)", errno: errno) }
        }
        try clear(maps.serviceStats, slot)
        for i in 0..<UInt32(TDM_MAX_ENDPOINTS) {
            let idx = slot * UInt32(TDM_MAX_ENDPOINTS) + i
            try clear(maps.endpointStats, idx)
            // A new service in the slot starts from zero active connections.
            if let activeCounters { activeCounters.store(idx, 0) } else { try maps.lcActive.update(idx, UInt64(0)) }
        }
    }

    private nonisolated func sum(_ values: [tdm_counters]) -> TrafficCounters {
        var t = TrafficCounters()
        for v in values {
            t.packets += v.packets
            t.bytes += v.bytes
            t.newFlows += v.new_flows
            t.denied += v.denied
            t.noEndpoint += v.no_endpoint
            t.resetDown += v.reset_down
        }
        return t
    }

    public nonisolated func stats() -> DatapathStats {
        func s(_ i: tdm_stat) -> UInt64 { maps.stats.lookupPerCPU(UInt32(i.rawValue), as: UInt64.self).reduce(0, +) }
        var d = DatapathStats()
        d.noEndpoint = s(TDM_STAT_NO_ENDPOINT)
        d.noPort = s(TDM_STAT_NO_PORT)
        d.tableFull = s(TDM_STAT_CT_FULL)
        d.eventsLost = s(TDM_STAT_EVENT_LOST)
        d.icmpReplied = s(TDM_STAT_ICMP_REPLIED)
        d.redirectFailed = s(TDM_STAT_REDIRECT_FAILED)
        d.expiredReused = s(TDM_STAT_EXPIRED_REUSED)
        d.pickedUp = s(TDM_STAT_PICKED_UP)
        d.standbyPassed = s(TDM_STAT_STANDBY_PASSED)
        d.xdpForwarded = s(TDM_STAT_XDP_FORWARDED)
        d.reaped = s(TDM_STAT_REAPED)
        d.reapedHalves = s(TDM_STAT_REAPED_HALVES)
        d.sourceDenied = s(TDM_STAT_SOURCE_DENIED)
        d.resetsSent = s(TDM_STAT_RESET_SENT)
        d.unreachablesSent = s(TDM_STAT_UNREACH_SENT)
        return d
    }

    /// Runs the ingress program once over a packet (BPF_PROG_TEST_RUN), for tests and checks.
    public nonisolated func testRun(packet: [UInt8]) throws -> (verdict: Int32, packet: [UInt8]) {
        var out = [UInt8](repeating: 0, count: packet.count + 256)
        var outLen = UInt32(out.count)
        var ret: UInt32 = 0
        let rc = packet.withUnsafeBytes { p in
            out.withUnsafeMutableBytes { o in
                tdm_prog_test_run(programFD, p.baseAddress, UInt32(p.count), o.baseAddress, &outLen, &ret)
            }
        }
        if rc != 0 { throw DatapathError("BPF_PROG_TEST_RUN", errno: rc) }
        return (Int32(bitPattern: ret), Array(out.prefix(Int(outLen))))
    }
}

/// Per-service idle timeouts (seconds by slot), mirrored from what `install` writes into
/// tdm_svc_timeout. A lock, not the actor: nonisolated readers (reap pass, installs) need it.
final class ServiceIdleTimeouts: Sendable {
    private let bySlot = Mutex<[UInt32: UInt32]>([:])

    func set(_ slot: UInt32, _ seconds: UInt32?) { bySlot.withLock { $0[slot] = seconds } }
    func snapshot() -> [UInt32: UInt32] { bySlot.withLock { $0 } }
}
