"""The HTTP side of svc: the edge every request passes, the router, the one response sender, the security headers."""
