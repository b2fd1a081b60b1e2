"""The front of Turnout: the gRPC edge, the use cases behind it, and the parts they use."""
