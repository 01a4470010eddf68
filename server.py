"""fedga server: python server.py [--headless] [--help]."""

import sys

from common.cli import server_main

if __name__ == "__main__":
    sys.exit(server_main())
