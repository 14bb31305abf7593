import Foundation
import Logging
import TandemBGP
import TandemCloud
import TandemCore
import TandemDatapath
import TandemOCI
import TandemHA
import TandemKernelSync
import TandemReplication
import TandemSync
import TandemSealing

/// Builds the HA shell and its cloud provider from the node's settings.
enum HAWiring {
    static func makeShell(_ h: NodeConfig.HASettings, replication r: NodeConfig.ReplicationSettings, key: ClusterKey,
                          provider: any CloudProvider, datapath: Datapath? = nil, directory: ServiceDirectory? = nil,
                          replicationShell: FlowReplicationShell? = nil, kernelSync: KernelTableSync? = nil,
                          resume: GracefulExitRecord? = nil, logger: Logger) -> HAShell {
        var config = HAShellConfig(selfID: r.selfAddress.value, bindAddress: r.selfAddress, port: h.gossipPort,
                                   peers: r.peers.map { HAPeer(id: $0.value, address: $0) }, key: key,
                                   instances: h.instances)
        config.swim.restartHoldNanos = h.restartHoldNanos
        // A conntrack-only node (no datapath) has no services: its instances list their VIPs.
        let hooks = HAHooks(serviceVIPs: { directory?.vips() ?? [] },
                            setActiveVIPs: { vips in
                                try datapath?.setActiveVIPs(vips)
                                // Before a release: the kernel's cleanup of the departing address
                                // must not reach the new MASTER as deletes (KernelTableSync).
                                kernelSync?.setPublishing(!vips.isEmpty)
                            },
                            replicationInSync: { (replicationShell?.inSync ?? true) && (kernelSync?.inSync ?? true) },
                            prepareTakeover: { _, _ in
                                guard let kernelSync else { return }
                                kernelSync.setPublishing(true)
                                // A blocking netlink commit: on a thread of its own, not the cooperative pool.
                                await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                                    Thread.detachNewThread {
                                        kernelSync.prepareTakeover()
                                        done.resume()
                                    }
                                }
                            })
        return HAShell(config: config, hooks: hooks, provider: provider, logger: logger, resume: resume)
    }
}

extension HAWiring {
    /// The cloud provider the config asks for. OCI's config and key are checked here, so a broken
    /// setup stops the node before it touches the kernel.
    static func makeProvider(_ h: NodeConfig.HASettings, config: NodeConfig, bgp: BGPAnnouncer? = nil,
                             logger: Logger) async throws(ConfigError) -> any CloudProvider
    {
        let kind: CloudKind
        do { kind = try CloudKind.parse(h.cloud) } catch { throw ConfigError("cluster: \(error.message)") }
        if kind == .bgp {
            guard let bgp else { throw ConfigError("cluster: cloud bgp needs a bgp section (docs/bgp.md)") }
            return BGPCloudProvider(announcer: bgp, logger: logger)
        }
        let o = config.oci
        var options = OCIProviderOptions(configPath: o?.config, profile: o?.profile, apiEndpoint: o?.apiEndpoint,
                                         vnicId: o?.vnicId)
        if let imds = o?.imdsEndpoint { options.imdsEndpoint = imds }
        let provider: any CloudProvider
        do {
            provider = try CloudProviders.make(kind: kind, interface: h.l2Interface, oci: options, logger: logger)
        } catch {
            throw ConfigError("cluster: \(error.message)")
        }
        if let oci = provider as? OCICloudProvider {
            do { try await oci.prepare() } catch { throw ConfigError("cluster: cloud oci: \(error.message)") }
        }
        return provider
    }
}
