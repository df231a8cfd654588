"""Acting on decisions: per-model state machine, controllers, routers, notifiers."""
