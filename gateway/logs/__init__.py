"""How the gateway logs: text or JSON lines on stderr, and the optional access log of requests."""
