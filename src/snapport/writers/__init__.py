"""Writers: the plugins that make applications consistent for a snapshot; `registry` lists them."""
