"""The GA's mutation step as training converges (``StepSchedule``): Keras's
ReduceLROnPlateau idea on the loss the server measures, since a step sized for the first
rounds is noise near the optimum. Pure Python: ``GlobalModel`` feeds it each round's loss."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

MIN_STEP_SHARE = 0.1  # the mutation step shrinks to this share of its starting value at most


class StepSchedule:
    """Halve ``step`` once ``patience`` rounds passed without a loss lower than the lowest
    so far (the first being ``loss`` in round ``round``), down to ``MIN_STEP_SHARE`` of its
    start; then patience runs again from that round. ``patience`` 0 keeps it fixed."""

    def __init__(self, step: float, patience: int, loss: float, round: int = 0):
        self.step = step
        self.patience = patience
        self.smallest = step * MIN_STEP_SHARE
        self.lowest_loss = loss
        self._since = round  # the round of the lowest loss, or of the last halving

    def after_round(self, loss: float, round: int) -> bool:
        """Note round ``round``'s loss; True if that halved ``step``."""
        if loss < self.lowest_loss:
            self.lowest_loss, self._since = loss, round
            return False
        if not self.patience or self.step <= self.smallest or round - self._since < self.patience:
            return False
        before, self.step = self.step, max(self.smallest, self.step / 2)
        self._since = round  # patience again from here
        log.info(
            "mutation step %.3g -> %.3g: no lower loss for %d rounds",
            before,
            self.step,
            self.patience,
        )
        return True
