/// What a graceful restart carries from one daemon life to the next, kept in the pinned datapath
/// (tdm_meta): the roles and terms it held per HA instance, so a resumed MASTER keeps its term and
/// floating IPs without an election, and its membership incarnation, so the new process
/// out-ranks the "restarting" its peers hold.
public struct GracefulExitRecord: Sendable, Equatable {
    public struct Instance: Sendable, Equatable {
        /// FNV-1a 32 of the HA instance name.
        public var id: UInt32
        public var master: Bool
        public var term: UInt64
        public init(id: UInt32, master: Bool, term: UInt64) {
            self.id = id
            self.master = master
            self.term = term
        }
    }
    /// Wall clock of the exit, in microseconds.
    public var exitedAtMicros: UInt64
    public var incarnation: UInt32
    public var instances: [Instance]

    public init(exitedAtMicros: UInt64, incarnation: UInt32, instances: [Instance]) {
        self.exitedAtMicros = exitedAtMicros
        self.incarnation = incarnation
        self.instances = instances
    }

    /// Whether a start at `nowMicros` may still resume: peers hold a restarting member for
    /// `holdMicros`, after which they have declared it dead and elected without it.
    public func isFresh(nowMicros: UInt64, holdMicros: UInt64) -> Bool {
        nowMicros >= exitedAtMicros && nowMicros - exitedAtMicros < holdMicros
    }
}
