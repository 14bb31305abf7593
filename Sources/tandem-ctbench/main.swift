// Placeholder: the conntrackd benchmark driver is being written.
print("tandem-ctbench: not built yet")
