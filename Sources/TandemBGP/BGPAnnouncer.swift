import Logging
import TandemCloud
import TandemCore

/// What the node tells the announcer: per VIP, whether a service on it has an endpoint in
/// rotation, and whether its connection table is in sync.
public struct BGPNodeView: Sendable, Equatable {
    public var serving: [IPv4Address: Bool]
    public var inSync: Bool
    public init(serving: [IPv4Address: Bool], inSync: Bool) {
        self.serving = serving
        self.inSync = inSync
    }
}

/// The shell around `AnnouncementCore`: reads the node's view on a short timer (and at once on a
/// takeover, release or drain), hands changed route sets to the speaker, and reports the result
/// back to the core.
public actor BGPAnnouncer {
    public let speaker: BIRDSpeaker
    private var core: AnnouncementCore
    private var view: (@Sendable () async -> BGPNodeView)?
    private var primaryVIPs: Set<IPv4Address> = []
    private var draining = false
    private let logger: Logger
    private var lastError: String?

    public init(speaker: BIRDSpeaker, logger: Logger = Logger(label: "tandem.bgp")) {
        self.speaker = speaker
        let s = speaker.settings
        core = AnnouncementCore(mode: s.mode, primary: s.primary, backup: s.backup, snatAddress: s.snatAddress,
                                peerSNATAddresses: s.peerSNATAddresses)
        self.logger = logger
    }

    /// Where the node's view comes from; until then nothing is announced.
    public func attach(view: @escaping @Sendable () async -> BGPNodeView) {
        self.view = view
    }

    public var isDraining: Bool { draining }
    public var announced: [BGPRoute] { core.announced ?? [] }

    public func setDraining(_ on: Bool) async {
        draining = on
        await tick()
    }

    /// Re-reads the view and brings the speaker in line; called every `period` by `run`.
    public func tick() async {
        guard let view else { return }
        let v = await view()
        let inputs = AnnouncementCore.Inputs(
            vips: v.serving.reduce(into: [:]) { out, e in
                out[e.key] = AnnouncementCore.VIPState(serving: e.value, primary: primaryVIPs.contains(e.key))
            },
            inSync: v.inSync, draining: draining)
        guard case .apply(let routes)? = core.onInputs(inputs, nowNanos: monotonicNanoseconds()) else { return }
        do {
            try await speaker.apply(routes)
            core.onApplied(routes, ok: true, nowNanos: monotonicNanoseconds())
            lastError = nil
            logger.notice("bgp: announcing", metadata: [
                "routes": "\(routes.map { "\($0.vip) med \($0.attributes.med)" }.joined(separator: ", "))",
            ])
        } catch {
            core.onApplied(routes, ok: false, nowNanos: monotonicNanoseconds())
            if lastError != error.message { logger.error("\(error.message)") }
            lastError = error.message
        }
    }

    /// Ticks until the task is cancelled.
    public func run(period: Duration = .milliseconds(200)) async {
        while !Task.isCancelled {
            await tick()
            try? await Task.sleep(for: period)
        }
    }

    /// master-backup: `vips` get (or lose) the primary attributes, and the speaker is told.
    func setPrimary(_ vips: [IPv4Address], _ on: Bool) async {
        if on { primaryVIPs.formUnion(vips) } else { primaryVIPs.subtract(vips) }
        await tick()
    }

    /// Of `vips`: announced with the primary attributes; withheld on purpose (no endpoint in
    /// rotation, or draining); neither yet (a set still with the speaker, or one it refused).
    func primaryStatus(_ vips: [IPv4Address]) async -> (announced: [IPv4Address], withheld: [IPv4Address], pending: [IPv4Address]) {
        let now = Set(core.announced?.filter { $0.attributes == core.primary }.map(\.vip) ?? [])
        let serving = await view?().serving ?? [:]
        var out: ([IPv4Address], [IPv4Address], [IPv4Address]) = ([], [], [])
        for v in vips {
            if now.contains(v) { out.0.append(v) } else if draining || serving[v] != true { out.1.append(v) } else { out.2.append(v) }
        }
        return out
    }
}

/// `cloud: bgp`, the master-backup form: the MASTER announces its instance's VIPs with the primary
/// attributes (LocalPref 5000, MED 10 by default), the BACKUPs with the backup ones, so the routers
/// send the VIP to the MASTER. A takeover returns once BIRD has the primary routes; routers get the
/// UPDATE at once.
public struct BGPCloudProvider: CloudProvider {
    public let name = "bgp"
    let announcer: BGPAnnouncer
    let logger: Logger

    public init(announcer: BGPAnnouncer, logger: Logger = Logger(label: "tandem.cloud.bgp")) {
        self.announcer = announcer
        self.logger = logger
    }

    public func takeover(vips: [IPv4Address], term: UInt64) async throws -> CloudTakeoverResult {
        let start = ContinuousClock.now
        await announcer.setPrimary(vips, true)
        // Up to 5 s for a set another tick had with the speaker, or a retry after a refusal.
        for _ in 0..<250 {
            let s = await announcer.primaryStatus(vips)
            if s.pending.isEmpty {
                var detail = s.announced.isEmpty ? "nothing announced"
                    : "announced \(s.announced.map(\.description).joined(separator: ", ")) with the primary attributes"
                if !s.withheld.isEmpty {
                    detail += "; withheld \(s.withheld.map(\.description).joined(separator: ", ")) (no endpoint in rotation, or draining)"
                }
                return CloudTakeoverResult(provider: name, durationNanos: elapsedNanos(since: start), detail: detail)
            }
            try Task.checkCancellation()
            try? await Task.sleep(for: .milliseconds(20))
            await announcer.tick()
        }
        throw CloudError("bgp: BIRD did not take the primary routes for \(vips.map(\.description).joined(separator: ", ")) within 5 s")
    }

    public func release(vips: [IPv4Address]) async {
        await announcer.setPrimary(vips, false)
    }
}
