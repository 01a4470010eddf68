"""Network faults for tests: ``proxy.FaultProxy``, a TCP proxy with Toxiproxy's toxics."""
