"""Providers: the plugins that make and move snapshots (DESIGN §7); `registry` lists them by short name."""
