"""Window tests: the marker for the end-to-end run with real windows."""


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts real processes and windows (about 20 s)")
