"""Configures the process's logging from the settings; every entry point (the command line, a gateway
process, the supervisor) calls :func:`configure_logging`, so they all log alike."""

from __future__ import annotations

import logging
import sys

from gateway.logs.formats import formatter_for
from gateway.settings import Settings

ACCESS_LOGGER = "turnout.access"


def configure_logging(settings: Settings) -> None:
    """One handler on stderr with the format of ``--log-format``, from ``--log-level`` up.

    Calling it again replaces the handler (the command line configures first, then the gateway it
    starts). The access log's logger logs whenever ``--access-log`` is on, whatever ``--log-level``:
    asking for it is asking for its lines.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter_for(settings.log_format))
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO if settings.access_log else logging.NOTSET)
