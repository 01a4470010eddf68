"""The server's side of a secure round: ``SecAggServer``, one per round, a state machine over
the messages of ``common.secagg.messages`` (no sockets, no threads: the caller serialises
calls, e.g. under the round's lock).

Each stage collects one message from each client still in, then closes: on its
``--round-timeout``, or as soon as ``pending`` is empty. Closing decides who is in for the
next stage and returns what to send them::

    server = SecAggServer(setup)                  # send setup to every client
    server.receive_keys(keys_advertised)          # ... for each that arrives
    key_list = server.close_keys()                # KeyList: send to every client in it
    server.receive_shares(shares_sent)
    relayed = server.close_shares()               # {client id: SharesRelayed}: send each its own
    server.receive_masked(masked_input)
    request = server.close_masked()               # UnmaskRequest: send to request.survivors
    server.receive_reveal(reveal)
    result = server.close_reveals()               # RoundResult: FedAvg goes on with .mean

A client that sends nothing before a stage closes (or whose connection ``drop`` reports
lost) is out from then on; what it sent before still counts (a masked input that arrived is
summed, and unmasked with the others' shares of its self-mask seed). A ``close_*`` that
leaves fewer than t clients raises ``RoundAbandoned`` (one log line; nothing is learnt and
the model stays as it was). ``receive_*`` raises ``SchemaError`` for a malformed message and
``SecAggRefused`` for one that is late, repeated, from another round or from a client not in
the stage; either way the message is not used.
"""

from __future__ import annotations

import enum
import logging
from typing import Any

import numpy as np

from common.errors import RoundAbandoned, SchemaError, SecAggError, SecAggRefused
from common.secagg import keys, masks, ring, shamir
from common.secagg.messages import (
    KeyList,
    KeysAdvertised,
    MaskedInput,
    Reveal,
    RoundResult,
    RoundSetup,
    SharesRelayed,
    SharesSent,
    UnmaskRequest,
)

log = logging.getLogger(__name__)


class ServerStage(enum.Enum):
    """What the server is collecting."""

    KEYS = "the key round"
    SHARES = "the share round"
    MASKED = "the masked-input round"
    REVEALS = "the unmasking round"
    DONE = "done"
    ABANDONED = "abandoned"


class SecAggServer:
    """The server's part in one secure round (``RoundSetup``)."""

    def __init__(self, setup: RoundSetup) -> None:
        self.setup = setup
        self.stage = ServerStage.KEYS
        self._invited: tuple[int, ...] = setup.clients  # who the open stage waits for
        self._gone: set[int] = set()
        self._keys: dict[int, KeysAdvertised] = {}
        self._shares: dict[int, SharesSent] = {}
        self._masked: dict[int, np.ndarray] = {}
        self._reveals: dict[int, Reveal] = {}
        self._dropped: tuple[int, ...] = ()

    @property
    def pending(self) -> set[int]:
        """The clients the open stage still waits for (empty: close it now)."""
        by_stage: dict[ServerStage, dict[int, Any]] = {
            ServerStage.KEYS: self._keys,
            ServerStage.SHARES: self._shares,
            ServerStage.MASKED: self._masked,
            ServerStage.REVEALS: self._reveals,
        }
        if self.stage not in by_stage:
            return set()
        return set(self._invited) - set(by_stage[self.stage]) - self._gone

    def drop(self, client_id: int) -> None:
        """``client_id``'s connection is lost: stop waiting for it and refuse its messages."""
        self._gone.add(client_id)

    # ---- stage 1: keys ------------------------------------------------------------------

    def receive_keys(self, message: KeysAdvertised) -> None:
        """A client's public keys."""
        self._accept(ServerStage.KEYS, message.round, message.sender, self._keys)
        for key in (message.share_key, message.mask_key):
            if not isinstance(key, bytes) or len(key) != keys.KEY_BYTES:
                raise SchemaError(f"Client {message.sender}'s public key is not 32 bytes.")
        taken = {k for m in self._keys.values() for k in (m.share_key, m.mask_key)}
        if {message.share_key, message.mask_key} & taken or message.share_key == message.mask_key:
            raise SecAggRefused(f"Client {message.sender} advertises a key already advertised.")
        self._keys[message.sender] = message

    def close_keys(self) -> KeyList:
        """Close the key round: the keys of U1, the clients who advertised in time."""
        u1 = self._close(ServerStage.KEYS, self._keys, ServerStage.SHARES)
        return KeyList(self.setup.round, tuple(self._keys[client] for client in u1))

    # ---- stage 2: shares ----------------------------------------------------------------

    def receive_shares(self, message: SharesSent) -> None:
        """A client's sealed shares, one for each other client of U1."""
        self._accept(ServerStage.SHARES, message.round, message.sender, self._shares)
        receivers = [share.receiver for share in message.shares]
        if sorted(receivers) != [c for c in self._invited if c != message.sender] or any(
            share.sender != message.sender for share in message.shares
        ):
            raise SchemaError(
                f"Client {message.sender}'s shares are not one for each other client of U1."
            )
        self._shares[message.sender] = message

    def close_shares(self) -> dict[int, SharesRelayed]:
        """Close the share round: for each client of U2 (who sent its shares in time), the
        shares the others of U2 sealed for it."""
        u2 = self._close(ServerStage.SHARES, self._shares, ServerStage.MASKED)
        return {
            receiver: SharesRelayed(
                self.setup.round,
                receiver,
                tuple(
                    share
                    for sender in u2
                    if sender != receiver
                    for share in self._shares[sender].shares
                    if share.receiver == receiver
                ),
            )
            for receiver in u2
        }

    # ---- stage 3: masked inputs ---------------------------------------------------------

    def receive_masked(self, message: MaskedInput) -> None:
        """A client's masked input."""
        self._accept(ServerStage.MASKED, message.round, message.sender, self._masked)
        vector = message.vector
        expected = (self.setup.length + 1,)
        if not (
            isinstance(vector, np.ndarray)
            and vector.dtype == self.setup.ring.dtype
            and vector.shape == expected
        ):
            raise SchemaError(
                f"Client {message.sender}'s masked input is not {expected[0]} "
                f"{np.dtype(self.setup.ring.dtype).name} values."
            )
        self._masked[message.sender] = vector

    def close_masked(self) -> UnmaskRequest:
        """Close the masked-input round: survivors (U3, who sent in time) and dropped (the
        rest of U2), for every survivor to answer."""
        u2 = self._invited
        u3 = self._close(ServerStage.MASKED, self._masked, ServerStage.REVEALS)
        self._dropped = tuple(client for client in u2 if client not in u3)
        return UnmaskRequest(self.setup.round, survivors=u3, dropped=self._dropped)

    # ---- stage 4: reveals ---------------------------------------------------------------

    def receive_reveal(self, message: Reveal) -> None:
        """A survivor's shares: of each survivor's self-mask seed, each dropped one's mask key."""
        self._accept(ServerStage.REVEALS, message.round, message.sender, self._reveals)
        if (
            sorted(message.self_seed_shares) != list(self._invited)
            or sorted(message.mask_key_shares) != list(self._dropped)
            or any(
                not isinstance(share, bytes) or len(share) != shamir.SHARE_BYTES
                for shares in (message.self_seed_shares, message.mask_key_shares)
                for share in shares.values()
            )
        ):
            raise SchemaError(
                f"Client {message.sender}'s reveal is not one share for each client asked."
            )
        self._reveals[message.sender] = message

    def close_reveals(self) -> RoundResult:
        """Close the unmasking round: rebuild the survivors' self-mask seeds and the dropped
        clients' mask keys from t reveals, remove every mask, and read the sum."""
        survivors = self._invited
        revealers = self._close(ServerStage.REVEALS, self._reveals, ServerStage.DONE)
        # Any t shares rebuild a secret; more would only cost time.
        used = [self._reveals[client] for client in revealers[: self.setup.threshold]]
        spec, length, round = self.setup.ring, self.setup.length + 1, self.setup.round

        total = ring.ring_sum(spec, [self._masked[client] for client in survivors])
        for client in survivors:
            seed = self._rebuild(client, [reveal.self_seed_shares[client] for reveal in used])
            masks.add_signed(total, masks.self_mask(seed, length, spec.dtype, round), -1)
        for gone in self._dropped:
            secret = self._rebuild(gone, [reveal.mask_key_shares[gone] for reveal in used])
            private = keys.private_from_bytes(secret)
            if keys.public_bytes(private) != self._keys[gone].mask_key:
                raise SecAggError(
                    f"The shares of client {gone}'s mask key do not rebuild the key it advertised."
                )
            for client in survivors:
                # Undo what the survivor added toward the dropped client.
                seed = keys.agree(private, self._keys[client].mask_key)
                mask = masks.pair_mask(seed, length, spec.dtype, round)
                masks.add_signed(total, mask, -masks.pair_sign(client, gone))

        weighted_sum, count = ring.dequantise(spec, total)
        log.info(
            "secure round %d: summed %d inputs (%d dropped, %d revealed)",
            round,
            len(survivors),
            len(self._dropped),
            len(revealers),
        )
        return RoundResult(
            round=round,
            weighted_sum=weighted_sum,
            count=float(count),
            survivors=survivors,
            dropped=self._dropped,
            bound=ring.error_bound(spec, len(survivors), count),
        )

    # ---- helpers ------------------------------------------------------------------------

    def _accept(self, stage: ServerStage, round: int, sender: int, received: dict) -> None:
        """Refuse a message the open stage cannot use."""
        who = f"Client {sender}'s message for {stage.value}"
        if round != self.setup.round:
            raise SecAggRefused(f"{who} names round {round}, not {self.setup.round}.")
        if self.stage is not stage:
            raise SecAggRefused(f"{who} came when the server is at {self.stage.value}.")
        if sender not in self._invited or sender in self._gone:
            raise SecAggRefused(f"{who} came from a client not in it.")
        if sender in received:
            raise SecAggRefused(f"{who} came twice.")

    def _close(
        self, stage: ServerStage, received: dict, next_stage: ServerStage
    ) -> tuple[int, ...]:
        """Close ``stage``: who answered in time, if at least t did; else abandon the round."""
        if self.stage is not stage:
            raise SecAggRefused(f"The server cannot close {stage.value} at {self.stage.value}.")
        answered = tuple(client for client in self._invited if client in received)
        if len(answered) < self.setup.threshold:
            self.stage = ServerStage.ABANDONED
            abandoned = RoundAbandoned(stage.value, len(answered), self.setup.threshold)
            log.warning("secure round %d: %s", self.setup.round, abandoned)
            raise abandoned
        log.info(
            "secure round %d: %s closed with %d of %d clients",
            self.setup.round,
            stage.value,
            len(answered),
            len(self._invited),
        )
        self.stage, self._invited = next_stage, answered
        return answered

    def _rebuild(self, owner: int, encoded: list[bytes]) -> bytes:
        try:
            return shamir.combine([shamir.Share.decode(share) for share in encoded])
        except ValueError as exc:  # repeated indices: a client sent another's share
            raise SecAggError(f"The shares of client {owner}'s secret do not combine.") from exc
