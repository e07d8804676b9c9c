"""KEYS glob matching: compiled patterns agree with a line-by-line port of Redis's
``stringmatchlen`` (the naive, exponential reference) and stay fast on patterns that
make the reference blow up."""

import signal
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvraft.machines.keypattern import KeyPattern, _compile_regex, _tokenize


def redis_stringmatch(pattern: bytes, string: bytes) -> bool:
    """Redis util.c stringmatchlen (nocase=0), ported literally with indices.

    Bytes compare unsigned (see the keypattern module docstring). ``p``/``s`` index the
    pattern and the string; ``pattern[p]`` past the end reads as NUL, like the C string
    terminator.
    """
    skip_longer = [False]  # Redis's skipLongerMatches

    def at(i):
        return pattern[i] if i < len(pattern) else 0

    def match(p, s):
        plen, slen = len(pattern) - p, len(string) - s
        while plen and slen:
            c = pattern[p]
            if c == ord("*"):
                while plen and at(p + 1) == ord("*"):
                    p += 1
                    plen -= 1
                if plen == 1:
                    return True
                while slen:
                    if match(p + 1, s):
                        return True
                    if skip_longer[0]:
                        return False
                    s += 1
                    slen -= 1
                # The rest matches nowhere in this suffix, so no earlier star can help.
                skip_longer[0] = True
                return False
            elif c == ord("?"):
                s += 1
                slen -= 1
            elif c == ord("["):
                p += 1
                plen -= 1
                negate = at(p) == ord("^")
                if negate:
                    p += 1
                    plen -= 1
                matched = False
                while True:
                    if at(p) == ord("\\") and plen >= 2:
                        p += 1
                        plen -= 1
                        if pattern[p] == string[s]:
                            matched = True
                    elif at(p) == ord("]"):
                        break
                    elif plen == 0:
                        p -= 1
                        plen += 1
                        break
                    elif plen >= 3 and pattern[p + 1] == ord("-"):
                        start, end = pattern[p], pattern[p + 2]
                        if start > end:
                            start, end = end, start
                        p += 2
                        plen -= 2
                        if start <= string[s] <= end:
                            matched = True
                    elif pattern[p] == string[s]:
                        matched = True
                    p += 1
                    plen -= 1
                if negate:
                    matched = not matched
                if not matched:
                    return False
                s += 1
                slen -= 1
            else:
                if c == ord("\\") and plen >= 2:
                    p += 1
                    plen -= 1
                if pattern[p] != string[s]:
                    return False
                s += 1
                slen -= 1
            p += 1
            plen -= 1
            if slen == 0:
                while at(p) == ord("*") and plen:
                    p += 1
                    plen -= 1
                break
        return plen == 0 and slen == 0

    return match(0, 0)


@pytest.mark.parametrize("pattern, key, expected", [
    (b"h?llo", b"hello", True),
    (b"h?llo", b"hllo", False),
    (b"h*llo", b"hllo", True),
    (b"h*llo", b"heeeello", True),
    (b"h[ae]llo", b"hallo", True),
    (b"h[ae]llo", b"hillo", False),
    (b"h[^e]llo", b"hallo", True),
    (b"h[^e]llo", b"hello", False),
    (b"h[a-b]llo", b"hbllo", True),
    (b"h[b-a]llo", b"hbllo", True),  # reversed range
    (b"h\\*llo", b"h*llo", True),
    (b"h\\*llo", b"hello", False),
    (b"[]", b"]", False),  # ] right after [ closes: an empty class
    (b"[]a]", b"a]", False),  # [] then literal "a]": the empty class never matches
    (b"[^]", b"x", True),  # negated empty class: any one byte
    (b"[a-]", b"^", True),  # range a..] (Redis looks ahead two bytes for a range)
    (b"[a-]", b"-", False),
    (b"[\\]]", b"]", True),
    (b"[abc", b"b", True),  # unclosed class runs to the end
    (b"[", b"[", False),
    (b"x\\", b"x\\", True),  # a trailing backslash is literal
    (b"*", b"", False),  # only the empty pattern matches the empty key
    (b"", b"", True),
    (b"", b"a", False),
    (b"a**b", b"ab", True),
    (b"*\x00*", b"a\x00b", True),  # binary safe
    (b"[\x80-\xff]", b"\xc3", True),
])
def test_known_cases_agree_with_redis(pattern, key, expected):
    assert redis_stringmatch(pattern, key) is expected  # the reference itself
    assert KeyPattern(pattern).matches(key) is expected


_PATTERN_BYTES = st.sampled_from(b"ab*?[]^-\\\x00\xff")
# Whole fragments too, so class quirks ("[a-]", "[]", "[^") show up often enough.
_PATTERN_PARTS = st.one_of(
    _PATTERN_BYTES.map(lambda byte: bytes((byte,))),
    st.sampled_from([b"[a-b]", b"[b-a]", b"[^a]", b"[a-]", b"[]", b"[^]", b"[\\]", b"\\*",
                     b"[-a]", b"[a\\-b]", b"*a*", b"[\x00-a]"]),
)
_PATTERNS = st.lists(_PATTERN_PARTS, max_size=6).map(b"".join)
_KEY_BYTES = st.sampled_from(b"ab-]^[\\*\x00\xff")


@settings(max_examples=400, deadline=None)
@given(pattern=_PATTERNS,
       keys=st.lists(st.lists(_KEY_BYTES, max_size=8).map(bytes), max_size=12))
def test_random_patterns_agree_with_redis(pattern, keys):
    compiled = KeyPattern(pattern)
    expected = [key for key in keys if redis_stringmatch(pattern, key)]
    assert [key for key in keys if compiled.matches(key)] == expected
    assert list(compiled.filter(keys)) == expected


@given(pattern=_PATTERNS)
def test_literal_is_set_exactly_when_no_wildcard_remains(pattern):
    compiled = KeyPattern(pattern)
    if compiled.literal is None:
        return
    assert compiled.matches(compiled.literal)
    for other in (compiled.literal + b"a", b"a" + compiled.literal, compiled.literal[1:]):
        if other != compiled.literal:
            assert not compiled.matches(other)


def test_middle_segments_are_atomic_so_matching_cannot_backtrack():
    regex = _compile_regex(_tokenize(b"a*b?*[cd]*e")).pattern
    assert regex == b"a(?>.*?b.)(?>.*?[\\x63-\\x64]).*e\\Z"


class _TimeoutError(Exception):
    pass


def test_many_stars_match_in_polynomial_time():
    """Redis's recursive matcher explores every way to place 40 stars over 20 000
    bytes; the compiled pattern scans once per segment. An interval timer turns a
    regression (which would run for ages) into a failure."""
    def on_alarm(signum, frame):
        raise _TimeoutError()

    pattern = KeyPattern(b"*a" * 40 + b"*b")
    key = b"a" * 20_000
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 5.0)
    try:
        started = time.perf_counter()
        assert not pattern.matches(key)
        assert pattern.matches(key + b"b")
        elapsed = time.perf_counter() - started
    except _TimeoutError:
        pytest.fail("matching 40 stars against 20 000 bytes took over 5 s: backtracking")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert elapsed < 1.0
