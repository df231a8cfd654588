"""Acting on decisions: actions as data, the pure ``reconcile``, the runner with its intent ->
outcome journal, the version watcher, reoptimize, routers and notifiers."""
