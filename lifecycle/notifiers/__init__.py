"""Where alerts go: Alertmanager API v2, a generic JSON webhook, or nowhere (nop)."""
