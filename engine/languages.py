"""What keystroke knows about each language, in one table keyed by LSP languageId.

Per language: the `Lexicon` that reads its strings, comments and brackets
(mode choice, stops, post-processing), how a one-line comment is written
(the prompt's header is rendered as comments), the tree-sitter grammar that
outlines it, the file suffixes that name it when the editor's languageId is
not known, and whether it is a config language (values there are often
unquoted, so the secrets scanner treats bare values as secrets).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

from .lexer import Lexicon

_JUMPS = ("return", "break", "continue", "throw", "goto")
_C_LIKE = Lexicon(("//",), (("/*", "*/"),), ('"', "'"), jumps=_JUMPS)
_JS = Lexicon(("//",), (("/*", "*/"),), ('"', "'", "`"), ("`",), jumps=_JUMPS)
_HASH_LEX = Lexicon(("#",), (), ('"', "'"), block_opener="")
PYTHON = Lexicon(("#",), (), ('"""', "'''", '"', "'"), ('"""', "'''"), block_opener=":",
                 jumps=("return", "raise", "break", "continue"))
# Unknown languages: double-quoted strings and brackets only, since a lone
# apostrophe in prose or a '#' that is not a comment would derail the count.
GENERIC = Lexicon()
# Code in a language nobody named (an engine caller that gives none): the common
# conventions together, `#` a comment only at a line start or after whitespace.
ANY_CODE = Lexicon(("//", "#"), (("/*", "*/"),), ('"""', "'''", "```", '"', "'", "`"),
                   ('"""', "'''", "```"), skip=r"(?<=[^ \t\n])#", jumps=("return",))

_SLASHES, _HASH, _DASHES = ("//", ""), ("#", ""), ("--", "")


@dataclass(frozen=True)
class Language:
    id: str
    lexicon: Lexicon = GENERIC
    comment: tuple[str, str] = _SLASHES     # (start, end) of a one-line comment
    grammar: str | None = None              # tree-sitter grammar (context/parse.py)
    extensions: tuple[str, ...] = ()        # file suffixes that mean this language
    config: bool = False                    # a config language (secrets.py)


def _many(ids: str, lexicon: Lexicon = GENERIC, comment: tuple[str, str] = _SLASHES,
          config: bool = False) -> list[Language]:
    return [Language(i, lexicon, comment, config=config) for i in ids.split()]


_TABLE = [
    Language("python", PYTHON, _HASH, "python", (".py", ".pyi")),
    Language("javascript", _JS, grammar="javascript", extensions=(".js", ".mjs", ".cjs")),
    Language("javascriptreact", _JS, grammar="javascript", extensions=(".jsx",)),
    Language("typescript", _JS, grammar="typescript", extensions=(".ts", ".mts", ".cts")),
    Language("typescriptreact", _JS, grammar="tsx", extensions=(".tsx",)),
    Language("go", _JS, grammar="go", extensions=(".go",)),
    Language("rust", Lexicon(("//",), (("/*", "*/"),), ('"',), ('"',), skip=r"'(?:\\.[^']{0,8}|[^'\\\n])'",
                             jumps=("return", "break", "continue")),
             grammar="rust", extensions=(".rs",)),
    Language("java", _C_LIKE, grammar="java", extensions=(".java",)),
    Language("c", _C_LIKE, grammar="c", extensions=(".c", ".h")),
    Language("cpp", _C_LIKE, grammar="cpp", extensions=(".cc", ".cpp", ".cxx", ".hpp", ".hh", ".hxx")),
    Language("cuda-cpp", grammar="cpp"),
    Language("objective-c", _C_LIKE, grammar="c"),
    *_many("vue svelte", _JS, ("<!--", " -->")),
    *_many("csharp kotlin swift php scala dart groovy zig scss less", _C_LIKE),
    Language("json", _C_LIKE, extensions=(".json",), config=True),
    Language("jsonc", _C_LIKE, config=True),
    Language("css", Lexicon((), (("/*", "*/"),), ('"', "'")), ("/*", " */")),
    Language("html", Lexicon((), (("<!--", "-->"),), ('"',), block_opener=""), ("<!--", " -->")),
    *_many("xml markdown xsl svg", comment=("<!--", " -->")),
    Language("shellscript", Lexicon(("#",), (), ('"', "'"), ('"', "'")), _HASH, config=True),
    *_many("ruby perl r makefile powershell elixir julia nim coffeescript", _HASH_LEX, _HASH),
    Language("dockerfile", _HASH_LEX, _HASH, config=True),
    Language("yaml", _HASH_LEX, _HASH, extensions=(".yaml", ".yml"), config=True),
    Language("toml", _HASH_LEX, _HASH, extensions=(".toml",), config=True),
    Language("ini", comment=_HASH, extensions=(".ini", ".cfg", ".conf"), config=True),
    Language("properties", comment=_HASH, extensions=(".properties",), config=True),
    Language("dotenv", comment=_HASH, extensions=(".env",), config=True),
    *_many("sh bash", comment=_HASH, config=True),
    Language("env", config=True),
    *_many("zsh make cmake gitignore starlark bazel graphql text plaintext", comment=_HASH),
    Language("", comment=_HASH),
    Language("lua", Lexicon(("--",), (("--[[", "]]"),), ('"', "'"), block_opener=""), _DASHES),
    Language("sql", Lexicon(("--",), (("/*", "*/"),), ("'", '"'), block_opener=""), _DASHES),
    Language("haskell", Lexicon(("--",), (("{-", "-}"),), ('"',), block_opener=""), _DASHES),
    *_many("elm ada vhdl purescript", comment=_DASHES),
    *_many("clojure lisp commonlisp scheme racket elisp emacs-lisp asm nasm", comment=(";;", "")),
    *_many("latex tex erlang matlab prolog", comment=("%", "")),
    *_many("vim viml", comment=('"', "")),
]
LANGUAGES: dict[str, Language] = {lang.id: lang for lang in _TABLE}
_BY_EXTENSION = {ext: lang for lang in _TABLE for ext in lang.extensions}


def language(language_id: str) -> Language:
    """The facts for an LSP languageId (any case); an unknown one gets the defaults."""
    key = (language_id or "").lower()
    return LANGUAGES.get(key) or Language(key)


def language_of_path(path: str | PurePath | None) -> Language | None:
    """The language a file's suffix names (path or uri), or None."""
    if path is None:
        return None
    return _BY_EXTENSION.get(PurePath(str(path)).suffix.lower())


def lexicon(language_id: str) -> Lexicon:
    return language(language_id).lexicon


def code_lexicon(language_id: str) -> Lexicon:
    """How the engine reads a completion: with the language's lexicon, or ANY_CODE when none is named."""
    return lexicon(language_id) if language_id else ANY_CODE
