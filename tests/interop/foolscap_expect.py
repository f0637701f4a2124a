"""What the client scenarios of ``foolscap_peer.py`` must report, whoever serves the root.

A root that honours the contract of ``foolscap_peer.PeerRoot`` (its method list is in the
module docstring there) gives the same RESULTs whether it is stock foolscap (the self-test,
``test_foolscap_peer.py``) or pbfast; the ``check_*`` functions assert exactly that, one per
scenario. Details that depend on the implementation rather than on the contract (Python class
names and reprs in error messages, which objects a Tub registers by name on its own) are left
to the callers; ``STOCK_*`` constants record what stock foolscap 24.9 says there.

Values arrive in the tagged form of ``foolscap_peer.tag``; the expectations below are written
out by hand (``_int(5)``, ``_str("x")``, ...) rather than computed with it, so a change in the
peer's encoding shows up here.

Like ``peers.py`` this is imported as a plain module (``from foolscap_expect import ...``).
"""

from __future__ import annotations

import json
from typing import Any

# The message stock foolscap puts in the error block when a client's hello claims a TubID that
# its certificate does not hash to, or claims one without a certificate: the real reason
# ("TubID mismatch", or Twisted's "did not have peer certificate") only goes to its log.
STOCK_NEGOTIATION_ERROR = "internal server error, see logs"
# str() of foolscap.api.Violation("not allowed"), as stock foolscap sends it.
STOCK_VIOLATION_VALUE = "Violation: ('not allowed',)"
# What stock foolscap's failure reports contain: full tracebacks (unsafeTracebacks defaults on).
STOCK_TRACEBACK = "full"

EXCEPTION_PARENTS = ["builtins.Exception", "builtins.BaseException", "builtins.object"]
POINT_TYPE = "example.pbfast/Point"


# --------------------------------------------------------------------------------------------
# tagged values
# --------------------------------------------------------------------------------------------


def _int(n: int) -> dict:
    return {"type": "int", "value": str(n)}


def _float(text: str) -> dict:
    return {"type": "float", "value": text}


def _bytes(b: bytes) -> dict:
    return {"type": "bytes", "hex": b.hex()}


def _str(s: str) -> dict:
    return {"type": "str", "value": s}


def _bool(b: bool) -> dict:
    return {"type": "bool", "value": b}


def _sort_key(item: Any) -> str:
    return json.dumps(item, sort_keys=True)


def _seq(kind: str, *items: dict) -> dict:
    """A list, tuple, set or frozenset; set items sorted as ``tag`` sorts them."""
    listed = sorted(items, key=_sort_key) if kind in ("set", "frozenset") else list(items)
    return {"type": kind, "items": listed}


def _dict(*pairs: tuple[dict, dict]) -> dict:
    """A dict; items sorted as ``tag`` sorts them (by the JSON text of the key)."""
    return {"type": "dict", "items": sorted((list(pair) for pair in pairs), key=lambda kv: _sort_key(kv[0]))}


def _decimal(text: str) -> dict:
    return {"type": "decimal", "value": text}


NONE = {"type": "none"}

# The ``basic`` scenario's values, by name, in the order they are sent.
BASIC_VALUES: dict[str, dict] = {
    "none": NONE,
    "true": _bool(True),
    "false": _bool(False),
    "int_0": _int(0),
    "int_1": _int(1),
    "int_neg_1": _int(-1),
    "int_2_31_minus_1": _int(2**31 - 1),
    "int_2_31": _int(2**31),
    "int_neg_2_31": _int(-(2**31)),
    "int_neg_2_31_minus_1": _int(-(2**31) - 1),
    "int_2_64": _int(2**64),
    "int_neg_2_70": _int(-(2**70)),
    "float": _float("1.5"),
    "float_neg_zero": _float("-0.0"),
    "float_tiny": _float("-2.25e-300"),
    "float_inf": _float("inf"),
    "float_nan": _float("nan"),
    "bytes_empty": _bytes(b""),
    "bytes": _bytes(b"bytes\x00\xff"),
    "bytes_vocab_word": _bytes(b"list"),
    "str_empty": _str(""),
    "str": _str("caf\u00e9 \u2713 \U0001f600"),
    "list_empty": _seq("list"),
    "list": _seq("list", _int(1), _seq("list", _int(2), _seq("list", _int(3), _seq("list")))),
    "tuple_empty": _seq("tuple"),
    "tuple": _seq("tuple", _int(1), _str("two"), _seq("tuple", _float("3.0"), NONE)),
    "dict_empty": _dict(),
    "dict_str_keys": _dict(
        (_str(""), NONE),
        (_str("a"), _int(1)),
        (_str("\u00fc"), _seq("list", _bytes(b"x"))),
    ),
    "dict_bytes_keys": _dict((_bytes(b"k"), _int(1)), (_bytes(b"\xff"), _str("v"))),
    "dict_int_keys": _dict((_int(-2), _str("minus two")), (_int(1), _str("one"))),
    "set_empty": _seq("set"),
    "set": _seq("set", _int(1), _int(2), _int(3)),
    "frozenset": _seq("frozenset", _bytes(b"a"), _bytes(b"b")),
    "nested": _dict(
        (
            _str("k"),
            _seq(
                "list",
                _seq("tuple", _int(1), _seq("set", _int(2), _int(3))),
                _dict((_str("inner"), _seq("frozenset", _int(4)))),
                _seq("list", _bytes(b"a"), _str("b")),
            ),
        ),
    ),
    "decimal": _decimal("1.25"),
    "decimal_small": _decimal("-0.000001"),
    "decimal_big": _decimal("12345678901234567890.123456789"),
    "decimal_exp": _decimal("1E+10"),
}


# --------------------------------------------------------------------------------------------
# checks, one per scenario
# --------------------------------------------------------------------------------------------


def check_basic(result: dict[str, Any]) -> None:
    """Every value came back as sent, one by one and all in one list; sharing and cycles kept;
    keyword arguments work."""
    names = [entry["name"] for entry in result["values"]]
    assert names == list(BASIC_VALUES), names
    for entry in result["values"]:
        name = entry["name"]
        assert entry["sent"] == BASIC_VALUES[name], (name, entry["sent"])
        assert entry["received"] == entry["sent"], (name, entry["received"])
    assert result["all_at_once"]["sent"] == _seq("list", *BASIC_VALUES.values())
    assert result["all_at_once"]["received"] == result["all_at_once"]["sent"]

    pair = _seq("list", _int(1), _int(2))
    assert result["shared"] == {"received": _seq("list", pair, pair), "identity_preserved": True}
    assert result["cycle"] == {"received": _seq("list", {"type": "cycle"}), "identity_preserved": True}
    assert result["add"] == {"positional": _int(5), "keywords": _int(5), "mixed": _str("xy")}


def _checks(*matching: str) -> dict[str, bool]:
    """The ``check`` map of a failure report: True exactly for `matching`."""
    names = (
        "builtins.ValueError",
        "builtins.KeyError",
        "builtins.LookupError",
        "builtins.AttributeError",
        "builtins.TypeError",
        "builtins.Exception",
        "foolscap.tokens.Violation",
        "interop.PeerError",
    )
    return {name: name in matching for name in names}


def failure(kind: str, value: str, *, extra_parents: tuple[str, ...] = (), traceback: str) -> dict:
    """The failure report of a remote exception of class `kind` (qualified name)."""
    parents = [kind, *extra_parents, *EXCEPTION_PARENTS]
    return {
        "failed": True,
        "copied": True,
        "type": kind,
        "value": value,
        "parents": parents,
        "check": _checks(*parents),
        "traceback": traceback,
    }


def check_errors(result: dict[str, Any], *, traceback: str = STOCK_TRACEBACK) -> dict[str, dict]:
    """The failures of ``fail(kind)`` by the contract, exactly; for ``violation``,
    ``missing_method`` and ``wrong_arguments`` (whose texts name implementation classes) the
    type, parents and checks, and the reports themselves are returned for the caller to check
    their ``value``. `traceback` is the kind of traceback the server sends."""
    value_error = "builtins.ValueError"
    assert result["value"] == failure(value_error, "bad value", traceback=traceback)
    assert result["custom"] == failure("interop.PeerError", "expected", traceback=traceback)
    assert result["key"] == failure(
        "builtins.KeyError", "'missing'", extra_parents=("builtins.LookupError",), traceback=traceback
    )
    assert result["later"] == failure(value_error, "too late", traceback=traceback)
    loose = {}
    for key, kind in (
        ("violation", "foolscap.tokens.Violation"),
        ("missing_method", "builtins.AttributeError"),
        ("wrong_arguments", "builtins.TypeError"),
    ):
        report = dict(result[key])
        value = report.pop("value")
        expected = failure(kind, "", traceback=traceback)
        del expected["value"]
        assert report == expected, (key, report)
        loose[key] = {"value": value}
    assert "not allowed" in loose["violation"]["value"]
    assert "no_such_method" in loose["missing_method"]["value"]
    assert result["after"] == {"failed": False, "result": _str("still fine")}
    return loose


def check_references(result: dict[str, Any]) -> None:
    """References both ways, identity on return, calls back, an object by its FURL, and the
    reference tables of both Tubs before and after both sides dropped their references."""
    assert result["child"] == {"name": _str("alice"), "echo": _seq("list", _bytes(b"x"), _str("y"))}
    assert result["same_child_is_identical"] is True
    assert result["same_local_is_identical"] is True
    assert result["identical_local"] is True
    assert result["identical_child"] is True
    call_back = result["call_back"]
    assert call_back["hello"] == {"failed": False, "result": _str("hello pbfast")}
    assert call_back["add"] == {"failed": False, "result": _int(5)}
    # The missing method is on *our* (stock foolscap) object: foolscap's own error.
    missing = call_back["missing"]
    assert missing["failed"] is True
    assert missing["type"] == "builtins.AttributeError", missing
    assert "remote_nope" in missing["value"], missing
    assert result["new_object"] == {"same_tub": True, "name": _str("fresh")}
    assert result["keep"] == 1
    assert result["release"] == 1

    # The server exports its root, the child and the object fetched by FURL; it holds our local
    # object. Afterwards only the root is left, on both sides.
    before, after = result["tables_before"], result["tables_after"]
    assert {k: before[k] for k in ("exported", "imported", "gifts", "brokers")} == {
        "exported": 3,
        "imported": 1,
        "gifts": 0,
        "brokers": 1,
    }, before
    assert {k: after[k] for k in ("exported", "imported", "gifts", "brokers")} == {
        "exported": 1,
        "imported": 0,
        "gifts": 0,
        "brokers": 1,
    }, after
    assert result["client_tables_before"] == {"exported": 1, "imported": 3, "gifts": 0, "brokers": 1}
    assert result["client_tables_after"] == {"exported": 0, "imported": 1, "gifts": 0, "brokers": 1}


def _point(x: dict, y: dict) -> dict:
    return {"type": "copy", "copytype": POINT_TYPE, "state": {"x": x, "y": y}}


def check_copyables(result: dict[str, Any]) -> dict:
    """Copies by type name both ways; a copy of an unregistered type is refused with a
    Violation naming the type, and the connection survives. Returns the ``unknown`` report."""
    assert result["make_copy"] == {"class": "RemotePoint", "value": _point(_int(3), _int(-4))}
    assert result["make_copy_any"] == _point(_seq("list", _int(1), _bytes(b"x")), NONE)
    assert result["echo_copy"] == {"class": "RemotePoint", "value": _point(_int(5), _str("six"))}
    unknown = result["unknown"]
    assert unknown["failed"] is True
    assert unknown["type"] == "foolscap.tokens.Violation", unknown
    assert unknown["check"]["foolscap.tokens.Violation"] is True
    assert "example.pbfast/Unknown" in unknown["value"], unknown
    assert result["after"] == {"failed": False, "result": _str("still fine")}
    return unknown


def check_gift(result: dict[str, Any]) -> None:
    """The root called the third Tub's root through the gift, acknowledged the gift, and let go
    of its reference afterwards; everyone holds exactly what they should."""
    third = result["third_tubid"]
    assert result["take_gift"] == _dict((_str("hello"), _str("hello gift")), (_str("tubid"), _str(third)))
    # We hold the root and the third root, over two connections; no gift is outstanding.
    assert result["client_tables"] == {"exported": 0, "imported": 2, "gifts": 0, "brokers": 2}
    # The root talks to us and to the third Tub; only its root is exported (to us).
    root = result["root_tables"]
    assert {k: root[k] for k in ("exported", "imported", "gifts", "brokers")} == {
        "exported": 1,
        "imported": 0,
        "gifts": 0,
        "brokers": 2,
    }, root
    third_tables = result["third_tables"]
    assert {k: third_tables[k] for k in ("exported", "imported", "gifts", "brokers")} == {
        "exported": 1,
        "imported": 0,
        "gifts": 0,
        "brokers": 2,
    }, third_tables


def check_keepalive(result: dict[str, Any]) -> None:
    """The connection lived through more idle time than our disconnectTimeout: the peer
    answered our PINGs."""
    assert result == {
        "data_while_idle": True,
        "connected": True,
        "echo": {"failed": False, "result": _str("awake")},
        "same_broker": True,
    }


def check_parallel(result: dict[str, Any]) -> None:
    assert result == {"order": ["fast", "slow"], "echoes": True}


def check_bad_tubid(result: dict[str, Any]) -> None:
    """The server refused the unknown TubID in its plaintext reply (which stock foolscap's client
    quotes in its error)."""
    assert result["failed"] is True
    assert result["type"] == "foolscap.tokens.BananaError", result
    assert f"500 Internal Server Error: unknown TubID {result['wrong_tubid']}" in result["message"], result


def check_liar(result: dict[str, Any], server_tubid: str, *, error: str | None = None) -> None:
    """A lying client got the server's hello, then an error block, then a hang-up. `error`, if
    given, is the exact error text expected."""
    assert result["status"] == "HTTP/1.1 101 Switching Protocols", result
    assert result["tls"] is True
    assert result["claimed_tubid"] != result["cert_tubid"]
    hello, *rest = result["blocks"]
    assert hello["my-tub-id"] == server_tubid, result
    assert hello["banana-negotiation-range"] == "3 3"
    assert len(rest) == 1 and rest[0]["banana-decision-version"] == "1", result
    assert result["error"] == rest[0]["error"] and result["error"], result
    if error is not None:
        assert result["error"] == error, result
    assert result["closed"] is True


def check_honest_liar(result: dict[str, Any], server_tubid: str) -> None:
    """The same client telling the truth is accepted: the server's hello and, if the server is
    master (the greater TubID), its decision; no error, and the server keeps the connection."""
    assert result["status"] == "HTTP/1.1 101 Switching Protocols", result
    assert result["claimed_tubid"] == result["cert_tubid"]
    assert result["error"] is None, result
    assert result["closed"] is False, result
    hello, *rest = result["blocks"]
    assert hello["my-tub-id"] == server_tubid
    if server_tubid > result["claimed_tubid"]:
        assert len(rest) == 1, result
        assert rest[0]["banana-decision-version"] == "3"
        assert rest[0]["initial-vocab-table-index"] == "1 bb33"
        assert rest[0]["current-connection"].split()[0] == hello["my-incarnation"]
    else:
        assert rest == [], result  # the server waits for our decision
