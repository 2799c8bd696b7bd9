"""The federation's clients as Flower nodes: which node serves which client, message exchange with
them through the Grid, and the bytes that exchange moves.

A node is asked once which client's shard it holds (a QUERY message); a node of another federation,
an unknown client id, or a second node for one client is refused with one logged line. A query not
answered within one call's wait stays pending (its TTL is the round timeout) and is pulled again by
the next call, so a node that answers slower (a restarted SuperNode: Flower's SuperNode polls every
3 s) is still taken back. The server (`server_app.py`) only sees `exchange`, `wait_for`, `node_of`
and `reply_metrics`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from pfedhn_jax.flower import codec
from pfedhn_jax.signals import log

POLL_S = 0.05   # how often replies are pulled (Grid.send_and_receive sleeps 3 s between pulls)
KINDS = ("train", "evaluate", "query")


class Clients:
    """Client ids of one federation mapped to the Flower nodes that hold their shards.

    node_of: {client id: node id} of the clients now connected; wire: {kind: [messages, bytes down,
    bytes up]} of the serialized messages (codec.message_bytes), per message kind."""

    def __init__(self, grid: Grid, federation_id: str, num_clients: int, round_timeout: float):
        self.grid, self.fid, self.num_clients, self.round_timeout = grid, federation_id, num_clients, round_timeout
        self.node_of: dict[int, int] = {}
        self.wire: dict[str, list[int]] = {k: [0, 0, 0] for k in KINDS}
        self._refused: set[int] = set()
        self._asking: dict[int, str] = {}   # node id -> id of the query it has not answered yet

    def message(self, content: RecordDict, client: int, kind: str, step: int) -> Message:
        """A message of `kind` (a MessageType) for the node serving `client`."""
        return self._message(content, self.node_of[client], kind, step)

    def _message(self, content: RecordDict, node: int, kind: str, step: int) -> Message:
        return Message(content, node, kind, group_id=str(step), ttl=max(self.round_timeout, 1.0))

    def _push(self, messages: list[Message], kind: str) -> list[str]:
        """Push `messages` and count them as `kind`: their message ids ('' where Flower refused one)."""
        sent = list(self.grid.push_messages(messages))
        w = self.wire[kind]
        w[0] += len(messages)
        w[1] += sum(codec.message_bytes(m) for m in messages)
        return sent

    def exchange(self, messages: list[Message], kind: str, timeout: float) -> dict[int, Message]:
        """Push, then pull until every message has its reply or `timeout` passes: {index: reply}."""
        pending = {mid: i for i, mid in enumerate(self._push(messages, kind)) if mid}
        replies: dict[int, Message] = {}
        end = time.monotonic() + timeout
        while pending and time.monotonic() < end:
            for r in self.grid.pull_messages(list(pending)):
                i = pending.pop(r.metadata.reply_to_message_id, None)
                if i is not None:
                    replies[i] = r
                    self.wire[kind][2] += codec.message_bytes(r)
            if pending:
                time.sleep(POLL_S)
        return replies

    def discover(self, timeout: float | None = None) -> None:
        """Map clients to the nodes now connected: ask every node not yet known for its client id,
        and take the answers that arrive within `timeout` (default: the round timeout)."""
        live = set(self.grid.get_node_ids())
        self.node_of = {c: n for c, n in self.node_of.items() if n in live}
        self._asking = {n: mid for n, mid in self._asking.items() if n in live}
        new = sorted(live - set(self.node_of.values()) - self._refused - set(self._asking))
        if new:
            query = RecordDict({"config": ConfigRecord({"federation_id": self.fid})})
            sent = self._push([self._message(query, n, MessageType.QUERY, -1) for n in new], "query")
            self._asking.update({n: mid for n, mid in zip(new, sent) if mid})
        end = time.monotonic() + (self.round_timeout if timeout is None else timeout)
        while self._asking:
            node_with = {mid: n for n, mid in self._asking.items()}
            for r in self.grid.pull_messages(list(node_with)):
                n = node_with.get(r.metadata.reply_to_message_id)
                if n is None:
                    continue
                del self._asking[n]   # answered (or expired): a node without a client is asked again next call
                self.wire["query"][2] += codec.message_bytes(r)
                self._admit(n, r)
            if not self._asking or time.monotonic() >= end:
                return
            time.sleep(POLL_S)

    def _admit(self, n: int, r: Message) -> None:
        """Map node n to the client its query reply names, or refuse it (one line)."""
        if r.has_error():
            log(f"flower: node {n} failed to say which client it holds: {r.error.reason}")
            return
        c = r.content["client"]
        cid, fid = int(c["client_id"]), str(c["federation_id"])
        if fid != self.fid or not 0 <= cid < self.num_clients:
            log(f"flower: refused node {n}: its shard is client {cid} of federation {fid}, not of {self.fid}")
            self._refused.add(n)
        elif cid in self.node_of and self.node_of[cid] != n:
            log(f"flower: refused node {n}: client {cid} is already served by node {self.node_of[cid]}")
            self._refused.add(n)
        else:
            self.node_of[cid] = n

    def wait_for(self, clients: Iterable[int], wait: float) -> list[int]:
        """Discover until every client in `clients` has a node or `wait` s pass; returns the missing ones."""
        clients = list(clients)
        end = time.monotonic() + wait
        last_log = 0.0
        while True:
            self.discover(timeout=min(self.round_timeout, max(end - time.monotonic(), 1.0)))
            missing = [c for c in clients if c not in self.node_of]
            if not missing or time.monotonic() >= end:
                return missing
            if time.monotonic() - last_log > 10:
                log(f"flower: waiting for {len(missing)} client(s) to connect: {missing[:10]}")
                last_log = time.monotonic()
            time.sleep(0.5)

    def reply_metrics(self, reply: Message | None, cid: int, step: int | None = None, late: str = "",
                      timeout: float | None = None):
        """The metrics record of client cid's reply (for round `step`, when given); BadReply, in words
        for the log, when there is none, it is an error, or it answers for another client or round."""
        if reply is None:
            raise codec.BadReply(f"sent no reply within {self.round_timeout if timeout is None else timeout:g} s{late}")
        if reply.has_error():
            raise codec.BadReply(f"failed: {reply.error.reason}")
        m = reply.content["metrics"]
        if int(m["client_id"]) != cid:
            raise codec.BadReply(f"replied for client {m['client_id']}")
        if step is not None and int(m["step"]) != step:
            raise codec.BadReply(f"replied for client {m['client_id']} round {int(m['step']) + 1}")
        return m
