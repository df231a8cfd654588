"""How live traffic is split between a model's stable and canary versions."""
