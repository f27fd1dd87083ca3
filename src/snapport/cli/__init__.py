"""The `snapport` command line (thin: parses, calls coordinator/agent, prints)."""
