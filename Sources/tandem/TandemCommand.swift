import ArgumentParser
import Foundation
import Logging
import TandemAPI
import TandemAPIModels
import TandemServiceSync
import TandemCore
import TandemDatapath
import TandemHA
import TandemNode
import TandemSync
import TandemSealing
import TandemStatus

@main
struct Tandem: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tandem",
        abstract: "Tandem: a self-managed eBPF load balancer.",
        discussion: """
            Tandem is a highly available layer-4 load balancer for public clouds (Oracle Cloud \
            first) and on-premises networks. Each node runs an eBPF datapath in the kernel (TC \
            ingress, optionally XDP) loaded and driven by `tandem node run`; nodes replicate their \
            connection tables to each other, elect a MASTER per HA instance and move the floating \
            IP on failover (l2: address and gratuitous ARP; oci: the private-IP move), so \
            established flows survive. Every other command is a loxicmd-shaped client of a node's \
            REST API (LoxiLB's /netlox/v1 on port 11111, loopback by default).

            FILES: /etc/tandem/config.yaml is the node's configuration (the package installs a \
            commented example of every setting). /usr/lib/tandem/tandem_lb.o is the compiled \
            datapath, found beside the binary (<prefix>/bin/tandem -> <prefix>/lib/tandem/). \
            /var/lib/tandem/state.jsonl keeps API changes across restarts. The systemd unit \
            tandem.service runs `tandem node run --config /etc/tandem/config.yaml`: \
            `systemctl enable --now tandem` starts it, `systemctl reload tandem` re-reads the \
            config (SIGHUP).

            ENVIRONMENT: TANDEM_API is the base URL of the node's API for the client commands \
            (default http://127.0.0.1:11111); TANDEM_TOKEN the API's bearer token; \
            TANDEM_BPF_OBJECT the datapath object `node run` loads without --bpf-object.

            EXAMPLES: `tandem node run --config /etc/tandem/config.yaml`; \
            `tandem create lb 10.0.10.143 --tcp=56002:80 --endpoints=10.0.10.21:1,10.0.10.22:1 \
            --mode=fullnat`; `tandem get lb -o wide`; `tandem get cluster`; \
            `tandem cluster keygen > /etc/tandem/cluster.key`.
            """,
        subcommands: [Node.self, Cluster.self, Create.self, Delete.self, Get.self, SetCommand.self, Cloud.self])
}

struct APIOptions: ParsableArguments {
    @Option(name: .long, help: "Base URL of the node's API.")
    var api: String = ProcessInfo.processInfo.environment["TANDEM_API"] ?? "http://127.0.0.1:11111"

    @Option(name: .long, help: "File holding the node's API token (or set TANDEM_TOKEN).")
    var tokenFile: String?

    func client() throws -> APIClient {
        guard let url = URL(string: api), url.scheme != nil else { throw ValidationError("--api '\(api)' is not a URL") }
        var token = ProcessInfo.processInfo.environment["TANDEM_TOKEN"]
        if let tokenFile {
            guard let data = FileManager.default.contents(atPath: tokenFile) else {
                throw ValidationError("--token-file \(tokenFile) cannot be read")
            }
            token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        }
        return APIClient(baseURL: url, token: token)
    }
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case table, wide, json
}

struct Node: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run a load-balancer node.",
                                                    subcommands: [Run.self, Stop.self, Drain.self, Layout.self])

    struct Layout: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Say whether a restart with this build would adopt the pinned datapath.",
            discussion: """
                Run the new build's binary before an upgrade, in the node's network namespace, with the \
                node's config: it compares this build's map layout (types, sizes, BTF key/value layout, \
                connectionTableSize, eventRingBytes) with what the running daemon pinned. Exit 0: a \
                restart adopts it (hitless); exit 3: a restart would start with an empty datapath, so \
                drain the node first (tandem node stop --release, upgrade, start). Nothing is changed.
                """)
        @Option(name: .long, help: "YAML config file of the node.") var config: String?
        @Option(name: .long, parsing: .upToNextOption, help: "Interfaces (as for node run).") var interface: [String] = []
        @Option(name: .long, help: "The compiled datapath.") var bpfObject: String?
        @Option(name: .long, help: "BPF-filesystem directory for the pins (default /sys/fs/bpf/tandem).") var pinDirectory: String?

        func run() async throws {
            do {
                let cfg = try config.map { try NodeConfig.load(path: $0) } ?? NodeConfig()
                let interfaces = interface.isEmpty ? (cfg.interfaces ?? []) : interface
                guard let first = interfaces.first else { throw ConfigError("no interface given: use --interface or 'interfaces:' in the config") }
                let nodeIP: IPv4Address
                if let t = cfg.nodeIP {
                    guard let a = IPv4Address(t) else { throw ConfigError("nodeIP '\(t)' is not an IPv4 address") }
                    nodeIP = a
                } else if let a = SystemChecks.ipv4Address(of: first) {
                    nodeIP = a
                } else {
                    throw ConfigError("interface \(first) has no IPv4 address here; run in the node's namespace or set nodeIP")
                }
                let dir = NodeRunner.pinDirectory(base: pinDirectory ?? cfg.pinDirectory, interface: first, nodeIP: nodeIP)
                let c = try DatapathLayoutCheck.check(objectPath: bpfObject ?? Run.defaultObjectPath(),
                                                      connectionTableSize: cfg.connectionTableSize ?? 262_144,
                                                      eventRingBytes: try cfg.validatedEventRingBytes(), pinDirectory: dir)
                print("this build:  layout \(String(format: "%016llx", c.fingerprint)) (version \(c.layoutVersion))")
                if let p = c.pinnedFingerprint {
                    print("pinned:      layout \(String(format: "%016llx", p)) (version \(c.pinnedLayoutVersion ?? 0)) in \(dir)")
                } else {
                    print("pinned:      nothing in \(dir)")
                }
                switch c.outcome {
                case .adopted: print("a restart adopts the pinned datapath (hitless)")
                case .fresh: print("nothing to adopt: a start loads a fresh datapath")
                case .refused(let why):
                    print("a restart would NOT adopt it (\(why)): drain first with tandem node stop --release")
                    throw ExitCode(3)
                }
            } catch let e as ConfigError {
                FileHandle.standardError.write(Data("tandem: \(e.message)\n".utf8))
                throw ExitCode(2)
            } catch let e as DatapathError {
                FileHandle.standardError.write(Data("tandem: \(e.message)\n".utf8))
                throw ExitCode(1)
            }
        }
    }

    struct Stop: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Stop the running node (through its API).",
            discussion: """
                Without --release, a node run with --persist-datapath exits for a restart: its datapath \
                stays pinned and forwarding, its peers hold their fire for cluster.restartHoldSeconds, and \
                the next start resumes (as SIGTERM does). With --release it detaches everything, removes \
                the pins and leaves the cluster, so a peer takes over at once (as SIGINT does): use it for \
                a real shutdown or before an upgrade that changes the datapath's layout.
                """)
        @OptionGroup var api: APIOptions
        @Flag(name: .long, help: "Detach the datapath, remove its pins and leave the cluster.") var release = false

        func run() async throws {
            let body = try JSONEncoder().encode(NodeStopEntry(release: release))
            _ = try await api.client().send("POST", APIRoutes.nodeStop, body: body)
            print(release ? "node stopping: datapath released" : "node stopping for a restart")
        }
    }

    struct Drain: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Withdraw the node's BGP announcements and wait until no new connections arrive.",
            discussion: """
                Every VIP's route is withdrawn at once; the routers send new flows to the other nodes \
                while established ones carry on here (and on the peers that replicate them). The \
                command then watches the connections this node's datapath creates and returns once \
                none arrived for --quiet seconds (exit 0), or after --timeout (exit 1). --undo \
                announces again.
                """)
        @OptionGroup var api: APIOptions
        @Flag(name: .long, help: "End a drain: announce the VIPs again.") var undo = false
        @Option(name: .long, help: "Seconds without a new connection that count as drained.") var quiet: Double = 2
        @Option(name: .long, help: "Give up after this many seconds.") var timeout: Double = 60
        @Flag(name: .long, help: "Return once the routes are withdrawn.") var noWait = false

        func run() async throws {
            let client = try api.client()
            let body = try JSONEncoder().encode(NodeDrainEntry(drain: !undo))
            let first = try JSONDecoder().decode(BGPStatus.self, from: try await client.send("POST", APIRoutes.nodeDrain, body: body))
            if undo {
                print("drain ended: announcing \(first.announced.isEmpty ? "(nothing yet)" : first.announced.joined(separator: ", "))")
                return
            }
            print("drain: every VIP withdrawn" + (first.announced.isEmpty ? ""
                : "; still announced: \(first.announced.joined(separator: ", ")) (this node's fullnat source address: its established flows' replies)"))
            if noWait { return }
            let start = ContinuousClock.now
            var last = first.newConnections
            var lastChange = start
            var seen: UInt64 = 0
            while true {
                try await Task.sleep(for: .milliseconds(200))
                let s = try JSONDecoder().decode(BGPStatus.self, from: try await client.send("GET", APIRoutes.bgp))
                if s.newConnections != last {
                    seen += s.newConnections &- last
                    last = s.newConnections
                    lastChange = ContinuousClock.now
                }
                let quietFor = ContinuousClock.now - lastChange
                if quietFor >= .milliseconds(Int(quiet * 1000)) {
                    let after = lastChange - start
                    let secs = Double(after.components.seconds) + Double(after.components.attoseconds) / 1e18
                    print(seen == 0 ? String(format: "drained: no new connection after the withdrawal (%.1f s watched)", quiet)
                          : String(format: "drained: %llu new connection(s) after the withdrawal, the last %.1f s in; none for %.1f s since",
                                   seen, secs, quiet))
                    return
                }
                if ContinuousClock.now - start >= .milliseconds(Int(timeout * 1000)) {
                    print("drain: new connections still arrive after \(timeout) s (\(seen) since the withdrawal); routes stay withdrawn")
                    throw ExitCode(1)
                }
            }
        }
    }

    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Load the datapath and serve until SIGTERM/SIGINT.",
            discussion: """
                Checks everything it can before touching the kernel, then loads the datapath (the \
                kernel's verifier checks it), writes the config file's services and the state \
                file's API changes into its maps, attaches it to the interfaces, and starts the \
                REST API and, with cluster peers, replication, membership gossip, the election \
                and the floating IP's provider. Flags override the config file.

                SIGNALS: SIGTERM or SIGINT: leave the cluster (peers elect at once), detach every \
                program and qdisc attached, exit 0. SIGHUP: re-read the --config file and apply \
                its services, added, changed and removed, as API writes are applied (kept in the \
                state file; in a cluster that shares services, sent to every node); any other \
                changed setting is logged as needing a restart and keeps its running value. A \
                file that does not parse or validate, or names an endpoint this node has no route \
                to, is refused with a logged reason and changes nothing.

                EXIT STATUS: 0 after SIGTERM or SIGINT; 2 when the node refuses to start: not \
                root, an interface missing, the BPF object missing, a bad config or state file \
                (the one-line reason names the field or line); 1 on any other failure.

                PRIVILEGES: runs as root (user id 0), using the capabilities CAP_BPF and \
                CAP_PERFMON (load the programs and maps), CAP_NET_ADMIN (TC and XDP attach, the \
                floating IP's address), CAP_NET_RAW (ping probes, gratuitous ARP) and \
                CAP_SYS_NICE (the gossip thread's SCHED_RR); the systemd unit grants these and no \
                others.

                CONNTRACK-ONLY NODES: with datapath: false in the config the node loads no BPF \
                program and serves no services: it replicates the kernel's conntrack table \
                (conntrack:) to its peers and holds the floating IPs its HA instances list (NAT \
                gateways, stateful firewalls; docs/conntrack.md).

                FILES: --config is usually /etc/tandem/config.yaml (a commented example of every \
                setting); the datapath is /usr/lib/tandem/tandem_lb.o beside an installed binary, \
                bpf/obj/tandem_lb.o in a source tree, or $TANDEM_BPF_OBJECT; the state file \
                defaults to /var/lib/tandem/state.jsonl.
                """)

        @Option(name: .long, help: "YAML config file.") var config: String?
        @Option(name: .long, parsing: .upToNextOption, help: "Interfaces to attach to (repeatable).")
        var interface: [String] = []
        @Option(name: .long, help: "The compiled datapath.") var bpfObject: String?
        @Option(name: .long, help: "API listen address.") var apiAddress: String?
        @Option(name: .long, help: "API port.") var apiPort: Int?
        @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error.") var logLevel: String = "info"
        @Option(name: .long, help: "Peers' sync addresses, PEER[,PEER...] (enables replication).") var cluster: String?
        @Option(name: .long, help: "Cluster key file (mode 0600), from `tandem cluster keygen`.") var clusterKey: String?
        @Option(name: .long, help: "This node's sync address (default: its node IP).") var syncAddress: String?
        @Option(name: .long, help: "UDP/TCP sync port, the same on every node (default 11112).") var syncPort: Int?
        @Option(name: .long, help: "This node's index in the cluster, 0-based (cuts the SNAT port space into per-node slices).")
        var `self`: Int?
        @Option(name: .long, help: "How the floating IP moves: l2 (address + gratuitous ARP), oci (private-IP move), bgp (the MASTER announces it preferred; needs the bgp section), none.")
        var cloud: String?
        @Option(name: .long, help: "UDP gossip port (membership and election), the same on every node (default 11113).")
        var gossipPort: Int?
        @Option(name: .long, help: "Election priority of this node, 1-255 (default 100).") var priority: Int?
        @Option(name: .long, help: "OCI: config file (default ~/.oci/config or $OCI_CONFIG_FILE).") var ociConfig: String?
        @Option(name: .long, help: "OCI: config profile (default DEFAULT).") var profile: String?
        @Option(name: .long, help: "OCI: Core API base URL (default from the region).") var apiEndpoint: String?
        @Option(name: .long, help: "OCI: instance metadata base URL (default http://169.254.169.254).") var imdsEndpoint: String?
        @Flag(name: .long, help: "Also attach the XDP fast path (native XDP) for established flows; see docs/datapath.md.")
        var xdp = false
        @Option(name: .long, help: "State file that keeps API changes across restarts (default /var/lib/tandem/state.jsonl).")
        var stateFile: String?
        @Flag(name: .long, help: "Keep API changes in memory only (no state file).") var noState = false
        @Flag(name: .long, help: "Start from the config file alone, leaving a damaged state file untouched until the next API change.")
        var ignoreState = false
        @Option(name: .long, help: "API bearer token file (mode 0600); every route but GET /netlox/v1 then needs it.")
        var apiTokenFile: String?
        @Option(name: .long, help: "Serve the API over HTTPS with this PEM certificate chain (with --api-tls-key).")
        var apiTlsCert: String?
        @Option(name: .long, help: "PEM private key of --api-tls-cert.") var apiTlsKey: String?
        @Flag(name: .long, help: "On SIGTERM leave the datapath pinned and forwarding and tell peers this is a restart (hitless restart; SIGINT or `tandem node stop --release` detach everything).")
        var persistDatapath = false
        @Option(name: .long, help: "BPF-filesystem directory for the pinned datapath (default /sys/fs/bpf/tandem).")
        var pinDirectory: String?

        func run() async throws {
            var logger = Logger(label: "tandem")
            logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
            do {
                var cfg = try config.map { try NodeConfig.load(path: $0) } ?? NodeConfig()
                let fromFile = config.map { ConfigFileSource(path: $0, loaded: cfg) }
                // Flags override the file's cluster settings.
                if cluster != nil || clusterKey != nil || syncAddress != nil || syncPort != nil || self.`self` != nil
                    || cloud != nil || gossipPort != nil || priority != nil {
                    var c = cfg.cluster ?? NodeConfig.Cluster()
                    if let cluster { c.peers = cluster.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
                    if let clusterKey { c.keyFile = clusterKey }
                    if let syncAddress { c.syncAddress = syncAddress }
                    if let syncPort { c.syncPort = syncPort }
                    if let n = self.`self` { c.nodeIndex = n }
                    if let cloud { c.cloud = cloud }
                    if let gossipPort { c.gossipPort = gossipPort }
                    if let priority { c.priority = priority }
                    cfg.cluster = c
                }
                if ociConfig != nil || profile != nil || apiEndpoint != nil || imdsEndpoint != nil {
                    var o = cfg.oci ?? NodeConfig.OCI()
                    if let ociConfig { o.config = ociConfig }
                    if let profile { o.profile = profile }
                    if let apiEndpoint { o.apiEndpoint = apiEndpoint }
                    if let imdsEndpoint { o.imdsEndpoint = imdsEndpoint }
                    cfg.oci = o
                }
                if xdp { cfg.xdp = true }
                if let pinDirectory { cfg.pinDirectory = pinDirectory }
                let cert = apiTlsCert ?? cfg.api?.tlsCertificate, key = apiTlsKey ?? cfg.api?.tlsKey
                guard (cert == nil) == (key == nil) else {
                    throw ConfigError("api: a TLS certificate needs its key and a key its certificate (--api-tls-cert with --api-tls-key)")
                }
                let opts = NodeOptions(
                    interfaces: interface.isEmpty ? (cfg.interfaces ?? []) : interface,
                    objectPath: bpfObject ?? Self.defaultObjectPath(),
                    config: cfg,
                    apiAddress: apiAddress ?? cfg.api?.address ?? "127.0.0.1",
                    apiPort: apiPort ?? cfg.api?.port ?? 11111,
                    statePath: noState ? nil : (stateFile ?? cfg.stateFile ?? StateStore.defaultPath),
                    ignoreState: ignoreState,
                    tokenFile: apiTokenFile ?? cfg.api?.tokenFile,
                    tls: cert.flatMap { c in key.map { APITLSFiles(certificatePath: c, keyPath: $0) } },
                    persistDatapath: persistDatapath || cfg.persistDatapath == true,
                    configFile: fromFile)
                try await NodeRunner.run(opts, logger: logger)
            } catch let e as ConfigError {
                FileHandle.standardError.write(Data("tandem: \(e.message)\n".utf8))
                throw ExitCode(2)
            } catch {
                FileHandle.standardError.write(Data("tandem: \(error)\n".utf8))
                throw ExitCode(1)
            }
        }

        /// $TANDEM_BPF_OBJECT, the installed object beside the binary (/usr/bin -> /usr/lib/tandem),
        /// or bpf/obj/tandem_lb.o of the source tree (InstallPaths).
        static func defaultObjectPath() -> String {
            InstallPaths.bpfObject(executable: InstallPaths.currentExecutable,
                                   environment: ProcessInfo.processInfo.environment,
                                   exists: { FileManager.default.fileExists(atPath: $0) })
        }
    }
}

struct Cluster: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Cluster set-up.", subcommands: [Keygen.self])

    struct Keygen: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a new random cluster key (64 hex characters). Store it with mode 0600 on every node.")
        func run() async throws {
            print(ClusterKey.generate().hexString)
        }
    }
}

struct Create: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create objects.", subcommands: [LB.self])

    struct LB: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "lb", abstract: "Create a load-balancer service.")
        @Argument(help: "External (service) IP.") var externalIP: String
        @Option(name: .long, help: "TCP PORT:TARGETPORT[,...]") var tcp: String?
        @Option(name: .long, help: "UDP PORT:TARGETPORT[,...]") var udp: String?
        @Option(name: .long, help: "Endpoints IP[:WEIGHT][,...]") var endpoints: String
        @Option(name: .long, help: "default | onearm | fullnat") var mode: String = "default"
        @Option(name: .long, help: "rr | priority | persist | hash | lc") var sel: String = "rr"
        @Option(name: .long, help: "Service name.") var name: String = ""
        @Option(name: .long, help: "Fullnat source IP (default: the external IP).") var snatIP: String?
        @Option(name: .long, help: "Persistence timeout in seconds.") var persistTimeout: Int?
        @Flag(name: .long, help: "Reset (TCP RST) a down endpoint's established connections instead of letting them run to their timeout.")
        var resetOnDown = false
        @Flag(name: .long, help: "Probe the endpoints (default probe: tcp connect for tcp services, udp for udp).")
        var monitor = false
        @Option(name: .long, help: "Probe, e.g. http:/healthz:200, https:/ready:200:insecure, tcp, tcp:8080, udp:53:PAYLOAD:EXPECT, ping, none (implies --monitor; docs/health.md).")
        var probe: String?
        @OptionGroup var apiOptions: APIOptions

        func run() async throws {
            guard tcp != nil || udp != nil else { throw ValidationError("give --tcp or --udp") }
            let client = try apiOptions.client()
            var requests: [LoadBalancerEntry] = []
            for (proto, spec) in [("tcp", tcp), ("udp", udp)] {
                guard let spec else { continue }
                for (port, target) in try CLIArguments.portPairs(spec) {
                    let eps = try CLIArguments.endpoints(endpoints, targetPort: target)
                    var args = ServiceArguments(externalIP: externalIP, port: port, protocol_: proto,
                                                sel: .name(sel), mode: .name(mode), name: name,
                                                snatIP: snatIP, persistTimeout: persistTimeout)
                    if resetOnDown { args.resetOnEndpointDown = true }
                    if monitor || probe != nil { args.monitor = true }
                    args.probe = probe
                    requests.append(LoadBalancerEntry(serviceArguments: args, endpoints: eps))
                }
            }
            for r in requests {
                try await client.createLoadBalancer(r)
            }
            print("Success: \(requests.count) service(s) created")
        }
    }
}

struct Delete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Delete objects.", subcommands: [LB.self])

    struct LB: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "lb", abstract: "Delete a load-balancer service.")
        @Argument var externalIP: String
        @Option(name: .long, help: "TCP PORT[,...]") var tcp: String?
        @Option(name: .long, help: "UDP PORT[,...]") var udp: String?
        @OptionGroup var apiOptions: APIOptions

        func run() async throws {
            guard let ip = IPv4Address(externalIP) else { throw ValidationError("'\(externalIP)' is not an IPv4 address") }
            let client = try apiOptions.client()
            var n = 0
            for (proto, spec) in [(L4Protocol.tcp, tcp), (.udp, udp)] {
                guard let spec else { continue }
                for (port, _) in try CLIArguments.portPairs(spec) {
                    let path = APIRoutes.deletePath(ServiceKey(vip: ip, port: UInt16(port), proto: proto))
                    _ = try await client.send("DELETE", path)
                    n += 1
                }
            }
            guard n > 0 else { throw ValidationError("give --tcp or --udp") }
            print("Success: \(n) service(s) deleted")
        }
    }
}

struct Get: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show objects.", subcommands: [LB.self, EP.self, CT.self, Sync.self, ClusterState.self, BGP.self])

    struct LB: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "lb", abstract: "Show load-balancer services.")
        @Option(name: .shortAndLong, help: "table | wide | json") var output: OutputFormat = .table
        @OptionGroup var apiOptions: APIOptions

        func run() async throws {
            let client = try apiOptions.client()
            let data: Data
            data = try await client.send("GET", APIRoutes.loadBalancerAll)
            if output == .json { print(String(decoding: data, as: UTF8.self)); return }
            let list = try JSONDecoder().decode(LoadBalancerList.self, from: data)
            print(TableRenderer.loadBalancers(list.lbAttr, wide: output == .wide))
        }
    }

    struct EP: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ep", abstract: "Show endpoint hosts, their probes and states.",
                                                        aliases: ["endpoint", "endpoints"])
        @Option(name: .shortAndLong, help: "table | wide | json") var output: OutputFormat = .table
        @OptionGroup var apiOptions: APIOptions

        func run() async throws {
            let client = try apiOptions.client()
            let data = try await client.send("GET", APIRoutes.endpointAll)
            if output == .json { print(String(decoding: data, as: UTF8.self)); return }
            let list = try JSONDecoder().decode(EndpointHostList.self, from: data)
            print(TableRenderer.endpointHosts(list.Attr))
        }
    }

    struct CT: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ct", abstract: "Show tracked connections.")
        @Option(name: .shortAndLong, help: "table | wide | json") var output: OutputFormat = .table
        @OptionGroup var apiOptions: APIOptions

        func run() async throws {
            let client = try apiOptions.client()
            let data: Data
            data = try await client.send("GET", APIRoutes.conntrackAll)
            if output == .json { print(String(decoding: data, as: UTF8.self)); return }
            let list = try JSONDecoder().decode(ConntrackList.self, from: data)
            print(TableRenderer.conntrack(list.ctAttr))
        }
    }

    struct ClusterState: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "cluster",
                                                        abstract: "Show members, roles, terms and sync state.")
        @Option(name: .shortAndLong, help: "table | wide | json") var output: OutputFormat = .table
        @OptionGroup var apiOptions: APIOptions

        func run() async throws {
            let client = try apiOptions.client()
            // Service sharing runs without elections too (active-active), so either part may be absent.
            let services = try? await client.send("GET", APIRoutes.clusterServices)
            let data: Data
            do { data = try await client.send("GET", APIRoutes.cluster) } catch {
                guard output != .json, let services,
                      let s = try? JSONDecoder().decode(ServiceSyncStatus.self, from: services) else { throw error }
                print(TableRenderer.serviceSync(s, wide: output == .wide))
                return
            }
            if output == .json { print(String(decoding: data, as: UTF8.self)); return }
            let status = try JSONDecoder().decode(HAStatus.self, from: data)
            var text = TableRenderer.cluster(status, wide: output == .wide)
            if let services, let s = try? JSONDecoder().decode(ServiceSyncStatus.self, from: services) {
                text += "\n\n" + TableRenderer.serviceSync(s, wide: output == .wide)
            }
            print(text)
        }
    }

    struct BGP: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "bgp",
                                                        abstract: "Show the BGP speaker: sessions and announced VIPs.")
        @Option(name: .shortAndLong, help: "table | wide | json") var output: OutputFormat = .table
        @OptionGroup var apiOptions: APIOptions

        func run() async throws {
            let data = try await apiOptions.client().send("GET", APIRoutes.bgp)
            if output == .json { print(String(decoding: data, as: UTF8.self)); return }
            let s = try JSONDecoder().decode(BGPStatus.self, from: data)
            var lines = ["mode \(s.mode)  speaker \(s.running ? "running (pid \(s.pid ?? 0))" : "not running")  restarts \(s.restarts)  draining \(s.draining)",
                         "announced: \(s.announced.isEmpty ? "nothing" : s.announced.joined(separator: ", "))", "",
                         "NEIGHBOR         ASN         STATE  INFO"]
            for n in s.sessions {
                lines.append("\(n.neighbor.padding(toLength: 16, withPad: " ", startingAt: 0)) \(String(n.asn).padding(toLength: 11, withPad: " ", startingAt: 0)) \(n.state.padding(toLength: 6, withPad: " ", startingAt: 0)) \(n.info)")
            }
            print(lines.joined(separator: "\n"))
        }
    }

    struct Sync: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "sync",
                                                        abstract: "Show connection-table replication: peers and counters.")
        @Option(name: .shortAndLong, help: "table | wide | json") var output: OutputFormat = .table
        @Flag(name: .long, help: "The kernel conntrack table's replication (conntrack: in the config) instead of the load balancer's.")
        var conntrack = false
        @OptionGroup var apiOptions: APIOptions

        func run() async throws {
            let client = try apiOptions.client()
            let data = try await client.send("GET", conntrack ? APIRoutes.syncConntrack : APIRoutes.sync)
            if output == .json { print(String(decoding: data, as: UTF8.self)); return }
            let status = try JSONDecoder().decode(ReplicationStatus.self, from: data)
            print(TableRenderer.sync(status, wide: output == .wide))
        }
    }
}


/// `tandem set cistate --instance llb-inst0 --state MASTER`: the cistate API from the command line.
struct SetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "set", abstract: "Change node state through the API.",
                                                    subcommands: [CIState.self])

    struct CIState: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "cistate",
            abstract: "Set an HA instance's role from outside (as kube-loxilb does): MASTER claims a new term, BACKUP steps down.")
        @Option(name: .long, help: "HA instance.") var instance: String = HAInstanceConfig.defaultName
        @Option(name: .long, help: "MASTER or BACKUP.") var state: String
        @OptionGroup var apiOptions: APIOptions

        func run() async throws {
            let client = try apiOptions.client()
            let body = try JSONEncoder().encode(CIStateEntry(instance: instance, state: state, vip: "0.0.0.0"))
            _ = try await client.send("POST", APIRoutes.ciState, body: body)
            print("cistate: \(instance) -> \(state.uppercased())")
        }
    }
}
