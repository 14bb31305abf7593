import Testing
@testable import TandemNode

@Suite struct InstallPathsTests {
    @Test func theDatapathObjectIsFoundInstalledInTheSourceTreeOrByEnvironment() {
        let installed: Set<String> = ["/usr/lib/tandem/tandem_lb.o", "/opt/x/lib/tandem/tandem_lb.o", "/src/t/bpf/obj/tandem_lb.o"]
        func find(_ exe: String, _ env: [String: String] = [:]) -> String {
            InstallPaths.bpfObject(executable: exe, environment: env, exists: { installed.contains($0) })
        }
        #expect(find("/usr/bin/tandem") == "/usr/lib/tandem/tandem_lb.o")
        #expect(find("/opt/x/bin/tandem") == "/opt/x/lib/tandem/tandem_lb.o")
        #expect(find("/src/t/.build/debug/tandem") == "/src/t/bpf/obj/tandem_lb.o")
        #expect(find("/src/t/.build/x86_64-unknown-linux-gnu/release/tandem") == "/src/t/bpf/obj/tandem_lb.o")
        #expect(find("/usr/bin/tandem", ["TANDEM_BPF_OBJECT": "/tmp/o.o"]) == "/tmp/o.o")
        #expect(find("/elsewhere/tandem") == "/usr/lib/tandem/tandem_lb.o", "the fallback the start-up check names")
    }
}
