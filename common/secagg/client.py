"""A client's side of a secure round: ``SecAggClient``, one per client per round, a state
machine over the messages of ``common.secagg.messages`` (no sockets).

    client = SecAggClient(setup, my_id)
    send(client.advertise())                                  # KeysAdvertised
    send(client.share(key_list))                              # SharesSent
    send(client.masked_input(relayed, update, count))         # MaskedInput
    send(client.reveal(unmask_request))                       # Reveal

Each step runs once, in this order; anything else raises ``SecAggRefused``: the client sends
nothing for it and takes no further part in the round (the server counts it as dropped).
Before answering, each step checks what the server claims (its round, enough clients left,
this client's own keys unchanged, shares that open), so a curious server cannot learn more
than the sum by asking the wrong thing. ``reveal`` is where that matters most: for each
client of the round it gives EITHER the share of its self-mask seed (it sent a masked input)
OR the share of its mask key (it dropped), never both, and it answers once a round. So a
client that has not sent its masked input by then never will: a masked input whose masks
the server could remove would be plain.
"""

from __future__ import annotations

import enum
import functools
import logging
import os
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import numpy as np

from common.errors import SecAggRefused
from common.secagg import keys, masks, ring, shamir
from common.secagg.messages import (
    EncryptedShare,
    KeyList,
    KeysAdvertised,
    MaskedInput,
    Reveal,
    RoundSetup,
    SharesRelayed,
    SharesSent,
    UnmaskRequest,
)

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")
_SHARE = shamir.SHARE_BYTES


def _refusal_ends_the_round(step: Callable[P, R]) -> Callable[P, R]:
    """A step that refuses ends the client's round: answering a later step could give the
    server what the refused one withheld (a masked input after the reveal, say)."""

    @functools.wraps(step)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        client = args[0]
        assert isinstance(client, SecAggClient)
        try:
            return step(*args, **kwargs)
        except SecAggRefused as exc:
            client.stage = ClientStage.DONE
            log.warning("secure round %d: client %d: %s", client.setup.round, client.id, exc)
            raise

    return run


class ClientStage(enum.Enum):
    """What the client does next."""

    ADVERTISE = "advertise"
    SHARE = "share"
    MASK = "mask"
    REVEAL = "reveal"
    DONE = "done"  # revealed, or refused a step: nothing more this round


class SecAggClient:
    """One client's part in one secure round (``RoundSetup``), as client ``client_id``."""

    def __init__(self, setup: RoundSetup, client_id: int) -> None:
        if client_id not in setup.clients:
            raise ValueError(f"client {client_id} is not in round {setup.round}")
        self.setup = setup
        self.id = client_id
        self.stage = ClientStage.ADVERTISE
        self._share_key = keys.new_private_key()
        self._mask_key = keys.new_private_key()
        self._self_seed = os.urandom(masks.SEED_BYTES)
        self._keys: dict[int, KeysAdvertised] = {}  # U1's advertised keys
        # The shares this client holds of each U2 client's (mask key, self seed), its own too.
        self._held: dict[int, tuple[shamir.Share, shamir.Share]] = {}
        self._u2: tuple[int, ...] = ()

    # ---- the four steps -----------------------------------------------------------------

    @_refusal_ends_the_round
    def advertise(self) -> KeysAdvertised:
        """Stage 1: this client's two public keys."""
        self._enter(ClientStage.ADVERTISE, self.setup.round)
        self.stage = ClientStage.SHARE
        return self._advertised()

    @_refusal_ends_the_round
    def share(self, key_list: KeyList) -> SharesSent:
        """Stage 2: on every U1 client's keys, shares of this client's mask key and self-mask
        seed, one sealed for each other client of U1 (t of |U1|)."""
        self._enter(ClientStage.SHARE, key_list.round)
        advertised = {message.sender: message for message in key_list.keys}
        self._check(len(advertised) == len(key_list.keys), "the key list repeats a client")
        self._check(
            advertised.get(self.id) == self._advertised(),
            f"the key list does not hold client {self.id}'s own keys",
        )
        self._check(
            set(advertised) <= set(self.setup.clients), "the key list names uninvited clients"
        )
        public = [k for m in advertised.values() for k in (m.share_key, m.mask_key)]
        # One client's key replayed as another's would let the server pose as that client.
        self._check(len(set(public)) == len(public), "two clients advertise the same key")
        self._check_enough(len(advertised), "the key list")
        self._keys = dict(sorted(advertised.items()))

        holders = list(self._keys)
        mask_shares = shamir.split(
            keys.private_bytes(self._mask_key), self.setup.threshold, len(holders)
        )
        seed_shares = shamir.split(self._self_seed, self.setup.threshold, len(holders))
        sealed = []
        for peer, mask_share, seed_share in zip(holders, mask_shares, seed_shares):
            if peer == self.id:
                self._held[self.id] = (mask_share, seed_share)
                continue
            plaintext = mask_share.encode() + seed_share.encode()
            sealed.append(
                EncryptedShare(
                    self.id, peer, keys.seal(self._cipher_key(peer), plaintext, **self._ad(peer))
                )
            )
        self.stage = ClientStage.MASK
        return SharesSent(self.setup.round, self.id, tuple(sealed))

    @_refusal_ends_the_round
    def masked_input(self, relayed: SharesRelayed, update: np.ndarray, count: int) -> MaskedInput:
        """Stage 3: on the shares the other U2 clients sent it, this client's ``update``
        (``setup.length`` floats) weighted by its sample ``count``, quantised and masked."""
        self._enter(ClientStage.MASK, relayed.round)
        values = np.asarray(update, dtype=np.float64)
        if values.shape != (self.setup.length,):
            raise ValueError(f"the update has shape {values.shape}, not ({self.setup.length},)")
        self._check(not np.isnan(values).any(), "the update holds NaN")
        self._check(count >= 1, f"a client needs at least one sample, not {count}")
        self._check(relayed.receiver == self.id, "the shares are addressed to another client")
        senders = [share.sender for share in relayed.shares]
        self._check(len(set(senders)) == len(senders), "the shares repeat a sender")
        self._check(set(senders) <= set(self._keys) - {self.id}, "the shares come from outside U1")
        self._check_enough(len(senders) + 1, "the relayed shares")
        my_index = list(self._keys).index(self.id) + 1
        for share in relayed.shares:
            self._check(share.receiver == self.id, "a share is addressed to another client")
            plaintext = keys.open_sealed(
                self._cipher_key(share.sender), share.sealed, **self._ad(share.sender, True)
            )
            self._check(len(plaintext) == 2 * _SHARE, f"client {share.sender}'s share is malformed")
            mask_share, seed_share = (
                shamir.Share.decode(plaintext[:_SHARE]),
                shamir.Share.decode(plaintext[_SHARE:]),
            )
            self._check(
                mask_share.index == seed_share.index == my_index,
                f"client {share.sender}'s share is not this client's",
            )
            self._held[share.sender] = (mask_share, seed_share)
        self._u2 = tuple(sorted([*senders, self.id]))

        pair_seeds = {
            peer: keys.agree(self._mask_key, self._keys[peer].mask_key)
            for peer in self._u2
            if peer != self.id
        }
        vector = masks.masked(
            ring.quantise(self.setup.ring, values, count),
            owner=self.id,
            self_seed=self._self_seed,
            pair_seeds=pair_seeds,
            round=self.setup.round,
        )
        self.stage = ClientStage.REVEAL
        return MaskedInput(self.setup.round, self.id, vector)

    @_refusal_ends_the_round
    def reveal(self, request: UnmaskRequest) -> Reveal:
        """Stage 4: this client's share of each survivor's self-mask seed and of each dropped
        client's mask key, if the request names every U2 client exactly once, this client
        among the survivors, and at least t survivors."""
        self._enter(ClientStage.REVEAL, request.round)
        survivors, dropped = set(request.survivors), set(request.dropped)
        both = sorted(survivors & dropped)
        # The rule the whole protocol rests on: with both shares of one client the server
        # removes all its masks and reads its update.
        self._check(not both, f"it asks for both shares of client(s) {both}")
        self._check(
            len(survivors) == len(request.survivors) and len(dropped) == len(request.dropped),
            "the request repeats a client",
        )
        self._check(
            survivors | dropped == set(self._u2),
            f"the request does not name exactly this round's clients {list(self._u2)}",
        )
        self._check(self.id in survivors, f"client {self.id} sent its input but is listed dropped")
        self._check_enough(len(survivors), "the survivors")
        self.stage = ClientStage.DONE
        return Reveal(
            self.setup.round,
            self.id,
            self_seed_shares={peer: self._held[peer][1].encode() for peer in sorted(survivors)},
            mask_key_shares={peer: self._held[peer][0].encode() for peer in sorted(dropped)},
        )

    # ---- checks and helpers -------------------------------------------------------------

    def _enter(self, stage: ClientStage, round: int) -> None:
        if self.stage is not stage:
            self._refuse(f"it is asked to {stage.value} but its next step is {self.stage.value}")
        if round != self.setup.round:
            self._refuse(f"a message of round {round} came in round {self.setup.round}")

    def _check(self, ok: bool, why: str) -> None:
        if not ok:
            self._refuse(why)

    def _check_enough(self, remaining: int, what: str) -> None:
        self._check(
            remaining >= self.setup.threshold,
            f"{what} leave {remaining} clients, below the threshold {self.setup.threshold}",
        )

    def _refuse(self, why: str) -> None:
        raise SecAggRefused(f"Client {self.id} refuses: {why}.")

    def _advertised(self) -> KeysAdvertised:
        return KeysAdvertised(
            self.setup.round,
            self.id,
            keys.public_bytes(self._share_key),
            keys.public_bytes(self._mask_key),
        )

    def _cipher_key(self, peer: int) -> bytes:
        return keys.share_cipher_key(keys.agree(self._share_key, self._keys[peer].share_key))

    def _ad(self, peer: int, incoming: bool = False) -> dict[str, int]:
        sender, receiver = (peer, self.id) if incoming else (self.id, peer)
        return {"round": self.setup.round, "sender": sender, "receiver": receiver}
