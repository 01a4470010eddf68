"""fedga client for your own data: python client.py [--data FILE] [--name NAME] [--headless] [--help]
(without --data the window opens with an empty data row; --headless needs it)."""

import sys

from common.cli import client_main

if __name__ == "__main__":
    sys.exit(client_main("client"))
