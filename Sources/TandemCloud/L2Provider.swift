import Foundation
import Logging
import TandemCore
import TandemOCI
#if canImport(Glibc)
import Glibc
import Synchronization
#endif

/// On-premises layer 2: the floating IPs live as /32 addresses on one Ethernet interface of the
/// MASTER, announced by gratuitous ARP so that neighbours (clients, the router) send to its MAC.
///
/// - `takeover` adds each VIP/32 through netlink (RTM_NEWADDR, create-or-replace, acknowledged;
///   an address already there is fine), then sends gratuitous ARP (request and reply form) for
///   every VIP: the first round before it returns, the rest of `garpSchedule` in a background task,
///   because a single announcement gets lost.
/// - `release` cancels pending announcements for the VIPs and deletes the addresses (RTM_DELADDR;
///   an address that is not there is fine), so this node stops answering for them at once.
///
/// Everything happens in the network namespace the process runs in. Needs CAP_NET_ADMIN (addresses)
/// and CAP_NET_RAW (the packet socket).
public final class L2Provider: CloudProvider {
    public let name = "l2"
    public let interface: String
    /// When to announce, as offsets from the start of the takeover. The default doubles the gap each
    /// time: 0, 50 ms, 150 ms, 350 ms, 750 ms, 1.5 s, 3 s (seven rounds).
    public let garpSchedule: [Duration]
    let logger: Logger

    public static let defaultGARPSchedule: [Duration] = [
        .zero, .milliseconds(50), .milliseconds(150), .milliseconds(350), .milliseconds(750),
        .milliseconds(1500), .seconds(3),
    ]

    struct Announcements {
        var nextID: UInt64 = 0
        /// VIP -> the announcement batch that currently announces it.
        var owner: [IPv4Address: UInt64] = [:]
        var tasks: [UInt64: Task<Void, Never>] = [:]
    }
    let state = Mutex(Announcements())

    public init(interface: String, garpSchedule: [Duration] = L2Provider.defaultGARPSchedule,
                logger: Logger = Logger(label: "tandem.cloud.l2")) {
        self.interface = interface
        self.garpSchedule = garpSchedule
        self.logger = logger
    }

    /// The interface as this process sees it now (index, MAC, up/running). Throws if it is missing
    /// or not Ethernet.
    public func link() throws(CloudError) -> LinkInfo { try LinkSystem.link(interface) }

    public func takeover(vips: [IPv4Address], term: UInt64) async throws -> CloudTakeoverResult {
        try takeoverNow(vips: vips, term: term)
    }

    /// Synchronous body of `takeover` (the netlink calls and the first ARP round are short and
    /// non-blocking in practice; the remaining rounds run in a task).
    func takeoverNow(vips: [IPv4Address], term: UInt64) throws(CloudError) -> CloudTakeoverResult {
        let start = ContinuousClock.now
        let vips = Self.unique(vips)
        guard !vips.isEmpty else {
            return CloudTakeoverResult(provider: name, durationNanos: elapsedNanos(since: start), detail: "no VIPs to take over")
        }
        for vip in vips where vip.isUnspecified || vip.isMulticastOrBroadcast || vip.isLoopback {
            throw CloudError("\(vip) can't be a floating IP (unspecified, loopback, multicast or broadcast)")
        }
        let link = try LinkSystem.link(interface)
        guard link.isUp else {
            throw CloudError("interface \(interface) is down; bring it up (ip link set \(interface) up) before taking over \(NoneProvider.list(vips))")
        }
        for vip in vips {
            let rc = LinkSystem.changeAddress(.add, vip: vip, index: link.index)
            guard rc == 0 || rc == EEXIST else {
                throw CloudError("cannot add \(vip)/32 to \(interface): \(LinkSystem.errorText(rc))\(Self.hint(rc))")
            }
        }

        // Announce: the first round now, the rest of the schedule in the background.
        let offsets = garpSchedule.filter { $0 > .zero }.sorted()
        let id = state.withLock { s -> UInt64 in
            s.nextID += 1
            for vip in vips { s.owner[vip] = s.nextID }
            return s.nextID
        }
        cancelOrphans()
        let sent: Int
        do {
            sent = try GratuitousARP.announce(vips, link: link)
        } catch {
            state.withLock { s in for vip in vips where s.owner[vip] == id { s.owner[vip] = nil } }
            throw CloudError("added \(NoneProvider.list(vips)) to \(interface), but \(error.message)")
        }
        if !offsets.isEmpty {
            let logger = self.logger
            // Created under the lock so that the task's own removal at its end can't come first.
            state.withLock { s in
                s.tasks[id] = Task { [weak self] in
                    for offset in offsets {
                        do { try await Task.sleep(until: start + offset, clock: .continuous) } catch { break }
                        guard let self else { return }
                        let mine = self.state.withLock { s in vips.filter { s.owner[$0] == id } }
                        if mine.isEmpty { break }
                        do { _ = try GratuitousARP.announce(mine, link: link) } catch {
                            logger.warning("gratuitous ARP repeat failed", metadata: ["error": "\(error)"])
                        }
                    }
                    self?.state.withLock { s in _ = s.tasks.removeValue(forKey: id) }
                }
            }
        }
        let total = offsets.isEmpty ? "" : ", \(offsets.count) more round(s) within \(Self.format(offsets.last ?? .zero))"
        let detail = "\(NoneProvider.list(vips)) on \(interface) (\(link.mac)); gratuitous ARP sent (\(sent) frames)\(total)"
        let result = CloudTakeoverResult(provider: name, durationNanos: elapsedNanos(since: start), detail: detail)
        logger.notice("floating IPs taken over", metadata: ["term": "\(term)", "detail": "\(detail)",
                                                            "ms": "\(String(format: "%.2f", result.durationMilliseconds))"])
        return result
    }

    public func release(vips: [IPv4Address]) async {
        do {
            let outcome = try removeAddresses(vips)
            logger.notice("floating IPs released", metadata: ["interface": "\(interface)",
                                                              "removed": "\(outcome.removed)", "absent": "\(outcome.absent)"])
        } catch {
            logger.error("releasing floating IPs", metadata: ["interface": "\(interface)", "error": "\(error)"])
        }
    }

    /// Stops announcing `vips` and deletes them from the interface. Tries every VIP; throws if the
    /// interface is missing or the kernel refused any deletion (other than "not there").
    @discardableResult
    public func removeAddresses(_ vips: [IPv4Address]) throws(CloudError) -> (removed: [IPv4Address], absent: [IPv4Address]) {
        let vips = Self.unique(vips)
        state.withLock { s in for vip in vips { s.owner[vip] = nil } }
        cancelOrphans()
        guard !vips.isEmpty else { return ([], []) }
        let index = if_nametoindex(interface)
        guard index != 0 else {
            throw CloudError("interface \(interface) does not exist in this network namespace (so it holds none of \(NoneProvider.list(vips)))")
        }
        var removed: [IPv4Address] = []
        var absent: [IPv4Address] = []
        var failures: [String] = []
        for vip in vips {
            let rc = LinkSystem.changeAddress(.delete, vip: vip, index: Int32(bitPattern: index))
            switch rc {
            case 0: removed.append(vip)
            case EADDRNOTAVAIL, ENOENT, ESRCH: absent.append(vip)
            default: failures.append("\(vip): \(LinkSystem.errorText(rc))\(Self.hint(rc))")
            }
        }
        guard failures.isEmpty else {
            throw CloudError("cannot remove from \(interface): \(failures.joined(separator: "; "))")
        }
        return (removed, absent)
    }

    /// Waits until every scheduled announcement has been sent (or cancelled).
    public func waitForAnnouncements() async {
        let tasks = state.withLock { Array($0.tasks.values) }
        for task in tasks { await task.value }
    }

    /// Cancels announcement tasks none of whose VIPs they still own.
    func cancelOrphans() {
        let orphans = state.withLock { s -> [Task<Void, Never>] in
            let live = Set(s.owner.values)
            let dead = s.tasks.keys.filter { !live.contains($0) }
            return dead.compactMap { s.tasks.removeValue(forKey: $0) }
        }
        for task in orphans { task.cancel() }
    }

    deinit {
        state.withLock { s in for task in s.tasks.values { task.cancel() } }
    }

    static func unique(_ vips: [IPv4Address]) -> [IPv4Address] {
        var seen = Set<IPv4Address>()
        return vips.filter { seen.insert($0).inserted }
    }

    static func hint(_ code: Int32) -> String {
        code == EPERM || code == EACCES ? " (needs root or CAP_NET_ADMIN)" : ""
    }

    static func format(_ d: Duration) -> String {
        let (s, atto) = d.components
        let ms = Double(s) * 1000 + Double(atto) / 1e15
        return ms >= 1000 ? String(format: "%.1f s", ms / 1000) : String(format: "%.0f ms", ms)
    }
}
