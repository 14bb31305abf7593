import CLibBPF
import CTandemShim
import Glibc
import TandemCore

/// Errors from libbpf and the kernel, with the call that failed and the errno text.
public struct DatapathError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public init(_ call: String, errno code: Int32) {
        message = "\(call): \(String(cString: strerror(abs(code)))) (errno \(abs(code)))"
    }
    public var description: String { message }
}

/// A BPF map reached by its file descriptor. Only the descriptor is shared; the owning
/// bpf_object stays with `Datapath`.
public struct BPFMap: Sendable {
    public let name: String
    public let fd: Int32
    public let keySize: Int
    public let valueSize: Int

    /// Writes `value` under `key`; both are plain C structs or byte buffers of the map's sizes.
    public func update<K, V>(_ key: K, _ value: V, flags: UInt64 = UInt64(BPF_ANY)) throws {
        var k = key
        var v = value
        let rc = withUnsafeBytes(of: &k) { kp in
            withUnsafeBytes(of: &v) { vp in bpf_map_update_elem(fd, kp.baseAddress, vp.baseAddress, flags) }
        }
        if rc != 0 { throw DatapathError("update \(name)", errno: errno) }
    }

    public func updateRaw<K>(_ key: K, bytes: [UInt8]) throws {
        guard bytes.count == valueSize else {
            throw DatapathError("update \(name): value is \(bytes.count) bytes, map wants \(valueSize)")
        }
        var k = key
        let rc = withUnsafeBytes(of: &k) { kp in
            bytes.withUnsafeBytes { vp in bpf_map_update_elem(fd, kp.baseAddress, vp.baseAddress, UInt64(BPF_ANY)) }
        }
        if rc != 0 { throw DatapathError("update \(name)", errno: errno) }
    }

    public func lookup<K, V>(_ key: K, as: V.Type) -> V? {
        var k = key
        let v = UnsafeMutableRawPointer.allocate(byteCount: max(valueSize, MemoryLayout<V>.size),
                                                 alignment: MemoryLayout<V>.alignment)
        defer { v.deallocate() }
        let rc = withUnsafeBytes(of: &k) { kp in bpf_map_lookup_elem(fd, kp.baseAddress, v) }
        guard rc == 0 else { return nil }
        return v.loadUnaligned(as: V.self)
    }

    /// Per-CPU maps return one value per possible CPU.
    public func lookupPerCPU<K, V>(_ key: K, as: V.Type) -> [V] {
        let cpus = Int(libbpf_num_possible_cpus())
        guard cpus > 0 else { return [] }
        // Per-CPU values are laid out at 8-byte-rounded strides.
        let stride = (valueSize + 7) & ~7
        var k = key
        let buf = UnsafeMutableRawPointer.allocate(byteCount: stride * cpus, alignment: 8)
        defer { buf.deallocate() }
        let rc = withUnsafeBytes(of: &k) { kp in bpf_map_lookup_elem(fd, kp.baseAddress, buf) }
        guard rc == 0 else { return [] }
        return (0..<cpus).map { buf.loadUnaligned(fromByteOffset: $0 * stride, as: V.self) }
    }

    /// The value under `key` as bytes (for values too large for a Swift struct, such as a Maglev table).
    public func lookupRaw<K>(_ key: K) -> [UInt8]? {
        var k = key
        var out = [UInt8](repeating: 0, count: valueSize)
        let rc = withUnsafeBytes(of: &k) { kp in out.withUnsafeMutableBytes { bpf_map_lookup_elem(fd, kp.baseAddress, $0.baseAddress) } }
        return rc == 0 ? out : nil
    }

    @discardableResult
    public func delete<K>(_ key: K) -> Bool {
        var k = key
        return withUnsafeBytes(of: &k) { kp in bpf_map_delete_elem(fd, kp.baseAddress) } == 0
    }

    /// Every key, by walking get_next_key. Entries added or removed during the walk may be
    /// missed or seen twice, which the periodic reconciliation tolerates.
    public func keys<K>(as: K.Type, limit: Int = .max) -> [K] {
        var out: [K] = []
        let cur = UnsafeMutableRawPointer.allocate(byteCount: keySize, alignment: 8)
        let next = UnsafeMutableRawPointer.allocate(byteCount: keySize, alignment: 8)
        defer {
            cur.deallocate()
            next.deallocate()
        }
        var first = true
        while out.count < limit {
            let rc = bpf_map_get_next_key(fd, first ? nil : cur, next)
            if rc != 0 { break }
            out.append(next.loadUnaligned(as: K.self))
            cur.copyMemory(from: next, byteCount: keySize)
            first = false
        }
        return out
    }

    /// Every (key, value) pair currently in the map: batched reads (BPF_MAP_LOOKUP_BATCH, a few
    /// syscalls per thousands of entries), falling back to a key walk where batching is refused.
    public func entries<K, V>(key: K.Type, value: V.Type, chunk: Int = 4096) -> [(K, V)] {
        var out: [(K, V)] = []
        let batched = forEachBatch(chunk: chunk) { keys, values, count in
            for i in 0..<count {
                out.append((keys.loadUnaligned(fromByteOffset: i * keySize, as: K.self),
                            values.loadUnaligned(fromByteOffset: i * valueSize, as: V.self)))
            }
        }
        if batched { return out }
        // EINVAL (no batch support) or ENOSPC (a bucket larger than the chunk): walk keys.
        return keys(as: K.self).compactMap { k in lookup(k, as: V.self).map { (k, $0) } }
    }

    /// Reads the map a chunk at a time (BPF_MAP_LOOKUP_BATCH) and hands each chunk's raw keys and
    /// values to `body`, so a caller can walk a big table without copying all of it at once, and
    /// the kernel is left between chunks. False when the kernel refused batching part way (the
    /// chunks already delivered stand).
    @discardableResult
    public func forEachBatch(chunk: Int = 4096,
                             _ body: (_ keys: UnsafeRawPointer, _ values: UnsafeRawPointer, _ count: Int) -> Void) -> Bool {
        let keysBuf = UnsafeMutableRawPointer.allocate(byteCount: chunk * keySize, alignment: 8)
        let valuesBuf = UnsafeMutableRawPointer.allocate(byteCount: chunk * valueSize, alignment: 8)
        // For hash maps the batch cursor is a bucket index; size it generously.
        let cursorIn = UnsafeMutableRawPointer.allocate(byteCount: max(keySize, 8), alignment: 8)
        let cursorOut = UnsafeMutableRawPointer.allocate(byteCount: max(keySize, 8), alignment: 8)
        defer {
            keysBuf.deallocate()
            valuesBuf.deallocate()
            cursorIn.deallocate()
            cursorOut.deallocate()
        }
        var first = true
        while true {
            var count = UInt32(chunk)
            let rc = bpf_map_lookup_batch(fd, first ? nil : cursorIn, cursorOut, keysBuf, valuesBuf, &count, nil)
            let err = errno
            if count > 0 { body(keysBuf, valuesBuf, Int(count)) }
            if rc != 0 { return err == ENOENT }
            cursorIn.copyMemory(from: cursorOut, byteCount: max(keySize, 8))
            first = false
        }
    }
}
