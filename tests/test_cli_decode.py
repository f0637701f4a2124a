"""``pbfast decode``: run as ``python -m pbfast decode`` on PB and foolscap byte streams."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pbfast
from helpers import load_vectors
from pbfast.banana import Tokenizer

LINE = re.compile(r" *(\d+)  ( *)(\S.*)")


def decode(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pbfast", "decode", *args], input=stdin, capture_output=True, timeout=30
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode("utf-8"), result.stderr.decode("utf-8")
    )


def parsed(stdout: str) -> list[tuple[int, int, str]]:
    """(offset, depth, text) of each output line."""
    out = []
    for line in stdout.splitlines():
        m = LINE.fullmatch(line)
        assert m is not None, line
        out.append((int(m[1]), len(m[2]) // 2, m[3]))
    return out


def write(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "capture.bin"
    path.write_bytes(data)
    return str(path)


def assert_one_line_error(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("pbfast decode: ")
    assert text in result.stderr


MESSAGES = [
    {"a": [1, 2.5, "x"]},
    ("message", 1, b"root", "echo", 1, [b"tuple"], {"k": None}),
    [-3, 2**70, b"y" * 100, {1, 2}],
]
PB_STREAM = b"".join(pbfast.dumps(m) for m in MESSAGES)


def foolscap_stream() -> bytes:
    """What a stock foolscap client sent to a Tub: calls, an ABORTed call, PINGs at the end."""
    stream = load_vectors("foolscap_messages.json")["streams"][0]
    return b"".join(bytes.fromhex(step["hex"]) for step in stream["steps"])


def test_pb_stream(tmp_path: Path) -> None:
    result = decode(write(tmp_path, PB_STREAM))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = parsed(result.stdout)
    tokens = Tokenizer("pb").feed(PB_STREAM)
    assert [offset for offset, _, _ in lines] == [offset for offset, _, _ in tokens]
    assert [text.split()[0] for _, _, text in lines] == [kind for _, kind, _ in tokens]
    assert lines[:6] == [
        (0, 0, "LIST 2 (dictionary)"),
        (2, 1, "VOCAB 5 b'dictionary'"),
        (4, 1, "LIST 2"),
        (6, 2, "LIST 2 (unicode)"),
        (8, 3, "STRING b'unicode'"),
        (17, 3, "STRING b'a'"),
    ]
    assert (26, 3, "FLOAT 2.5") in lines
    # Each message starts back at depth 0, at its own offset.
    second = len(pbfast.dumps(MESSAGES[0]))
    third = second + len(pbfast.dumps(MESSAGES[1]))
    assert [(offset, text) for offset, depth, text in lines if depth == 0] == [
        (0, "LIST 2 (dictionary)"),
        (second, "LIST 8 (tuple)"),
        (third, "LIST 5 (list)"),
    ]
    texts = [text for _, _, text in lines]
    assert "NEG -3" in texts
    assert f"LONGINT {2**70}" in texts
    assert "STRING " + repr(b"y" * 64) + "…(100 bytes)" in texts


def test_foolscap_stream(tmp_path: Path) -> None:
    data = foolscap_stream()
    result = decode("--dialect", "foolscap", write(tmp_path, data))
    assert result.returncode == 0, result.stderr
    lines = parsed(result.stdout)
    tokens = Tokenizer("foolscap").feed(data)
    assert [offset for offset, _, _ in lines] == [offset for offset, _, _ in tokens]
    assert lines[:5] == [
        (0, 0, "OPEN 0 (call)"),
        (2, 1, "VOCAB 11 b'call'"),
        (4, 1, "INT 1"),
        (6, 1, "INT 0"),
        (8, 1, "STRING b'getReferenceByName'"),
    ]
    assert (57, 1, "CLOSE 1 (arguments)") in lines
    assert (59, 0, "CLOSE 0 (call)") in lines
    # Every step of the capture starts a call at depth 0.
    steps = load_vectors("foolscap_messages.json")["streams"][0]["steps"]
    top = {offset: text for offset, depth, text in lines if depth == 0}
    for step in steps[:-1]:
        assert top[step["offset"]] == f"OPEN {step['first_open_id']} (call)"
    texts = [text for _, _, text in lines]
    assert "ABORT 39" in texts
    assert texts[-3:] == ["PING 0"] * 3


def test_stdin() -> None:
    result = decode("-", stdin=PB_STREAM)
    assert result.returncode == 0, result.stderr
    assert parsed(result.stdout)[0] == (0, 0, "LIST 2 (dictionary)")
    assert len(parsed(result.stdout)) == len(Tokenizer("pb").feed(PB_STREAM))


def test_none_dialect(tmp_path: Path) -> None:
    data = pbfast.dumps(["x"], dialect="none")
    result = decode("--dialect", "none", write(tmp_path, data))
    assert result.returncode == 0, result.stderr
    assert parsed(result.stdout)[:2] == [(0, 0, "LIST 2 (list)"), (2, 1, "STRING b'list'")]


def test_bad_byte(tmp_path: Path) -> None:
    bad = 38  # the type byte of b"unicode" in ["unicode", "x"], the third element of a list
    assert PB_STREAM[bad] == 0x82
    data = PB_STREAM[:bad] + b"\x99" + PB_STREAM[bad + 1 :]
    result = decode(write(tmp_path, data))
    assert_one_line_error(result, f"byte {bad}: invalid type byte 0x99")
    lines = parsed(result.stdout)
    before = Tokenizer("pb").feed(PB_STREAM[:bad])
    assert [offset for offset, _, _ in lines] == [offset for offset, _, _ in before]
    assert lines[-1] == (35, 3, "LIST 2")


def test_foolscap_close_mismatch(tmp_path: Path) -> None:
    data = bytes([0x00, 0x88, 0x04, 0x87, 0x01, 0x81, 0x05, 0x89])  # OPEN 0 list 1 CLOSE 5
    result = decode("--dialect", "foolscap", write(tmp_path, data))
    assert_one_line_error(result, "byte 6: CLOSE(5) does not match the innermost OPEN(0)")
    assert parsed(result.stdout) == [(0, 0, "OPEN 0 (list)"), (2, 1, "VOCAB 4 b'list'"), (4, 1, "INT 1")]


def test_truncated_pb(tmp_path: Path) -> None:
    first = pbfast.dumps(MESSAGES[0])
    result = decode(write(tmp_path, first[:30]))  # inside FLOAT 2.5, which starts at 26
    assert_one_line_error(
        result, "the stream ends at byte 30, in the middle of the token at byte 26, inside 3 open lists"
    )
    assert parsed(result.stdout)[-1] == (24, 3, "INT 1")
    result = decode(write(tmp_path, first[:24]))  # between tokens
    assert_one_line_error(result, "the stream ends at byte 24, inside 3 open lists")


def test_truncated_foolscap(tmp_path: Path) -> None:
    data = foolscap_stream()[:100]
    result = decode("--dialect", "foolscap", write(tmp_path, data))
    assert_one_line_error(
        result,
        "the stream ends at byte 100, in the middle of the token at byte 96, "
        "inside 1 open sequence: 4 (call)",
    )


def test_missing_file(tmp_path: Path) -> None:
    result = decode(str(tmp_path / "absent.bin"))
    assert_one_line_error(result, "cannot read")
    assert "No such file or directory" in result.stderr
    assert result.stdout == ""


def test_bad_dialect(tmp_path: Path) -> None:
    result = decode("--dialect", "http", write(tmp_path, PB_STREAM))
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
    assert "Traceback" not in result.stderr


def test_help() -> None:
    result = decode("--help")
    assert result.returncode == 0
    assert "--dialect" in result.stdout
    assert "byte offset" in result.stdout
    assert "LIST 2 (dictionary)" in result.stdout


def test_reader_goes_away(tmp_path: Path) -> None:
    # Far more output than a pipe holds, so the writes fail once the reader has closed its end.
    path = write(tmp_path, pbfast.dumps(list(range(20000))))
    with subprocess.Popen(
        [sys.executable, "-m", "pbfast", "decode", path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().strip() == b"0  LIST 20001 (list)"
        proc.stdout.close()
        stderr = proc.stderr.read()
        assert proc.wait(timeout=30) == 0
    assert stderr == b""
