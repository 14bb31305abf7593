import TandemCore

extension Datapath {
    /// Rewrites a service already installed in `slot` (new endpoints, selection, timeouts): the
    /// tables are replaced before the service entry, as on install, and its connections keep
    /// their endpoints. The VIP's service count is left as it was.
    public func reinstall(_ svc: Service, slot: UInt32, hashSeed: UInt32) throws {
        try install(svc, slot: slot, hashSeed: hashSeed)
        let vip = svc.key.vip.networkOrder
        let n = maps.vips.lookup(vip, as: UInt32.self) ?? 1
        try maps.vips.update(vip, max(n, 2) - 1)
    }
}
