import Foundation

/// Where an installed Tandem keeps its files (the Debian package's layout, `packaging/`).
public enum InstallPaths {
    public static let config = "/etc/tandem/config.yaml"
    public static let bpfObject = "/usr/lib/tandem/tandem_lb.o"
    /// The object's place relative to the binary's directory: /usr/bin -> /usr/lib/tandem, and
    /// the same under /usr/local or any other prefix.
    public static let bpfObjectBesideBinary = "../lib/tandem/tandem_lb.o"

    /// The datapath object `tandem node run` loads without --bpf-object: $TANDEM_BPF_OBJECT; the
    /// installed layout beside the binary (`<prefix>/bin/tandem` -> `<prefix>/lib/tandem/`);
    /// bpf/obj/tandem_lb.o of a source tree the binary was built in (.build/debug/tandem, up to
    /// five levels up); else /usr/lib/tandem/tandem_lb.o, which the start-up check then names.
    public static func bpfObject(executable: String, environment: [String: String],
                                 exists: (String) -> Bool) -> String {
        if let env = environment["TANDEM_BPF_OBJECT"], !env.isEmpty { return env }
        let exe = URL(fileURLWithPath: executable).resolvingSymlinksInPath()
        let bin = exe.deletingLastPathComponent()
        let installed = bin.appendingPathComponent(bpfObjectBesideBinary).standardizedFileURL.path
        if exists(installed) { return installed }
        var dir = bin
        for _ in 0..<5 {
            let candidate = dir.appendingPathComponent("bpf/obj/tandem_lb.o").path
            if exists(candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return bpfObject
    }

    /// This process's executable: /proc/self/exe (argv[0] is a bare name when found on PATH).
    public static var currentExecutable: String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }
}
