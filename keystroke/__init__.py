"""keystroke: local AI code completion over LSP (see keystroke.engine and keystroke.server)."""
