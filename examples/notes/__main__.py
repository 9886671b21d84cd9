"""`python -m examples.notes COMMAND`: svc's commands (migrate, serve, check-config) for the notes service."""

from __future__ import annotations

import os
import sys

from svc.__main__ import main

if __name__ == "__main__":
    # An environment variable, not an argument: `serve --workers N` starts processes that read it too.
    os.environ["SERVICE"] = "examples.notes.service:service"
    sys.exit(main())
