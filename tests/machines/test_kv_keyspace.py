"""KeySpace: copy-on-write freezes keep frozen dicts immutable, and the live map always
equals a plain dict fed the same writes, iteration order included (snapshot bytes
depend on it)."""

import gc
import threading

from hypothesis import example, given, settings
from hypothesis import strategies as st

from kvraft.machines.keyspace import KeySpace

_KEYS = st.sampled_from([b"a", b"b", b"c", b""])  # few keys: many collisions
_VALUES = st.binary(min_size=1, max_size=2)


class _Holder:
    """Stands in for a snapshot view: anything weak-referenceable."""

    def __init__(self, items):
        self.items = items


_OPS = st.lists(st.one_of(
    st.tuples(st.just("put"), _KEYS, _VALUES),
    st.tuples(st.just("put"), _KEYS, _VALUES),
    st.tuples(st.just("delete"), _KEYS),
    st.tuples(st.just("freeze")),
    st.tuples(st.just("release"), st.integers(min_value=0, max_value=3)),
    st.tuples(st.just("thaw")),
    st.tuples(st.just("clear")),
), min_size=4, max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops=_OPS)
@example(ops=[("put", b"a", b"1"), ("put", b"b", b"1"), ("freeze",), ("delete", b"a"),
              ("put", b"c", b"1"), ("put", b"a", b"2"), ("release", 0), ("thaw",)])
def test_keyspace_behaves_like_a_dict_whatever_the_freezes(ops):
    space, model = KeySpace(), {}
    holders = []  # (holder, the items it must keep showing, in order)
    current = None  # the holder of the latest freeze, while the space still uses it
    for op, *args in ops:
        if op == "put":
            space.put(*args)
            model[args[0]] = args[1]
        elif op == "delete":
            assert space.delete(args[0]) == (model.pop(args[0], None) is not None)
        elif op == "freeze":
            current = space.freeze(_Holder)
            holders.append((current, list(model.items())))
        elif op == "release" and holders:
            holder, _ = holders.pop(args[0] % len(holders))
            if holder is current:
                current = None
            del holder
        elif op == "thaw":
            thawed = space.thaw_if_released()
            assert not (thawed and current is not None)
        elif op == "clear":
            space.clear()
            model.clear()
            current = None  # the held dict stays with its holder; the space moved on
        assert list(space.items()) == list(model.items())
        assert len(space) == len(model)
        assert list(space.keys()) == list(model)
        for key in (b"a", b"b", b"c", b"", b"zz"):
            assert space.get(key) == model.get(key)
        assert all(list(held.items.items()) == items for held, items in holders)
    del current, holders  # the last references: every freeze is released
    space.thaw_if_released()
    assert not space.frozen
    assert list(space.items()) == list(model.items())


def test_freeze_is_o1_and_thaws_once_the_holder_is_gone():
    space = KeySpace()
    space.put(b"k", b"v1")
    holder = space.freeze(_Holder)
    base = holder.items
    space.put(b"k", b"v2")
    space.put(b"n", b"new")
    assert base == {b"k": b"v1"}  # the same dict object, untouched
    assert not space.thaw_if_released()
    del holder
    gc.collect()
    assert space.thaw_if_released()
    assert not space.frozen
    assert base == {b"k": b"v2", b"n": b"new"}  # folded back into the same dict


def test_a_second_freeze_while_the_first_is_held_flattens_into_a_new_dict():
    space = KeySpace()
    space.put(b"a", b"1")
    first = space.freeze(_Holder)
    space.put(b"a", b"2")
    second = space.freeze(_Holder)
    assert second.items is not first.items
    assert first.items == {b"a": b"1"} and second.items == {b"a": b"2"}
    space.delete(b"a")
    assert first.items == {b"a": b"1"} and second.items == {b"a": b"2"}
    assert space.get(b"a") is None


def test_holder_released_from_another_thread_is_thawed_on_the_owner_thread():
    space = KeySpace()
    space.put(b"a", b"1")
    box = [space.freeze(_Holder)]
    space.put(b"b", b"2")

    def serialize_and_drop():
        assert dict(box[0].items) == {b"a": b"1"}
        box.clear()

    worker = threading.Thread(target=serialize_and_drop)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert space.thaw_if_released()
    assert list(space.items()) == [(b"a", b"1"), (b"b", b"2")]
