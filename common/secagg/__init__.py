"""Secure aggregation (Bonawitz et al., CCS 2017, semi-honest with dropouts): the server
learns only the sum of a round's weighted updates and counts, and clients may drop out.

Pure protocol, no sockets: the server core and the client call it at the round's edges and
carry its messages (``messages``) over their connections. What each module owns:

- ``ring``: the ring of unsigned integers mod 2^bits, ``RingSpec`` (sized so n clients' sum
  cannot overflow), quantisation of a weighted update and its count, ``error_bound``;
- ``masks``: mask vectors from 32-byte seeds by HKDF-SHA256 + ChaCha20, pairwise signs;
- ``shamir``: t-of-n shares of 32-byte secrets (pycryptodome's Shamir on two halves);
- ``keys``: X25519 keys and agreement, shares sealed by ChaCha20-Poly1305 bound to round,
  sender and receiver;
- ``messages``: ``RoundSetup``, the threshold's default and check, each stage's message;
- ``client``: ``SecAggClient``, a client's state machine;
- ``server``: ``SecAggServer``, the server's state machine.

How a round flows (t = the threshold, default ceil(2n/3), at least 2, above n/2):

1. The server sends every client the ``RoundSetup``; each makes a ``SecAggClient`` and
   advertises two X25519 public keys (``KeysAdvertised``): a share key and a mask key. The
   server sends the keys it got in time (U1) back to those clients (``KeyList``).
2. Each client draws a fresh 32-byte self-mask seed, splits it and its mask key's private
   bytes into t-of-|U1| Shamir shares, and seals each peer's pair of shares for that peer
   (``SharesSent``). The server relays to each client of U2 (who sent shares in time) what
   the others of U2 sealed for it (``SharesRelayed``); it cannot open them.
3. Each client quantises its update weighted by its sample count, plus the count, into the
   ring; adds its self mask and, for each other client of U2, the mask of their X25519
   mask-key agreement (+ toward a higher id, - toward a lower), and sends it
   (``MaskedInput``). Pairwise masks cancel in the sum; the self mask keeps a masked input
   hidden even if the server later claims its sender dropped.
4. The server names who sent a masked input (survivors, U3) and who of U2 did not (dropped)
   (``UnmaskRequest``). Each survivor reveals its share of every survivor's self-mask seed
   and of every dropped client's mask key, never both for one client (``Reveal``). With t
   reveals the server rebuilds those secrets, removes the self masks and the pairwise masks
   toward the dropped, and reads the weighted sum and summed count (``RoundResult``).

A stage that leaves fewer than t clients abandons the round (``RoundAbandoned``). A client
refuses (``SecAggRefused``) anything that would let the server learn more than the sum.
Each client answers one reveal and t is above n/2, so even a server telling clients
different survivor lists cannot gather both shares of one client from honest clients. Not
covered: an active server that invents clients of its own (no PKI signs the advertised keys:
Bonawitz's signatures and consistency round are left out).
"""

from common.errors import RoundAbandoned, SecAggError, SecAggRefused
from common.secagg import messages
from common.secagg.client import ClientStage, SecAggClient
from common.secagg.messages import *  # noqa: F403  (the stage messages: messages.__all__)
from common.secagg.ring import RingSpec, error_bound
from common.secagg.server import SecAggServer, ServerStage

__all__ = [
    "ClientStage",
    "RingSpec",
    "RoundAbandoned",
    "SecAggClient",
    "SecAggError",
    "SecAggRefused",
    "SecAggServer",
    "ServerStage",
    "error_bound",
]
__all__ += messages.__all__
