import Testing

/// Every test that needs root, BPF or network namespaces lives under this one serialized suite,
/// so they never run at the same time as each other. In CI they always run.
@Suite(.serialized, .enabled(if: Env.privilegedEnabled, "needs root (always runs in CI)"))
struct Privileged {}
