#!/usr/bin/env python3
"""Checks proto/vectors with an implementation independent of the Swift code: Python's hmac and
hashlib for HKDF-SHA256, the `cryptography` package for ChaCha20-Poly1305, and the hash functions
of SPEC.md §10.1 and the endpointVerdicts layout of §14.5 written out again. Optional (the Swift tests are the gate); needs
python3-cryptography.  Usage: python3 proto/vectors/verify.py"""
import glob, hashlib, hmac, json, os, struct, sys

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = bytes(range(32))
M = (1 << 64) - 1


def hkdf(ikm, salt, info):
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()  # one block: L = 32


def mix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    return z ^ (z >> 31)


def ip(s):
    a = [int(x) for x in s.split(".")]
    return a[0] << 24 | a[1] << 16 | a[2] << 8 | a[3]


def flow_hash(k):
    a = ip(k["saddr"]) << 32 | ip(k["daddr"])
    b = k["sport"] << 24 | k["dport"] << 8 | k["proto"]
    return mix(mix((a + 0x9E3779B97F4A7C15) & M) ^ b)


def ip_text(v):
    return ".".join(str((v >> s) & 0xFF) for s in (24, 16, 8, 0))


def decode_endpoint_verdicts(b):
    """endpointVerdicts (17), SPEC.md §14.5, decoded from its own description; raises ValueError
    on anything a receiver must refuse."""
    if len(b) < 14:
        raise ValueError("shorter than the fixed part")
    generation, flags, part, nsvc, nhost = struct.unpack(">QBBHH", b[:14])
    if generation == 0 or flags & ~1 or part >= 16 or (flags & 1 and part == 15):
        raise ValueError("bad fixed part")
    if nsvc * 8 + nhost * 18 > len(b) - 14:
        raise ValueError("counts exceed the bytes")
    off, services, prev = 14, [], None
    for _ in range(nsvc):
        if off + 8 > len(b):
            raise ValueError("service runs past the payload")
        vip, port, proto, n = struct.unpack(">IHBB", b[off:off + 8])
        off += 8
        key = (vip, port, proto)
        if port == 0 or proto not in (6, 17) or n > 64 or (prev is not None and key <= prev):
            raise ValueError("bad service")
        prev, down, prev_ep = key, [], None
        for _ in range(n):
            if off + 16 > len(b):
                raise ValueError("endpoint runs past the payload")
            addr, eport, reasons, reserved, since = struct.unpack(">IHBBQ", b[off:off + 16])
            off += 16
            if eport == 0 or reasons == 0 or reasons & ~3 or reserved or since == 0 or \
                    (prev_ep is not None and (addr, eport) <= prev_ep):
                raise ValueError("bad endpoint")
            prev_ep = (addr, eport)
            down.append({"address": ip_text(addr), "port": eport, "reasons": reasons, "since": str(since)})
        services.append({"vip": ip_text(vip), "port": port, "proto": proto, "down": down})
    if len(b) - off != nhost * 18:
        raise ValueError("host count disagrees with the bytes")
    hosts, prev_host = [], None
    for _ in range(nhost):
        host, state, reserved, version, origin = struct.unpack(">IBBQI", b[off:off + 18])
        off += 18
        if state not in (1, 2, 3) or reserved or version == 0 or origin == 0 or \
                (prev_host is not None and host <= prev_host):
            raise ValueError("bad host")
        prev_host = host
        hosts.append({"host": ip_text(host), "state": state, "version": str(version), "origin": origin})
    return {"generation": str(generation), "part": part, "more": bool(flags & 1), "services": services, "hosts": hosts}


def kernel_l4(k):
    if "icmpID" in k:
        return k["icmpID"], (k["icmpType"] << 8) | k["icmpCode"]
    return k.get("sport", 0), k.get("dport", 0)


def kernel_key_hash(k):
    a, b = kernel_l4(k)
    x = (ip(k["saddr"]) << 32) | ip(k["daddr"])
    y = (a << 48) | (b << 32) | (k["proto"] << 16) | k["zone"]
    return mix(mix((x + 0x9E3779B97F4A7C15) & M) ^ y)


def decode_kernel_entries(type_, b):
    """SPEC.md §15.3, read independently of the Swift codec; raises ValueError on anything a
    receiver must refuse."""
    limit, fixed = (23, 10) if type_ == 18 else (1091, 6)
    if len(b) < fixed:
        raise ValueError("short")
    if type_ == 18:
        first, count = struct.unpack(">QH", b[:10])
        if first == 0 or (count and first + count - 1 > M):
            raise ValueError("first sequence")
        out = {"firstSequence": str(first)}
    else:
        rid, count = struct.unpack(">IH", b[:6])
        out = {"requestID": rid}
    if count > limit or len(b) != fixed + 60 * count:
        raise ValueError("count")
    entries = []
    for i in range(count):
        e = b[fixed + 60 * i: fixed + 60 * (i + 1)]
        op, proto, present, state, fo, fr, wo, wr, zone, kind, res, status, mark, timeout = struct.unpack(">BBBBBBBBHBBIII", e[:24])
        if op not in (1, 2) or proto == 0 or present & ~0x3F or res:
            raise ValueError("op, proto, present or reserved")
        tcp = bool(present & 1)
        if (tcp and proto != 6) or (not tcp and present & 0x3C):
            raise ValueError("tcp")
        for bit, v in ((1, state), (4, fo), (8, fr), (16, wo), (32, wr), (2, timeout)):
            if not present & bit and v:
                raise ValueError("absent field set")
        if wo > 14 or wr > 14 or kind > 2 or (kind == 2) != (proto == 1):
            raise ValueError("window scale or l4 kind")
        tuples = []
        for off in (24, 36):
            s, d, a, c = struct.unpack(">IIHH", e[off:off + 12])
            t = {"saddr": ip_text(s), "daddr": ip_text(d)}
            if kind == 1:
                t.update(sport=a, dport=c)
            elif kind == 2:
                t.update(icmpID=a, icmpType=c >> 8, icmpCode=c & 0xFF)
            elif a or c:
                raise ValueError("l4 fields with kind none")
            tuples.append(t)
        version, origin = struct.unpack(">QI", e[48:60])
        if origin == 0:
            raise ValueError("origin 0")
        entry = {"op": op, "proto": proto, "zone": zone, "status": status, "mark": mark,
                 "original": tuples[0], "reply": tuples[1], "version": str(version), "origin": origin}
        if present & 2:
            entry["timeout"] = timeout
        if tcp:
            t = {"state": state}
            for bit, name, v in ((4, "flagsOriginal", fo), (8, "flagsReply", fr),
                                 (16, "windowScaleOriginal", wo), (32, "windowScaleReply", wr)):
                if present & bit:
                    t[name] = v
            entry["tcp"] = t
        entries.append(entry)
    out["entries"] = entries
    return out


def main():
    h = json.load(open(os.path.join(HERE, "hashes.json")))
    for m in h["mix"]:
        assert "0x%016x" % mix(int(m["in"], 16)) == m["out"], m
    for f in h["flows"]:
        fh = flow_hash(f["key"])
        assert "0x%016x" % fh == f["flowHash"], f
        assert (fh >> 57, (fh >> 50) & 0x7F, fh >> 50) == (f["bucket"], f["subBucket"], f["leaf"]), f
    for e in h["entries"]:
        eh = mix((mix(flow_hash(e["key"]) ^ int(e["version"])) + e["op"]) & M)
        assert "0x%016x" % eh == e["entryHash"], e
    for sv in h["services"]:
        fnv = 0xCBF29CE484222325
        for b in sv["spec"].encode():
            fnv = ((fnv ^ b) * 0x100000001B3) & M
        assert "0x%016x" % fnv == sv["fnv1a64"], sv
        k = (ip(sv["vip"]) << 24) | (sv["port"] << 8) | sv["proto"]
        assert "0x%016x" % mix(mix((k + 0x9E3779B97F4A7C15) & M) ^ fnv) == sv["serviceHash"], sv

    s = json.load(open(os.path.join(HERE, "sealing.json")))
    info = struct.pack(">IQ", s["sender"], int(s["epoch"]))
    assert info.hex() == s["info"]
    assert hkdf(KEY, s["salt"].encode(), info).hex() == s["subkey"]

    count = verdicts = refused = kernel = kernel_refused = 0
    for path in sorted(glob.glob(os.path.join(HERE, "valid", "*.hex"))):
        frame = bytes.fromhex("".join(open(path).read().split()))
        d = json.load(open(path[:-4] + ".json"))
        magic, version, type_, flags, reserved, length, sender, epoch, seq = struct.unpack(">HBBBBHIQQ", frame[:28])
        hd = d["header"]
        assert (magic, version, type_, flags, reserved) == (0x5453, 1, hd["type"], hd["flags"], 0), path
        assert (length, sender, str(epoch), str(seq)) == (hd["length"], hd["sender"], hd["epoch"], hd["sequence"]), path
        assert len(frame) == 28 + length, path
        subkey = hkdf(KEY, b"tandem-sync-v1", struct.pack(">IQ", sender, epoch))
        # datagram 0, stream 1, gossip 2, config 3, kernel datagram 4, kernel stream 5
        channel = 4 + (flags & 1) if flags & 8 else 3 if flags & 4 else 2 if flags & 2 else flags & 1
        nonce = struct.pack(">IQ", channel, seq)
        plain = ChaCha20Poly1305(subkey).decrypt(nonce, frame[28:], frame[:28])
        assert plain.hex() == d["payload"], path
        if type_ == 17:
            assert decode_endpoint_verdicts(plain) == d["message"], path
            verdicts += 1
        if type_ in (18, 19):
            assert decode_kernel_entries(type_, plain) == d["message"], path
            kernel += 1
        count += 1
    for path in sorted(glob.glob(os.path.join(HERE, "invalid", "*.json"))):
        d = json.load(open(path))
        if d.get("type") in (18, 19):
            try:
                decode_kernel_entries(d["type"], bytes.fromhex(d["payload"]))
            except ValueError:
                kernel_refused += 1
                continue
            raise AssertionError(f"{path}: decodes, but a receiver must refuse it")
        if d.get("type") == 17:
            try:
                decode_endpoint_verdicts(bytes.fromhex(d["payload"]))
            except ValueError:
                refused += 1
                continue
            raise AssertionError(f"{path}: decodes, but a receiver must refuse it")
    for e in h["kernelEntries"]:
        kh = kernel_key_hash(e["key"])
        assert "0x%016x" % kh == e["kernelKeyHash"] and kh >> 50 == e["leaf"], e
        eh = mix((mix(kh ^ int(e["version"])) + e["op"]) & M)
        assert "0x%016x" % eh == e["entryHash"], e
    assert verdicts >= 3 and refused >= 10, (verdicts, refused)
    assert kernel >= 3 and kernel_refused >= 8, (kernel, kernel_refused)
    print(f"ok: hashes, subkey, and {count} sealed vectors verified; "
          f"{verdicts} endpointVerdicts decoded, {refused} malformed ones refused; "
          f"{kernel} kernel entry messages decoded, {kernel_refused} malformed ones refused")


if __name__ == "__main__":
    sys.exit(main())
