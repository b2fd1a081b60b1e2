"""Names of the gRPC metadata keys that callers, the ``turnout`` commands and the gateway agree on."""

from __future__ import annotations

# Sent by a caller: pin this request to a version (as ``model_version`` does).
PIN = "turnout-pin"
# Trailing metadata of every unary answer (response parameters on streams): how it was routed.
VERSION = "turnout-version"
ARM = "turnout-arm"
GENERATION = "turnout-generation"
