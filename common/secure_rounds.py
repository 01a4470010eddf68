"""Secure aggregation over the wire (``--secure-aggregation``): each round's updates reach
the server masked, and it learns only their sum. The protocol is ``common.secagg``'s; this
module carries its messages over the clients' connections and runs it round after round.

A round, as the server's ``SecureRounds`` drives it in a thread of its own:

1. Clients train the global model as in weights mode (the ``model`` message says
   ``secure_aggregation``), then announce they are ready (``secagg_ready``) and wait.
2. Once ``--min-clients`` are ready (or ``--round-timeout`` after the first, if at least 3
   and the threshold are), the server invites them (``secagg_setup``: the round's setup and
   each one's id in it) and runs the stages: keys, shares relayed, masked inputs, reveals.
   Each stage closes when every client still in has answered, or ``--round-timeout`` after
   it opened; a client whose connection ends is dropped from the round at once.
3. The server removes the masks, divides the weighted sum by the summed (masked) count,
   and the rule (fedavg or a server optimiser) folds that mean into the global model as
   weights mode folds a round's updates (``GlobalModel.apply_mean``).
4. Every client of the round, and every other client waiting, is answered with the next
   model (or ``done``). A stage that leaves fewer than the threshold abandons the round:
   one log line says how many were left, the model stays, and the clients get a new
   population of it to train for the next round.

Only clients that announce ``SECURE_AGGREGATION_VERSION`` take part: plain-pickle peers and
older fedga clients would send their weights in the clear, and are refused with a logged
reason. A client that reconnects mid-round is a new member, dropped from that round: its
client (``SecureParticipant``) never resends a secure round's message on a new connection
(a second masked vector, under masks the server can by then remove, would be plain).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from common.auto import AUTO, Auto
from common.driver import Notify, RoundDriver, Stoppable
from common.errors import (
    ConnectionLost,
    Refused,
    RoundAbandoned,
    SchemaError,
    SecAggError,
    SecAggRefused,
)
from common.events import Event, EventKind
from common.protocol.messages import (
    SECURE_AGGREGATION_VERSION,
    SECURE_FROM_CLIENT,
    Done,
    Echo,
    Invitation,
    KeyList,
    KeysAdvertised,
    MaskedInput,
    Message,
    ModelRequest,
    Ready,
    Reveal,
    SecureMessage,
    SecurePayload,
    ServerReply,
    SharesRelayed,
    SharesSent,
    Subject,
    UnmaskRequest,
    Waiting,
    client_id_of,
)
from common.secagg import RoundResult, RoundSetup, SecAggClient, SecAggServer, round_threshold

log = logging.getLogger(__name__)
T = TypeVar("T")

SMALLEST_ROUND = 3  # of two clients, each could read the other's update from the sum
# The detail of a client's ``model`` and ``sent`` events when its update goes masked.
SECURE = "secure aggregation"


class GlobalRounds(Stoppable, Protocol):
    """What secure rounds need of ``common.global_model.GlobalModel`` (a Protocol:
    ``common.server`` imports this module)."""

    round: int
    accuracy: float

    @property
    def num_params(self) -> int: ...

    def reply_to_echo(self) -> ModelRequest | Done: ...

    def apply_mean(self, mean: np.ndarray, count: float, clients: str, detail: str) -> None: ...


@dataclass
class _Member:
    """One connection's client: ``id`` is its name in secure rounds, new per connection."""

    peer: str
    id: int
    client_id: str
    ready: bool = False  # trained the current model and waits to be invited
    in_round: int | None = None  # the secure round it was invited to, while it runs
    reply: ServerReply | None = None  # published for its handler to send
    waiting: bool = False  # its handler waits for ``reply``


class SecureRounds(RoundDriver):
    """Runs secure rounds in a thread of its own (``start``/``shutdown``); ``reply`` answers
    a client's request from a ``SocketThread`` once there is an answer, and ``leave`` hears
    that its connection ended. ``on_event`` hears of a round abandoned (``short``) and of
    waiting for enough clients (``waiting``); it must not call back in."""

    what = "secure aggregation"

    def __init__(
        self,
        global_model: GlobalRounds,
        *,
        min_clients: int,
        round_timeout: float,
        threshold: int | Auto = AUTO,
        on_event: Callable[[Event], None] | None = None,
    ):
        super().__init__(global_model)
        self.global_model = global_model
        self.min_clients, self.round_timeout, self.threshold = min_clients, round_timeout, threshold
        self._on_event = on_event or (lambda event: None)
        self._members: dict[str, _Member] = {}  # by peer
        self._next_id = 1
        self._attempt = 0  # the last secure round's number (abandoned ones count)
        self._secagg: SecAggServer | None = None  # the round running, if any
        self._first_ready: float | None = None  # when the first client waiting became ready
        self._stage_deadline = 0.0  # when the running round's open stage closes

    # -- the rounds' thread

    def _rounds(self) -> None:
        while not self._over():
            invited = self._wait_for_ready()
            if invited is None:
                return
            self._round(invited)

    def _wait_for_ready(self) -> list[_Member] | None:
        """The clients to invite: once ``min_clients`` are ready, or ``round_timeout`` after
        the first was, if enough to keep a round's sum secret are; None once training ended."""
        given = 0 if isinstance(self.threshold, Auto) else self.threshold
        smallest = max(SMALLEST_ROUND, given)
        first: float | None = None
        said_waiting = False
        with self._changed:
            while not self._over():
                ready = [member for member in self._members.values() if member.ready]
                now = time.monotonic()
                first = self._first_ready = (first or now) if ready else None
                late = first is not None and now - first >= self.round_timeout
                if len(ready) >= self.min_clients or (late and len(ready) >= smallest):
                    return ready
                if late and not said_waiting:
                    log.info(
                        "secure aggregation: %d clients ready, a secure round needs %d; "
                        "waiting for more",
                        len(ready),
                        smallest,
                    )
                    self._on_event(
                        Event(
                            EventKind.WAITING,
                            round=self.global_model.round + 1,
                            detail=f"{len(ready)} of {smallest} clients",
                        )
                    )
                    said_waiting = True
                self._changed.wait(
                    None if first is None or late else first + self.round_timeout - now
                )
        return None

    def _round(self, invited: list[_Member]) -> None:
        """One secure round of the ``invited``, to its result or abandonment."""
        self._attempt += 1
        ids = sorted(member.id for member in invited)
        setup = RoundSetup.create(
            self._attempt, ids, self.global_model.num_params, threshold=self._threshold(len(ids))
        )
        server = SecAggServer(setup)
        log.info(
            "secure round %d: %d clients invited, threshold %d",
            setup.round,
            len(ids),
            setup.threshold,
        )
        with self._changed:
            self._secagg = server
            for member in invited:
                member.ready, member.in_round = False, setup.round
                self._publish(member, Invitation(setup, member.id))
        result = None
        try:
            result = self._stages(server)
        except SecAggError as exc:  # abandoned (the core logs it), or shares that do not rebuild
            if not isinstance(exc, RoundAbandoned):
                log.warning("secure round %d: %s", setup.round, exc)
            self._on_event(
                Event(EventKind.SHORT, round=self.global_model.round + 1, detail=str(exc))
            )
        if result is not None:
            names = {member.id: member.client_id for member in invited}
            survivors = [names[client] for client in result.survivors]
            self.global_model.apply_mean(
                result.mean,
                result.count,
                "+".join(survivors) if len(survivors) <= 3 else f"{len(survivors)} clients",
                "secure sum of %d updates (%d invited, threshold %d, error bound %.2g)"
                % (len(result.survivors), len(ids), setup.threshold, result.bound),
            )
        with self._changed:
            self._secagg = None
            for member in self._members.values():
                if member.in_round == setup.round or (member.waiting and member.reply is None):
                    member.in_round, member.ready = None, False
                    member.reply = self.global_model.reply_to_echo()
            self._changed.notify_all()

    def _stages(self, server: SecAggServer) -> RoundResult | None:
        """Run the round's stages; its result, or None once training ended."""
        key_list = self._stage(server, server.close_keys)
        if key_list is None:
            return None
        self._send({keys.sender: key_list for keys in key_list.keys})
        relayed = self._stage(server, server.close_shares)
        if relayed is None:
            return None
        self._send(relayed)
        request = self._stage(server, server.close_masked)
        if request is None:
            return None
        self._send({client: request for client in request.survivors})
        return self._stage(server, server.close_reveals)

    def _threshold(self, clients: int) -> int:
        """The round's t: ``--secagg-threshold`` or two thirds, and always above half."""
        wanted = round_threshold(self.threshold, clients)
        if 2 * wanted <= clients:
            log.info(
                "secure round of %d clients: threshold %d raised to %d, above half of them",
                clients,
                wanted,
                clients // 2 + 1,
            )
        return max(wanted, clients // 2 + 1)

    def _stage(self, server: SecAggServer, close: Callable[[], T]) -> T | None:
        """Wait for the open stage's answers (every client still in, or ``round_timeout``),
        then close it: what to send on, or None once training ended."""
        with self._changed:
            deadline = self._stage_deadline = time.monotonic() + self.round_timeout
            while server.pending and not self._over():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            return None if self._over() else close()

    def _send(self, replies: dict) -> None:
        """Publish each client's reply (by its id) of the stage just closed."""
        with self._changed:
            for member in self._members.values():
                if member.id in replies and member.in_round == self._attempt:
                    self._publish(member, replies[member.id])

    def _publish(self, member: _Member, payload) -> None:
        """Call with ``_changed`` held."""
        member.reply = SecureMessage(payload)
        self._changed.notify_all()

    # -- the clients' threads

    def reply(
        self, peer: str, message: Message, notify: Notify | None = None, every: float = 5.0
    ) -> ServerReply:
        """The reply to a client's request, once there is one; meanwhile ``notify`` (if
        given) hears what the round waits for every ``every`` seconds. ``Refused`` for a
        peer that cannot take part; ``SchemaError`` for a malformed request."""
        if message.subject is Subject.MODEL:
            raise Refused(
                "this server runs secure aggregation: updates reach it masked, in secure "
                "rounds, never in the clear"
            )
        if message.subject not in (Subject.ECHO, *SECURE_FROM_CLIENT):
            raise Refused(
                f"this server runs secure aggregation, not fitness mode's "
                f"{message.subject.value!r} messages"
            )
        with self._changed:
            member = self._members.get(peer) or self._join(peer, message)
            if message.subject is Subject.ECHO:
                self._leave_round(member)
                member.reply = None
                return self.global_model.reply_to_echo()
            payload = SecureMessage.from_message(message).payload
            if isinstance(payload, Ready):
                self._leave_round(member)
                member.reply = None
                if payload.round != self.global_model.round or self._over():
                    return self.global_model.reply_to_echo()  # trained an older model
                member.ready = True
                self._changed.notify_all()
            else:
                self._receive(member, payload)
            member.waiting = True  # from now on a round that ends publishes it a reply
        try:
            return self._answer(lambda: self._reply_for(member), self._waiting, notify, every)
        finally:
            with self._changed:
                member.waiting = False

    def _join(self, peer: str, message: Message) -> _Member:
        """Call with ``_changed`` held: a new connection's first message."""
        version = message.data.get("protocol_version")
        if not isinstance(version, int) or version < SECURE_AGGREGATION_VERSION:
            raise Refused(
                "this server runs secure aggregation (--secure-aggregation), where clients "
                "send their updates masked, which needs protocol_version "
                f"{SECURE_AGGREGATION_VERSION} or later; this peer announced {version!r} "
                "(a plain-pickle or older peer, which would send its weights in the clear)"
            )
        member = _Member(peer, self._next_id, client_id_of(message.data) or peer)
        self._next_id += 1
        self._members[peer] = member
        return member

    def _receive(self, member: _Member, payload) -> None:
        """Call with ``_changed`` held: hand a stage's message to the round it belongs to."""
        receive = _RECEIVE[type(payload)]  # the schemas let in only a client's subjects
        if payload.sender != member.id:
            raise SchemaError(f"the message names client {payload.sender}, not this one")
        server = self._secagg
        try:
            if server is None or member.in_round != server.setup.round:
                raise SecAggRefused("it is not in a secure round now")
            receive(server, payload)
        except SecAggRefused as exc:  # late or out of turn: it waits for the next round
            log.info("client %s: %s; it waits for the next round", member.client_id, exc)
            return
        self._changed.notify_all()

    def _reply_for(self, member: _Member) -> ServerReply | None:
        """Call with ``_changed`` held: the reply published for ``member``, if any yet."""
        if self.global_model.finished.is_set():
            return self.global_model.done()
        if self._stopping:  # shut down, or broken: not done, so the client may retry
            raise ConnectionLost("the server stopped running secure aggregation")
        reply, member.reply = member.reply, None
        return reply

    def _waiting(self) -> Waiting:
        """Call with ``_changed`` held: what a waiting client is told it waits for."""
        server, now = self._secagg, time.monotonic()
        round_ = self.global_model.round + 1
        if server is None:
            ready = sum(member.ready for member in self._members.values())
            closes_in = 0.0  # a round begins --round-timeout after the first is ready
            if self._first_ready is not None:
                closes_in = max(self._first_ready + self.round_timeout - now, 0.0)
            return Waiting(
                round_,
                max(self.min_clients - ready, 0),
                closes_in,
                "clients ready for a secure round",
            )
        return Waiting(
            round_,
            len(server.pending),
            max(self._stage_deadline - now, 0.0),
            f"secure round {server.setup.round}, {server.stage.value}",
        )

    def _leave_round(self, member: _Member) -> None:
        """Call with ``_changed`` held: ``member`` takes no further part in a running round."""
        server = self._secagg
        if server is not None and member.in_round == server.setup.round:
            server.drop(member.id)
            self._changed.notify_all()
        member.in_round = None

    def leave(self, peer: str) -> None:
        """A connection ended: its client is out of the running round."""
        with self._changed:
            member = self._members.pop(peer, None)
            if member is None:
                return
            if member.in_round is not None:
                log.info("client %s left during secure round %d", member.client_id, member.in_round)
            self._leave_round(member)
            self._changed.notify_all()


# How the round takes each stage's message from a client.
_RECEIVE: dict[type, Callable[[SecAggServer, Any], None]] = {
    KeysAdvertised: SecAggServer.receive_keys,
    SharesSent: SecAggServer.receive_shares,
    MaskedInput: SecAggServer.receive_masked,
    Reveal: SecAggServer.receive_reveal,
}


# ---- the client's side --------------------------------------------------------------------


class SecureParticipant:
    """A client's part in the server's secure rounds, after it trained: it announces it is
    ready and answers each stage with ``common.secagg``'s ``SecAggClient``, until the server
    sends the next model (or ``done``). ``exchange`` sends a message and returns the reply;
    after a lost connection it must not resend the message but ask afresh (an ``echo``)."""

    def __init__(self, exchange: Callable[[Message], ServerReply], *, client_id: str):
        self._exchange, self.client_id = exchange, client_id

    def run(self, trained_round: int, update: np.ndarray, count: int) -> ModelRequest | Done:
        """Take part in secure rounds with ``update`` (trained on the global model of
        ``trained_round``) and ``count``; the server's reply that ends them."""
        reply = self._exchange(SecureMessage(Ready(trained_round, self.client_id)).to_message())
        client: SecAggClient | None = None
        while isinstance(reply, SecureMessage):
            payload = reply.payload
            answer: SecurePayload
            try:
                if isinstance(payload, Invitation):
                    if payload.setup.length != len(update):
                        raise SchemaError(
                            f"the secure round is for {payload.setup.length} weights, not "
                            f"this model's {len(update)}"
                        )
                    client = SecAggClient(payload.setup, payload.you)
                    answer = client.advertise()
                elif client is None:
                    raise SchemaError(f"the server sent {reply.subject.value!r} before a setup")
                elif isinstance(payload, KeyList):
                    answer = client.share(payload)
                elif isinstance(payload, SharesRelayed):
                    answer = client.masked_input(payload, update, count)
                elif isinstance(payload, UnmaskRequest):
                    answer = client.reveal(payload)
                else:
                    raise SchemaError(f"the server sent a client's {reply.subject.value!r}")
            except SecAggRefused:  # logged by the client; it is out of this round
                client = None
                reply = self._exchange(Echo(self.client_id).to_message())
                continue
            reply = self._exchange(SecureMessage(answer).to_message())
        if not isinstance(reply, (ModelRequest, Done)):
            raise SchemaError("the server switched from secure aggregation to fitness mode")
        return reply
