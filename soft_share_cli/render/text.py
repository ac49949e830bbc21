"""The one place that makes strings safe for a terminal: text from a file is data, never commands.

Keys, layer names, metadata, class-folder names and the error messages that quote them come from
files someone else wrote. Printed raw, a name can set the window title, clear the screen, plant
an OSC 8 hyperlink, reorder what is shown (bidi overrides) or, through rich, be read as markup.
:func:`inert` replaces every character that a terminal would act on with a visible escape, the
way Python writes it in a string literal (``\\x1b``, ``\\u202e``), so the name is still shown and
can be told apart; ordinary text, non-Latin letters and emoji included, is returned unchanged.

The rendering rule (see :mod:`soft_share_cli.render.tables`): every string reaches rich through
:func:`inert` and with markup and emoji codes off, so ``[link=...]`` or ``:smile:`` in a name is
printed as written. ``--json`` output keeps the exact strings: :func:`json.dumps` escapes them.
"""

from __future__ import annotations

import unicodedata

# Explicit directional formatting characters (embeddings, overrides, isolates, marks): all of
# them are format characters (Cf), escaped below; listed for tests and readers.
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)

# Characters a terminal (or a reader) may act on rather than show: controls (Cc: C0 with TAB and
# LF, DEL, C1, where U+009B is a one-byte CSI), format characters (Cf: bidi controls, zero-width
# characters, the invisible "tag" letters), the line and paragraph separators (Zl, Zp) and lone
# surrogates (Cs: a damaged pickle can hold them, and they cannot even be encoded).
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_SHORT = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(char: str) -> str:
    if unicodedata.category(char) not in UNSAFE_CATEGORIES:
        return char
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def inert(text: object) -> str:
    """``text`` (``str(text)`` if not a string), every control or format character escaped.

    ESC becomes the four characters ``\\x1b``, U+202E the six characters ``\\u202e``; newlines
    and tabs are escaped as well (``\\n``, ``\\t``), so a name stays on its line and in its
    table cell. Backslashes and rich markup are left as they are: markup is the renderer's
    business (it never interprets markup, see :mod:`soft_share_cli.render.tables`). Idempotent on
    its
    own output, the identity on ordinary text.
    """
    if not isinstance(text, str):
        text = str(text)
    if text.isprintable():  # the common case, fast: no Cc, Cf, Zl, Zp, Cs (nor Cn, Co, Zs)
        return text
    return "".join(map(_escape, text))


def inert_lines(text: str) -> str:
    """``text`` made inert line by line: its own newlines kept, everything else escaped."""
    return "\n".join(inert(line) for line in text.split("\n"))


def one_line(message: str) -> str:
    """``message`` as one inert line: line breaks become spaces, the rest is :func:`inert`.

    For ``Error:`` lines: library exceptions quoted in a message may span several lines.
    """
    return inert(" ".join(line.strip() for line in message.splitlines() if line.strip()))
