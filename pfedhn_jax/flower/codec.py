"""Pytrees in and out of Flower records, the checks a reply must pass, and bytes on the wire.

A generated θ (or a difference δ) travels as one `ArrayRecord`, one `Array` per leaf, named by
its path in the pytree (`['conv1']['kernel']`). A reply is decoded only against the template of
what was sent: same names, shapes and dtype (float32), every value finite; anything else is a
`BadReply` whose message names what differs, and the server refuses the reply.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flwr.app import Array, ArrayRecord, Message


class BadReply(ValueError):
    """A client's reply that the server refuses (wrong names, shape, dtype, or non-finite values)."""


def leaf_names(tree: Any) -> list[str]:
    return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def one_client(shapes: Any) -> Any:
    """Zeros shaped like one client's slice of `shapes` (a pytree of (clients, ...) shapes)."""
    return jax.tree.map(lambda s: np.zeros(s.shape[1:], s.dtype), shapes)


def theta_template(alg: Any) -> Any:
    """Zeros shaped like one client's generated θ: the template θ and δ are decoded against."""
    hnet = alg.hnet
    return one_client(jax.eval_shape(hnet.apply, jax.eval_shape(hnet.init, jax.random.key(0)),
                                     np.zeros((1,), np.int32)))


def to_record(tree: Any) -> ArrayRecord:
    """A pytree of arrays as an ArrayRecord (host copies, exact bytes)."""
    names = leaf_names(tree)
    return ArrayRecord({n: Array(np.ascontiguousarray(np.asarray(x))) for n, x in zip(names, jax.tree.leaves(tree))})


def from_record(record: ArrayRecord, template: Any, what: str, finite: bool = True) -> Any:
    """The pytree of `template`'s structure held in `record`; BadReply when anything differs."""
    if not isinstance(record, ArrayRecord):
        raise BadReply(f"{what}: expected an ArrayRecord, got {type(record).__name__}")
    names = leaf_names(template)
    leaves = jax.tree.leaves(template)
    got = set(record.keys())
    if got != set(names):
        missing, extra = sorted(set(names) - got), sorted(got - set(names))
        raise BadReply(f"{what}: arrays differ from the ones sent (missing {missing[:3]}, unexpected {extra[:3]})")
    out = []
    for n, t in zip(names, leaves):
        a = record[n]
        shape, dtype = tuple(t.shape), np.dtype(t.dtype)
        if tuple(a.shape) != shape:
            raise BadReply(f"{what}: {n} has shape {tuple(a.shape)}, expected {shape}")
        if a.dtype != dtype.name:
            raise BadReply(f"{what}: {n} has dtype {a.dtype}, expected {dtype.name}")
        try:
            x = a.numpy()
        except Exception as e:  # bytes that do not decode as the declared array
            raise BadReply(f"{what}: {n} does not decode: {e}") from None
        if x.shape != shape or x.dtype != dtype:
            raise BadReply(f"{what}: {n} decodes as {x.dtype} {x.shape}, expected {dtype.name} {shape}")
        if finite and not np.isfinite(x).all():
            raise BadReply(f"{what}: {n} holds {int((~np.isfinite(x)).sum())} non-finite values")
        out.append(x)
    return jax.tree.unflatten(jax.tree.structure(template), out)


def scalar(value: Any, what: str, finite: bool = True) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise BadReply(f"{what}: not a number ({value!r})") from None
    if finite and not np.isfinite(v):
        raise BadReply(f"{what}: non-finite ({v})")
    return v


def message_bytes(message: Message) -> int:
    """Serialized size of a message as Flower sends it: the message object and every object it
    carries (records, arrays, array chunks), each as Flower deflates it for the wire."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())
