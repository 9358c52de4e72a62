"""``make demo``: the roaming demo in the namespace lab (or a loopback demo without root)."""
