"""fedga client 2, holding the tutorial's client2 XOR samples: python client2.py [--headless] [--help]."""

import sys

from common.cli import client_main

if __name__ == "__main__":
    sys.exit(client_main("client2"))
