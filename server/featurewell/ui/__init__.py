"""The read-only web UI (`featurewell ui`): catalog, view pages and live health (docs/ui.md)."""
