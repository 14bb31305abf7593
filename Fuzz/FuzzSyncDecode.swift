// libFuzzer target for the sync protocol's decoders of untrusted bytes (header and every payload
// type). Built and run by scripts/fuzz.sh; the input layout is documented on SyncDecodeFuzzing.run.
import TandemSyncWire

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSyncDecode(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data, size > 0 else { return 0 }
    SyncDecodeFuzzing.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
