"""Find and redact secrets before any text can reach a prompt, a cache or a log.

Two kinds of evidence mark a secret: the shape of the value itself (an AWS key
id, a GitHub token, a JWT, a private key block...) and the name it is
assigned to (`password = "..."`, `API_TOKEN=...`, `"client_secret": "..."`).
Only the value is replaced, so the surrounding code still reads naturally,
and line breaks inside a value are kept, so line numbers still hold.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import PurePath

from keystroke.engine import languages

PLACEHOLDER = "REDACTED"


@dataclass(frozen=True)
class Secret:
    """A secret value at text[start:end]."""

    start: int
    end: int
    kind: str


# Values recognisable by their shape alone.
_SHAPES: list[tuple[str, re.Pattern[str]]] = [
    ("aws-access-key-id", re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b")),
    ("github-token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,255}\b")),
    ("github-token", re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b")),
    ("stripe-key", re.compile(r"\b(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{10,}\b")),
    ("openai-key", re.compile(r"\bsk-(?:[A-Za-z0-9]+-)*[A-Za-z0-9_-]{20,}")),
    ("slack-token", re.compile(r"\bxox[abposre]-[A-Za-z0-9-]{10,}")),
    ("slack-webhook", re.compile(r"https://hooks\.slack\.com/services/[A-Za-z0-9/_-]{20,}")),
    ("google-api-key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}")),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    ("bearer-token", re.compile(r"(?<=\bBearer )[A-Za-z0-9._~+/-]{16,}=*")),
]

# Private key blocks: only the body between the markers is secret; a block cut
# by the end of the text (a prefix that stops inside it) is secret to the end.
_KEY_BLOCK = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
    r"(?P<body>.*?)"
    r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)",
    re.DOTALL,
)
# A text that starts inside a key block (a suffix cut at the cursor).
_KEY_BLOCK_TAIL = re.compile(
    r"\A(?P<body>(?:(?!-----BEGIN ).)*?)-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----",
    re.DOTALL,
)

# scheme://user:password@host. A scheme is only tried from the start of its run
# of scheme characters: from every `a` of a long `a.a.a…://` it took quadratic time.
_URL_PASSWORD = re.compile(
    r"(?<![A-Za-z0-9+.-])[0-9+.-]*[A-Za-z][A-Za-z0-9+.-]*://"
    r"[^\s:/@'\"]*:(?P<value>[^\s@/'\"]+)@"
)

# name <sep> value, where the name says "secret". The name may be quoted
# (JSON, dict literals) and may be prefixed by `export` (.env, shell).
#
# Written to take linear time on any line (the log filter and every keystroke
# run it on text a client controls; the old form took 51 s on a 40,000-letter
# word, and time exponential in the number of backslashes after an unclosed
# quote). Without possessive quantifiers (Python 3.10 has none):
# - a name is only tried from the start of its run of name characters (the
#   lookbehind; leading digits, dots and dashes are skipped), never again from
#   each later character. `->` is the one separator that starts with a name
#   character, so a `-` followed by `>` ends the name;
# - no two quantifiers can share the same characters: whitespace goes to one
#   `\s*`, and a type annotation is words separated by spaces, trailing spaces
#   left to the `\s*` after it;
# - a backslash in a quoted value always takes the next character with it. As
#   before, the value ends at the first quote not escaped that way or, when
#   there is none, at the last quote of the line (where the old backtracking
#   ended up after trying every reading of the backslashes).
_NAME = r"[A-Za-z_](?:[A-Za-z0-9_.]|-(?!>))*"
_ANNOTATION = r"[A-Za-z_][\w\[\],.|]*(?: +[\w\[\],.|]+)*"
_ASSIGN = re.compile(
    r"(?P<q>['\"]?)(?<![A-Za-z0-9_.-])[0-9.-]*(?P<name>" + _NAME + r")(?P=q)"
    r"(?P<sep>\s*(?::\s*" + _ANNOTATION + r"\s*)?(?:=|:=|:|=>|->)\s*)"
    r"(?:(?P<quote>['\"`])"
    r"(?P<qvalue>(?:(?!(?P=quote))[^\\]|\\.)*(?=(?P=quote))|.*\\(?=(?P=quote)))"
    r"(?P=quote)"
    r"|(?P<bare>[^\s'\"`,;#)}\]]+))"
)
_SECRET_NAME_ENDINGS = (
    "password", "passwd", "pwd", "pass", "passphrase", "secret", "token", "apikey",
    "accesskey", "secretkey", "privatekey", "authkey", "signingkey", "encryptionkey",
    "credential", "credentials", "secretkeybase", "connectionstring", "dsn",
)


def is_secret_name(name: str) -> bool:
    """True for names like DB_PASSWORD, apiKey, client-secret, GITHUB_TOKEN."""
    flat = re.sub(r"[^a-z0-9]", "", name.lower())
    return flat.endswith(_SECRET_NAME_ENDINGS)


def is_env_file(path: str | PurePath | None) -> bool:
    """True for `.env`, `prod.env`, `.env.local` and the like (path or uri)."""
    if path is None:
        return False
    name = str(path).replace("\\", "/").rsplit("/", 1)[-1].lower()
    return name in (".env", ".envrc") or name.endswith(".env") or name.startswith(".env.")


def _looks_like_code(value: str) -> bool:
    """An unquoted value in code is usually an expression, not a literal."""
    if re.fullmatch(r"[A-Za-z_][\w.]*(\(.*)?", value):
        return True  # a name, an attribute or a call: token = next_token()
    return any(c in value for c in "([{") or value in ("None", "null", "nil", "true", "false", "True", "False")


def find_secrets(text: str, *, language_id: str = "", env_file: bool = False) -> list[Secret]:
    """Every secret value in `text`, sorted and without overlaps.

    `env_file` treats every `NAME=value` line as a secret (a whole .env file);
    `language_id` says whether bare unquoted values count (they do in YAML,
    INI, .env and the like, where values are not quoted). Lines are scanned
    one by one through a cache, so a keystroke rescans only the line it changed.
    """
    config_like = env_file or languages.language(language_id).config
    found: list[Secret] = []
    pos = 0
    for line in text.split("\n"):
        for start, end, kind in _line_secrets(line, config_like, env_file):
            found.append(Secret(pos + start, pos + end, kind))
        pos += len(line) + 1
    if "PRIVATE KEY" in text:
        for pattern in (_KEY_BLOCK, _KEY_BLOCK_TAIL):
            for m in pattern.finditer(text):
                if m.group("body").strip():
                    found.append(Secret(m.start("body"), m.end("body"), "private-key"))
    return _merge(found)


_NAME_HINTS = ("pass", "pwd", "secret", "token", "key", "credential", "dsn", "connectionstring")


@functools.lru_cache(maxsize=16384)
def _line_secrets(line: str, config_like: bool, env_file: bool) -> tuple[tuple[int, int, str], ...]:
    """(start, end, kind) of the single-line secrets in one line."""
    found: list[tuple[int, int, str]] = []
    for kind, pattern in _SHAPES:
        for m in pattern.finditer(line):
            found.append((m.start(), m.end(), kind))
    if "://" in line:
        for m in _URL_PASSWORD.finditer(line):
            found.append((m.start("value"), m.end("value"), "url-password"))
    lowered = line.lower()
    if not env_file and not any(h in lowered for h in _NAME_HINTS):
        return tuple(found)
    for m in _ASSIGN.finditer(line):
        if not (env_file or is_secret_name(m.group("name"))):
            continue
        if m.group("qvalue") is not None:
            value, start = m.group("qvalue"), m.start("qvalue")
            if len(value) < 3 or value.startswith(("${", "{{", "<")):
                continue
        else:
            value, start = m.group("bare"), m.start("bare")
            if not config_like and _looks_like_code(value):
                continue
            if len(value) < 3 or value.startswith(("${", "{{", "<", "$")):
                continue
        found.append((start, start + len(value), "assignment"))
    return tuple(found)


def _merge(found: list[Secret]) -> list[Secret]:
    merged: list[Secret] = []
    for s in sorted(found, key=lambda s: (s.start, -s.end)):
        if merged and s.start < merged[-1].end:
            last = merged[-1]
            if s.end > last.end:
                merged[-1] = Secret(last.start, s.end, last.kind)
            continue
        merged.append(s)
    return merged


def _placeholder(value: str) -> str:
    """One PLACEHOLDER per line of the value, keeping the line breaks."""
    return "\n".join(PLACEHOLDER if line.strip() else line for line in value.split("\n"))


def redact_spans(text: str, spans: list[Secret], base: int = 0) -> str:
    """Replace the parts of `spans` (offsets relative to text[0] + base) that fall in text."""
    out, pos = [], 0
    for s in spans:
        start, end = max(s.start - base, 0), min(s.end - base, len(text))
        if end <= start or start < pos:
            continue
        out.append(text[pos:start])
        out.append(_placeholder(text[start:end]))
        pos = end
    out.append(text[pos:])
    return "".join(out)


def redact_secrets(text: str, *, language_id: str = "", env_file: bool = False) -> str:
    """`text` with every secret value replaced by a placeholder (newlines kept)."""
    return redact_spans(text, find_secrets(text, language_id=language_id, env_file=env_file))
