"""train.batch_size=auto's search (harness/autobatch.search_around): from the estimate's guess to the largest batch
that fits, with the next batch up tried and not fitting."""
from __future__ import annotations

import pytest

from harness.autobatch import search_around


@pytest.mark.parametrize("guess", [1, 5, 17, 18, 19, 40, 4096])
def test_search_finds_the_largest_fitting_batch_from_any_guess(guess):
    tried = []

    def fits(batch):
        tried.append(batch)
        return batch <= 18

    best, order = search_around(fits, guess, limit=100)
    assert best == 18 and 18 in order and 19 in order  # the batch chosen ran, the next one up did not
    assert order == tried and len(set(order)) == len(order)  # each batch tried once, in the order given


def test_an_exact_guess_costs_two_trials():
    assert search_around(lambda b: b <= 18, 18)[1] == [18, 19]


def test_nothing_fits_and_everything_fits():
    assert search_around(lambda b: False, 8, limit=64)[0] == 0
    best, order = search_around(lambda b: True, 8, limit=64)
    assert best == 64 and 65 not in order
