"""How live traffic is split between a model's stable and canary versions: ``labels`` (clients
pick the label), ``nginx`` (weighted split written into nginx), ``shadow`` (no live traffic)."""
