// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "Tandem",
    // Linux only (Debian 12 or later, kernel 6.1+ with BTF): the datapath needs libbpf, BPF and
    // netlink; SwiftPM has no way to declare a Linux minimum, so no Apple platform is named either.
    products: [
        .executable(name: "tandem", targets: ["tandem"]),
        .executable(name: "tandem-echo", targets: ["tandem-echo"]),
        // Fake OCI (IMDS + Core API) for tests and the test bed.
        .executable(name: "fake-oci", targets: ["fake-oci"]),
        .library(name: "TandemOCI", targets: ["TandemOCI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.80.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.5.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.0"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.0"),
    ],
    targets: [
        // libbpf from Debian's libbpf-dev, found through pkg-config.
        .systemLibrary(name: "CLibBPF", path: "Sources/CLibBPF", pkgConfig: "libbpf",
                       providers: [.apt(["libbpf-dev"])]),
        // The map layouts shared with bpf/ plus thin C wrappers for libbpf calls that take
        // LIBBPF_OPTS macros, which Swift cannot import.
        .target(name: "CTandemShim", dependencies: ["CLibBPF"], path: "Sources/CTandemShim"),
        // Pure model: addresses, services, selection, NAT, connection entries. No I/O.
        .target(name: "TandemCore", path: "Sources/TandemCore"),
        // Loads, attaches and drives the BPF datapath through libbpf.
        .target(name: "TandemDatapath",
                dependencies: ["TandemCore", "CTandemShim", "CLibBPF",
                               .product(name: "Logging", package: "swift-log")],
                path: "Sources/TandemDatapath"),
        // The sync protocol's wire format: message values and their byte codec. No I/O, no crypto,
        // so the libFuzzer target (Fuzz/) builds it alone.
        .target(name: "TandemSyncWire", dependencies: ["TandemCore"], path: "Sources/TandemSyncWire"),
        // What a node reports of its cluster, replication and service sharing (`GET /netlox/v1/cluster`,
        // `tandem get cluster`, the metrics): plain Codable values, no I/O, so the API models,
        // the CLI tables and the metrics need none of the shells.
        .target(name: "TandemStatus", path: "Sources/TandemStatus"),
        // Sealing of every sync message: the cluster key, per-sender subkeys, ChaCha20-Poly1305
        // (swift-crypto) and the replay window. Used by the replication, gossip and config shells.
        .target(name: "TandemSealing",
                dependencies: ["TandemCore", "TandemSyncWire",
                               .product(name: "Crypto", package: "swift-crypto")],
                path: "Sources/TandemSealing"),
        // Replication core: the replica table with its digests, delta sender and receiver state
        // machines, bulk transfers and anti-entropy. Pure: clock and randomness are injected,
        // methods return actions.
        // Generic over the entry kind (flows, kernel entries); cross-module optimisation lets the
        // shells specialise it for each (unspecialised, the core costs 2-3x per entry).
        .target(name: "TandemSync", dependencies: ["TandemCore", "TandemSyncWire", "TandemStatus"], path: "Sources/TandemSync",
                swiftSettings: [.unsafeFlags(["-cross-module-optimization"])]),
        // What the SwiftNIO shells share: the UDP socket that binds itself again when NIO closes it.
        .target(name: "TandemShellSupport",
                dependencies: ["TandemCore",
                               .product(name: "NIOCore", package: "swift-nio"),
                               .product(name: "Logging", package: "swift-log")],
                path: "Sources/TandemShellSupport"),
        // The replication shell: one SwiftNIO event loop runs the core, UDP for deltas, TCP for
        // bulk transfers, and hands learned flows to the datapath.
        .target(name: "TandemReplication",
                dependencies: ["TandemCore", "TandemSync", "TandemSyncWire", "TandemSealing", "TandemStatus", "TandemShellSupport",
                               .product(name: "NIOCore", package: "swift-nio"),
                               .product(name: "NIOPosix", package: "swift-nio"),
                               .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                               .product(name: "Logging", package: "swift-log")],
                path: "Sources/TandemReplication",
                // Generic over the entry kind like the core: specialised where the node creates it.
                swiftSettings: [.unsafeFlags(["-cross-module-optimization"])]),
        // Service table sharing: the newest-write-wins merge of the cluster's services (pure core)
        // and its SwiftNIO shell on the config channel (proto/SPEC.md §14).
        .target(name: "TandemServiceSync",
                dependencies: ["TandemCore", "TandemSync", "TandemSyncWire", "TandemSealing", "TandemStatus", "TandemReplication",
                               .product(name: "NIOCore", package: "swift-nio"),
                               .product(name: "NIOPosix", package: "swift-nio"),
                               .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                               .product(name: "Logging", package: "swift-log")],
                path: "Sources/TandemServiceSync"),
        // SWIM membership: failure detection with suspicion and incarnations, piggybacked
        // dissemination. Pure: time and randomness injected, methods return actions.
        .target(name: "TandemMembership", dependencies: ["TandemCore", "TandemSyncWire"],
                path: "Sources/TandemMembership"),
        // MASTER/BACKUP/FAULT election per HA instance with terms (fencing epochs), sticky
        // mastership and sync-gated eligibility. Pure.
        .target(name: "TandemElection", dependencies: ["TandemCore", "TandemSyncWire"],
                path: "Sources/TandemElection"),
        // libmnl from Debian (libmnl-dev): netlink messages to add and remove the floating IP.
        .systemLibrary(name: "CLibMnl", path: "Sources/CLibMnl", pkgConfig: "libmnl",
                       providers: [.apt(["libmnl-dev"])]),
        // Cloud providers that move the floating IP: none, l2 (address + repeated gratuitous ARP),
        // oci (TandemOCI's atomic private-IP move).
        .target(name: "TandemCloud",
                dependencies: ["TandemCore", "CLibMnl", "TandemOCI", .product(name: "Logging", package: "swift-log")],
                path: "Sources/TandemCloud"),
        // BGP through the node's own BIRD 2 (Debian bird2): config generation, the control-socket
        // protocol, which VIPs to announce (a pure core), and the `cloud: bgp` provider.
        .target(name: "TandemBGP",
                dependencies: ["TandemCore", "TandemCloud", "TandemStatus", .product(name: "Logging", package: "swift-log")],
                path: "Sources/TandemBGP"),
        // The HA shell: SWIM and elections on one SwiftNIO loop (gossip over UDP, sealed with the
        // cluster key), carrying out role changes through the datapath gate and a cloud provider.
        .target(name: "TandemHA",
                dependencies: ["TandemCore", "TandemSealing", "TandemStatus", "TandemSyncWire", "TandemMembership", "TandemElection",
                               "TandemCloud", "TandemShellSupport",
                               .product(name: "NIOCore", package: "swift-nio"),
                               .product(name: "NIOPosix", package: "swift-nio"),
                               .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                               .product(name: "Logging", package: "swift-log"),
                               .product(name: "Metrics", package: "swift-metrics")],
                path: "Sources/TandemHA"),
        // Prometheus metrics: swift-metrics bootstrapped onto one swift-prometheus registry, and the
        // scrape that copies the node's JSON-shaped state (datapath, services, replication, cluster)
        // into it before rendering.
        .target(name: "TandemMetrics",
                dependencies: ["TandemStatus",
                               .product(name: "Metrics", package: "swift-metrics"),
                               .product(name: "Prometheus", package: "swift-prometheus"),
                               .product(name: "NIOConcurrencyHelpers", package: "swift-nio")],
                path: "Sources/TandemMetrics"),
        // Endpoint health probes: a pure core (probe specs, per-endpoint hysteresis, jittered
        // scheduler) and a SwiftNIO shell that runs tcp/udp/http/https/ping probes concurrently.
        .target(name: "TandemHealth",
                dependencies: ["TandemCore",
                               .product(name: "NIOCore", package: "swift-nio"),
                               .product(name: "NIOPosix", package: "swift-nio"),
                               .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                               .product(name: "NIOSSL", package: "swift-nio-ssl"),
                               .product(name: "Logging", package: "swift-log")],
                path: "Sources/TandemHealth"),
        // Health probe measurement driver for bench/health-probes.sh: probes one endpoint per kind
        // and prints every transition as a JSON line.
        .executableTarget(name: "tandem-healthbench",
                          dependencies: ["TandemHealth",
                                         .product(name: "NIOPosix", package: "swift-nio"),
                                         .product(name: "Logging", package: "swift-log")],
                          path: "Sources/tandem-healthbench"),
        // The LoxiLB-shaped REST API's wire models, the CLI's tables and its HTTP client: Codable
        // values and Foundation only, so the CLI needs none of the server or the shells.
        .target(name: "TandemAPIModels", dependencies: ["TandemCore", "TandemStatus"], path: "Sources/TandemAPIModels"),
        // The Hummingbird server for that API (handlers, token auth, TLS, the OpenAPI document).
        .target(name: "TandemAPI",
                dependencies: ["TandemCore", "TandemStatus", "TandemAPIModels", "TandemSync", "TandemHA", "TandemMetrics", "TandemServiceSync",
                               .product(name: "Hummingbird", package: "hummingbird"),
                               .product(name: "HummingbirdTLS", package: "hummingbird"),
                               .product(name: "HummingbirdCore", package: "hummingbird"),
                               .product(name: "NIOSSL", package: "swift-nio-ssl"),
                               .product(name: "NIOCore", package: "swift-nio"),
                               .product(name: "Logging", package: "swift-log")],
                path: "Sources/TandemAPI"),
        // The node daemon: config file, datapath, API, lifecycle.
        .target(name: "TandemNode",
                dependencies: ["TandemCore", "TandemDatapath", "TandemAPI", "TandemAPIModels", "TandemSync", "TandemSyncWire", "TandemSealing", "TandemStatus", "TandemReplication",
                               "TandemServiceSync", "TandemHealth", "TandemHA", "TandemCloud", "TandemOCI", "TandemElection", "TandemMetrics",
                               "TandemConntrack", "TandemKernelSync", "TandemBGP",
                               .product(name: "NIOPosix", package: "swift-nio"),
                               .product(name: "Yams", package: "Yams"),
                               .product(name: "Logging", package: "swift-log"),
                               .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
                path: "Sources/TandemNode"),
        .executableTarget(name: "tandem",
                          dependencies: ["TandemCore", "TandemAPI", "TandemAPIModels", "TandemNode", "TandemServiceSync", "TandemHA", "TandemCloud", "TandemOCI",
                                         "TandemSealing", "TandemStatus",
                                         "TandemDatapath",
                                         .product(name: "ArgumentParser", package: "swift-argument-parser"),
                                         .product(name: "Logging", package: "swift-log")],
                          path: "Sources/tandem"),
        // What both replication benchmark drivers share: the result line, clocks, addresses.
        .target(name: "TandemBenchSupport", path: "Sources/TandemBenchSupport"),
        // Replication benchmark driver: injects flows into a node's loaded datapath, watches a peer's map.
        .executableTarget(name: "tandem-syncbench",
                          dependencies: ["CTandemShim", "CLibBPF", "TandemBenchSupport", "TandemCore", "TandemSync", "TandemSyncWire",
                                         "TandemSealing",
                                         .product(name: "ArgumentParser", package: "swift-argument-parser")],
                          path: "Sources/tandem-syncbench"),
        // libnetfilter_conntrack from Debian (libnetfilter-conntrack-dev), for the conntrackd comparison.
        .systemLibrary(name: "CNetfilterConntrack", path: "Sources/CNetfilterConntrack",
                       pkgConfig: "libnetfilter_conntrack", providers: [.apt(["libnetfilter-conntrack-dev"])]),
        // Kernel conntrack as a change source (issue 16): the KernelConnection value and its
        // mapping from libnetfilter_conntrack attributes, config filters, a pure core (events,
        // overrun resync, periodic reconcile; returns actions) and the ctnetlink reader thread.
        .target(name: "TandemConntrack",
                dependencies: ["TandemCore", "CNetfilterConntrack", "CLibMnl",
                               .product(name: "Logging", package: "swift-log")],
                path: "Sources/TandemConntrack"),
        // The same measurement for conntrackd (the alternative): creates kernel conntrack entries in
        // one namespace and times their arrival in another's table.
        // Kernel conntrack sync on a node: the source, a replication shell for kernel entries
        // (their own channels and port) and the sink, wired together.
        .target(name: "TandemKernelSync",
                dependencies: ["TandemCore", "TandemConntrack", "TandemReplication", "TandemSync", "TandemSyncWire",
                               "TandemSealing", .product(name: "Logging", package: "swift-log")],
                path: "Sources/TandemKernelSync"),
        .executableTarget(name: "tandem-ctbench",
                          dependencies: ["CNetfilterConntrack", "TandemBenchSupport",
                                         .product(name: "ArgumentParser", package: "swift-argument-parser")],
                          path: "Sources/tandem-ctbench"),
        // TCP/UDP echo server used as an endpoint in the test bed and tests.
        .executableTarget(name: "tandem-echo",
                          dependencies: [.product(name: "NIOCore", package: "swift-nio"),
                                         .product(name: "NIOPosix", package: "swift-nio"),
                                         .product(name: "ArgumentParser", package: "swift-argument-parser")],
                          path: "Sources/tandem-echo"),
        // One test target per module (the privileged suite apart). TandemTestSupport holds what
        // several share: the golden vectors' fixed inputs and a raw loopback TCP client.
        .target(name: "TandemTestSupport", dependencies: ["TandemCore", "TandemSyncWire", "TandemSealing"],
                path: "Tests/TandemTestSupport"),
        .testTarget(name: "TandemCoreTests", dependencies: ["TandemCore"], path: "Tests/TandemCoreTests"),
        .testTarget(name: "TandemBGPTests", dependencies: ["TandemBGP", "TandemCore"], path: "Tests/TandemBGPTests"),
        .testTarget(name: "TandemAPITests",
                    dependencies: ["TandemAPI", "TandemAPIModels", "TandemCore", "TandemStatus", "TandemServiceSync",
                                   .product(name: "Hummingbird", package: "hummingbird"),
                                   .product(name: "NIOEmbedded", package: "swift-nio")],
                    path: "Tests/TandemAPITests"),
        .testTarget(name: "TandemNodeTests",
                    dependencies: ["TandemNode", "TandemAPI", "TandemAPIModels", "TandemCore", "TandemHA", "TandemDatapath", "TandemConntrack", "TandemBGP"],
                    path: "Tests/TandemNodeTests"),
        .testTarget(name: "TandemMetricsTests",
                    dependencies: ["TandemMetrics", "TandemAPI", "TandemAPIModels", "TandemStatus", "TandemCore", "TandemHA", "TandemSync",
                                   .product(name: "Metrics", package: "swift-metrics"),
                                   .product(name: "Hummingbird", package: "hummingbird"),
                                   .product(name: "NIOEmbedded", package: "swift-nio")],
                    path: "Tests/TandemMetricsTests"),
        .testTarget(name: "TandemStatusTests", dependencies: ["TandemStatus"], path: "Tests/TandemStatusTests"),
        .testTarget(name: "TandemSyncWireTests",
                    dependencies: ["TandemSyncWire", "TandemSealing", "TandemSync", "TandemCore", "TandemTestSupport"],
                    path: "Tests/TandemSyncWireTests"),
        .testTarget(name: "TandemSealingTests",
                    dependencies: ["TandemSealing", "TandemSyncWire", "TandemCore", "TandemTestSupport"],
                    path: "Tests/TandemSealingTests"),
        .testTarget(name: "TandemSyncTests", dependencies: ["TandemSync", "TandemSyncWire", "TandemStatus", "TandemCore", "TandemTestSupport"],
                    path: "Tests/TandemSyncTests"),
        .testTarget(name: "TandemReplicationTests",
                    dependencies: ["TandemReplication", "TandemSync", "TandemSealing", "TandemCore", "TandemTestSupport", "TandemShellSupport",
                                   .product(name: "Logging", package: "swift-log")],
                    path: "Tests/TandemReplicationTests"),
        .testTarget(name: "TandemServiceSyncTests",
                    dependencies: ["TandemServiceSync", "TandemSync", "TandemSyncWire", "TandemSealing", "TandemStatus", "TandemCore",
                                   "TandemTestSupport",
                                   .product(name: "Logging", package: "swift-log")],
                    path: "Tests/TandemServiceSyncTests"),
        .testTarget(name: "TandemHATests",
                    dependencies: ["TandemHA", "TandemCloud", "TandemSync", "TandemSealing", "TandemCore",
                                   .product(name: "Logging", package: "swift-log"),
                                   .product(name: "NIOConcurrencyHelpers", package: "swift-nio")],
                    path: "Tests/TandemHATests"),
        .testTarget(name: "TandemMembershipTests", dependencies: ["TandemMembership", "TandemSyncWire", "TandemCore"],
                    path: "Tests/TandemMembershipTests"),
        .testTarget(name: "TandemElectionTests", dependencies: ["TandemElection", "TandemSyncWire", "TandemCore"],
                    path: "Tests/TandemElectionTests"),
        .testTarget(name: "TandemPrivilegedTests",
                    dependencies: ["TandemCore", "TandemStatus", "TandemDatapath", "TandemAPI", "TandemAPIModels", "TandemSync", "TandemCloud", "TandemHealth",
                                   "TandemConntrack", "CNetfilterConntrack", "TandemKernelSync", "TandemSealing", "TandemSyncWire",
                                   .product(name: "NIOPosix", package: "swift-nio"),
                                   .product(name: "Logging", package: "swift-log")],
                    path: "Tests/TandemPrivilegedTests"),
        .testTarget(name: "TandemConntrackTests", dependencies: ["TandemConntrack", "CNetfilterConntrack", "TandemCore"],
                    path: "Tests/TandemConntrackTests"),
        .testTarget(name: "TandemShellSupportTests",
                    dependencies: ["TandemShellSupport",
                                   .product(name: "NIOCore", package: "swift-nio"),
                                   .product(name: "NIOPosix", package: "swift-nio"),
                                   .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                                   .product(name: "Logging", package: "swift-log")],
                    path: "Tests/TandemShellSupportTests"),
        .testTarget(name: "TandemHealthTests", dependencies: ["TandemHealth", "TandemCore"], path: "Tests/TandemHealthTests"),
        // OCI provider. OpenSSL's libcrypto (Debian libssl-dev, via pkg-config) loads every API-key
        // PEM form (PKCS#1, PKCS#8, both encrypted forms) and signs with keys of any size.
        .systemLibrary(name: "CTandemOpenSSL", path: "Sources/CTandemOpenSSL", pkgConfig: "libcrypto",
                       providers: [.apt(["libssl-dev"])]),
        // OCI config/keys, request signing, IMDS discovery, the takeover state machine and its HTTP shell.
        .target(name: "TandemOCI",
                dependencies: ["CTandemOpenSSL", "TandemCore", .product(name: "Logging", package: "swift-log")],
                path: "Sources/TandemOCI"),
        // The fake OCI server as a library, so tests can run it in-process on loopback.
        .target(name: "FakeOCI",
                dependencies: ["TandemOCI",
                               .product(name: "NIOCore", package: "swift-nio"),
                               .product(name: "NIOPosix", package: "swift-nio"),
                               .product(name: "NIOHTTP1", package: "swift-nio"),
                               .product(name: "Logging", package: "swift-log")],
                path: "Sources/FakeOCI"),
        .executableTarget(name: "fake-oci",
                          dependencies: ["FakeOCI", "TandemOCI",
                                         .product(name: "ArgumentParser", package: "swift-argument-parser")],
                          path: "Sources/fake-oci"),
        .testTarget(name: "TandemOCITests", dependencies: ["TandemOCI", "FakeOCI"],
                    path: "Tests/TandemOCITests"),
    ],
    swiftLanguageModes: [.v6]
)
