"""bench.secagg's smallest configuration run for real (loopback sockets, the GA, secure
rounds, a client killed mid-round), and its check functions on those results: so a refactor
cannot break the bench silently. Times and accuracies are printed, never asserted."""

from __future__ import annotations

import re

import pytest

from bench import secagg

pytestmark = pytest.mark.slow

SMALLEST = "--clients 3 --rounds 2 --repeats 1 --generations 2 --e2e-rounds 2 --seeds 1"


def test_the_smallest_configuration_meets_the_targets_it_can_hold(tmp_path, capsys):
    results = secagg.collect(secagg.parser().parse_args(SMALLEST.split()), tmp_path)
    assert secagg.check_sum(results)
    assert secagg.check_upload(results)
    assert secagg.check_killed(results)
    assert secagg.check_leakage(results)  # 20 vectors: by chance, 1 run in ~800 fails
    assert secagg.check_fitness(results)  # masked scores: under 1 KiB a generation
    # After 2 rounds on a shared machine, these two say only that they run.
    for check in (secagg.check_round_time, secagg.check_end_to_end):
        assert check(results) in (True, False)
    printed = capsys.readouterr().out
    assert "committed with 2 inputs summed" in printed  # 1 of 3 killed
    assert re.search(r"upload at 3 clients on 784-128-10: measured [\d,]+ B", printed)
    secagg.report(results)
    printed = capsys.readouterr().out
    assert len(re.findall(r"^TARGET .+, (met|missed)$", printed, re.M)) == 8
    assert printed.count("MEASURED membership inference") == 2
    assert "Secure aggregation does not protect against that" in printed
