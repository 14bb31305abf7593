import CLibBPF
import CTandemShim
import Foundation
import Glibc
import TandemCore

/// How a start found the pin directory.
public enum DatapathAdoption: Sendable, Equatable {
    /// Nothing pinned (or persistence off): maps and programs were created.
    case fresh
    /// The pinned maps were adopted: connections, services and events survived the restart.
    case adopted
    /// Something was pinned but not adoptable (another layout, or a half-written pin set); it was
    /// removed and the datapath started empty.
    case refused(String)

    /// Decides from what the pin directory holds. Pure, so the rule is unit-tested.
    public static func decide(pinnedFingerprint: UInt64?, pinnedLayoutVersion: UInt32?, otherPins: Bool,
                              fingerprint: UInt64, layoutVersion: UInt32) -> DatapathAdoption {
        guard let pf = pinnedFingerprint, let pv = pinnedLayoutVersion else {
            return otherPins ? .refused("pinned maps without a layout record (an interrupted first start)") : .fresh
        }
        if pv != layoutVersion {
            return .refused("the pinned datapath has layout version \(pv), this build needs \(layoutVersion)")
        }
        if pf != fingerprint {
            return .refused(String(format: "the pinned maps have layout %016llx, this build's are %016llx (a map changed, or connectionTableSize/eventRingBytes did)", pf, fingerprint))
        }
        return .adopted
    }
}

/// One node instance's directory on a BPF filesystem: the pinned maps and tdm_meta.
struct PinDirectory: Sendable {
    let path: String

    /// For reading only: no check, nothing created.
    init(unchecked path: String) {
        self.path = path
    }

    /// Creates the directory (and parents) on a bpffs; throws when the place is no bpffs.
    init(path: String) throws {
        self.path = path
        let parent = (path as NSString).deletingLastPathComponent
        guard Self.isBPFFS(parent.isEmpty ? "/" : parent) || Self.isBPFFS(path) else {
            throw DatapathError("pin directory \(path): \(parent) is not on a BPF filesystem (mount one: mount -t bpf bpf \(parent), or set datapath.pinDirectory)")
        }
        // mkdir(2) one level at a time: bpffs takes directories but not every call FileManager makes.
        var built = ""
        for part in path.split(separator: "/") {
            built += "/" + part
            if mkdir(built, 0o700) != 0 && errno != EEXIST {
                throw DatapathError("pin directory \(path): mkdir \(built)", errno: errno)
            }
        }
    }

    /// Whether `path` (or the nearest existing ancestor) lives on a BPF filesystem.
    static func isBPFFS(_ path: String) -> Bool {
        var p = path
        while !FileManager.default.fileExists(atPath: p), p != "/" { p = (p as NSString).deletingLastPathComponent }
        return tdm_is_bpffs(p) == 1
    }

    var metaPath: String { path + "/tdm_meta" }
    func mapPath(_ name: String) -> String { path + "/" + name }

    /// Names pinned here (maps and tdm_meta).
    func entries() -> [String] {
        (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
    }

    /// Unpins everything; the objects live on while something (an attached program) holds them.
    func removeAll(removingDirectory: Bool = false) {
        for e in entries() { unlink(mapPath(e)) }
        if removingDirectory { rmdir(path) }
    }
}

/// tdm_meta: one struct tdm_pin_meta in a pinned array map that only user space reads.
struct PinMeta {
    var raw = tdm_pin_meta()

    static func open(_ dir: PinDirectory) -> (fd: Int32, meta: PinMeta)? {
        let fd = bpf_obj_get(dir.metaPath)
        guard fd >= 0 else { return nil }
        var key: UInt32 = 0
        var m = tdm_pin_meta()
        let rc = withUnsafeMutableBytes(of: &m) { bpf_map_lookup_elem(fd, &key, $0.baseAddress) }
        guard rc == 0 else {
            Glibc.close(fd)
            return nil
        }
        return (fd, PinMeta(raw: m))
    }

    /// Creates and pins a fresh tdm_meta; the caller writes it.
    static func create(_ dir: PinDirectory) throws -> Int32 {
        let fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, "tdm_meta", 4, UInt32(MemoryLayout<tdm_pin_meta>.size), 1, nil)
        guard fd >= 0 else { throw DatapathError("create tdm_meta", errno: errno) }
        unlink(dir.metaPath)
        guard bpf_obj_pin(fd, dir.metaPath) == 0 else {
            let e = errno
            Glibc.close(fd)
            throw DatapathError("pin \(dir.metaPath)", errno: e)
        }
        return fd
    }

    func write(_ fd: Int32) throws {
        var key: UInt32 = 0
        var m = raw
        let rc = withUnsafeBytes(of: &m) { bpf_map_update_elem(fd, &key, $0.baseAddress, UInt64(BPF_ANY)) }
        if rc != 0 { throw DatapathError("update tdm_meta", errno: errno) }
    }

    /// Attached interfaces: ifindex -> TDM_META_IF_* flags.
    var interfaces: [Int32: UInt8] {
        get {
            var out: [Int32: UInt8] = [:]
            var m = raw
            withUnsafeBytes(of: &m.ifindex) { idx in
                withUnsafeBytes(of: &m.if_flags) { fl in
                    for i in 0..<Int(TDM_META_IFACES) {
                        let ifindex = idx.load(fromByteOffset: i * 4, as: UInt32.self)
                        if ifindex != 0 { out[Int32(bitPattern: ifindex)] = fl[i] }
                    }
                }
            }
            return out
        }
        set {
            let sorted = newValue.sorted { $0.key < $1.key }.prefix(Int(TDM_META_IFACES))
            withUnsafeMutableBytes(of: &raw.ifindex) { idx in
                withUnsafeMutableBytes(of: &raw.if_flags) { fl in
                    for i in 0..<Int(TDM_META_IFACES) {
                        let entry = i < sorted.count ? sorted[sorted.startIndex + i] : nil
                        idx.storeBytes(of: UInt32(bitPattern: entry?.key ?? 0), toByteOffset: i * 4, as: UInt32.self)
                        fl[i] = entry?.value ?? 0
                    }
                }
            }
        }
    }

    var resume: GracefulExitRecord? {
        get {
            guard raw.flags & UInt32(TDM_META_F_RESUME) != 0 else { return nil }
            var list: [GracefulExitRecord.Instance] = []
            var m = raw
            withUnsafeBytes(of: &m.instances) { buf in
                let n = min(Int(m.instance_count), Int(TDM_META_INSTANCES))
                for i in 0..<n {
                    let x = buf.loadUnaligned(fromByteOffset: i * MemoryLayout<tdm_meta_instance>.stride, as: tdm_meta_instance.self)
                    list.append(.init(id: x.id, master: x.role == 2, term: x.term))
                }
            }
            return GracefulExitRecord(exitedAtMicros: raw.exited_at_us, incarnation: raw.incarnation, instances: list)
        }
        set {
            guard let r = newValue else {
                raw.flags &= ~UInt32(TDM_META_F_RESUME)
                raw.instance_count = 0
                return
            }
            raw.flags |= UInt32(TDM_META_F_RESUME)
            raw.exited_at_us = r.exitedAtMicros
            raw.incarnation = r.incarnation
            let list = r.instances.prefix(Int(TDM_META_INSTANCES))
            raw.instance_count = UInt32(list.count)
            withUnsafeMutableBytes(of: &raw.instances) { buf in
                for (i, x) in list.enumerated() {
                    var v = tdm_meta_instance()
                    v.id = x.id
                    v.role = x.master ? 2 : 1
                    v.term = x.term
                    buf.storeBytes(of: v, toByteOffset: i * MemoryLayout<tdm_meta_instance>.stride, as: tdm_meta_instance.self)
                }
            }
        }
    }
}

/// What a restart with this build would do with the pins: for checking an upgrade before it.
public struct DatapathLayoutCheck: Sendable, Equatable {
    /// This build's layout fingerprint (with the given table sizes).
    public var fingerprint: UInt64
    public var layoutVersion: UInt32
    /// What is pinned now, if anything.
    public var pinnedFingerprint: UInt64?
    public var pinnedLayoutVersion: UInt32?
    /// What a start would do.
    public var outcome: DatapathAdoption

    /// Opens the object (no load, nothing touched) and reads tdm_meta under `pinDirectory`.
    public static func check(objectPath: String, connectionTableSize: UInt32, eventRingBytes: UInt32,
                             pinDirectory: String) throws -> DatapathLayoutCheck {
        let obj = try Datapath.openObject(objectPath, connectionTableSize: connectionTableSize, eventRingBytes: eventRingBytes)
        defer { bpf_object__close(obj) }
        let fp = tdm_layout_fingerprint(obj)
        let dir = PinDirectory(unchecked: pinDirectory)
        let pinned = PinMeta.open(dir)
        if let fd = pinned?.fd { Glibc.close(fd) }
        let outcome = DatapathAdoption.decide(
            pinnedFingerprint: pinned?.meta.raw.fingerprint, pinnedLayoutVersion: pinned?.meta.raw.layout_version,
            otherPins: !dir.entries().isEmpty, fingerprint: fp, layoutVersion: UInt32(TDM_LAYOUT_VERSION))
        return DatapathLayoutCheck(fingerprint: fp, layoutVersion: UInt32(TDM_LAYOUT_VERSION),
                                   pinnedFingerprint: pinned?.meta.raw.fingerprint,
                                   pinnedLayoutVersion: pinned?.meta.raw.layout_version, outcome: outcome)
    }
}
