"""Layer 2: sans-I/O engines.  Time comes in through an injected IReactorTime."""
