"""fedga client 1, holding the tutorial's client1 XOR samples: python client1.py [--headless] [--help]."""

import sys

from common.cli import client_main

if __name__ == "__main__":
    sys.exit(client_main("client1"))
