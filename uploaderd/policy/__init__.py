"""Pure policies: decisions as functions of their inputs and injected clocks; no I/O."""
