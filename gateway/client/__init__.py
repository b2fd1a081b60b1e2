"""The ``turnout`` commands that talk to a running gateway; imports no server code."""
