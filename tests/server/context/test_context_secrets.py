"""Secrets never reach a prompt: realistic samples per kind, and through build_context."""
from __future__ import annotations

from pathlib import Path

import pytest

from keystroke.server.context import ContextConfig, DocumentView, build_context
from keystroke.server.secrets import PLACEHOLDER, find_secrets, is_env_file, redact_secrets

# Realistic-looking but fake values, assembled so that no scanner mistakes this file for a leak.
AWS_ID = "AKIA" + "Z7QK3MWX2PLT5RVN"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYzq8Lmn4T2sVa"
GH_TOKEN = "ghp_" + "R4nd0mT0kenValue1234567890abcdefGHIJ"
GH_PAT = "github_pat_" + "11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOP"
OPENAI = "sk-" + "proj-" + "Qx7v2mN9pL4kT8rW1sZ6yB3cF5hJ0dGa"
SLACK = "xoxb-" + "2398472398-2398472398472-aBcDeFgHiJkLmNoPqRsTuVwX"
GOOGLE = "AIza" + "SyD3h8Kq2Lm9Nx4Pr7Tv1Wz6Yb0Cf5Gj8Hk"
STRIPE = "sk_live_" + "51HxYzAbCdEfGhIjKlMnOpQr"
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9" + "." + "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
       + "." + "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")
PEM_BODY = "MIIEowIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM2Ht3FvXd6n9h\nq1qXcVt7yJpZ0b8lKm4sQ9wE2rT6uY8iO0pA3sD5fG7hJ9k\nL1zX3cV5bN7mQ9wE2rT4yU6iO8pA0sD2fG4hJ6kL8zX0cV2b"
PASSWORD = "Tr0ub4dor&3-horse"

SAMPLES = [
    ("aws", f'AWS_ACCESS_KEY_ID = "{AWS_ID}"\naws_secret_access_key = "{AWS_SECRET}"\n', [AWS_ID, AWS_SECRET]),
    ("github", f'headers = {{"Authorization": "token {GH_TOKEN}"}}\nPAT = "{GH_PAT}"\n', [GH_TOKEN, GH_PAT]),
    ("openai", f'client = OpenAI(api_key="{OPENAI}")\n', [OPENAI]),
    ("slack", f"const slack = new WebClient('{SLACK}');\n", [SLACK]),
    ("google", f"maps_url = f'https://maps.googleapis.com/maps/api/js?key={GOOGLE}'\n", [GOOGLE]),
    ("stripe", f'stripe.api_key = "{STRIPE}"\n', [STRIPE]),
    ("jwt", f'curl -H "Authorization: Bearer {JWT}" https://api.example.com\n', [JWT]),
    ("python-password", f'DB_PASSWORD = "{PASSWORD}"\nuser = "admin"\n', [PASSWORD]),
    ("js-secret", f"export const config = {{ clientSecret: '{PASSWORD}', region: 'eu-west-1' }};\n", [PASSWORD]),
    ("json", f'{{\n  "username": "svc",\n  "password": "{PASSWORD}",\n  "port": 5432\n}}\n', [PASSWORD]),
    ("yaml", f"database:\n  host: db.internal\n  password: {PASSWORD}\n  auth_token: abc123def456ghi\n",
     [PASSWORD, "abc123def456ghi"]),
    ("ini", f"[smtp]\nhost = mail.example.com\nsmtp_password = {PASSWORD}\n", [PASSWORD]),
    ("url", f'DATABASE_URL = "postgres://app_user:{PASSWORD}@db.internal:5432/shop"\n'
            f'cache = "redis://:hunter2hunter2@cache:6379/0"\n', [PASSWORD, "hunter2hunter2"]),
    ("pem", f'KEY = """-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----\n"""\n',
     PEM_BODY.split("\n")),
    ("go", f'const apiToken = "{PASSWORD}"\n', [PASSWORD]),
]
LANG = {"yaml": "yaml", "ini": "ini", "json": "json"}


@pytest.mark.parametrize("name,text,secrets", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_realistic_secrets_are_redacted(name, text, secrets):
    out = redact_secrets(text, language_id=LANG.get(name, ""))
    for secret in secrets:
        assert secret not in out
    assert PLACEHOLDER in out
    assert out.count("\n") == text.count("\n")  # line structure kept


def test_only_the_value_is_replaced():
    out = redact_secrets(f'DATABASE_URL = "postgres://app_user:{PASSWORD}@db.internal:5432/shop"\n')
    assert out == 'DATABASE_URL = "postgres://app_user:REDACTED@db.internal:5432/shop"\n'
    out = redact_secrets(f'-----BEGIN OPENSSH PRIVATE KEY-----\n{PEM_BODY}\n-----END OPENSSH PRIVATE KEY-----\n')
    assert out == "-----BEGIN OPENSSH PRIVATE KEY-----\nREDACTED\nREDACTED\nREDACTED\n-----END OPENSSH PRIVATE KEY-----\n"


NOT_SECRETS = """token = next_token(stream)
password = getpass.getpass("Password: ")
secret = os.environ["APP_SECRET"]
max_tokens = 256
tokenizer = "gpt2"
if token == "":
    raise ValueError("empty")
api_key = None
def check_password(password: str) -> bool:
    return hmac.compare_digest(hash_pw(password), STORED)
url = "https://example.com:8080/path"
password = "${DB_PASSWORD}"
"""


def test_code_that_only_talks_about_secrets_is_left_alone():
    assert find_secrets(NOT_SECRETS, language_id="python") == []


def test_cut_private_key_blocks_are_redacted_on_both_sides_of_the_cursor():
    text = f"-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n-----END PRIVATE KEY-----\n"
    cut = text.index("q1qX") + 10
    before, after = redact_secrets(text[:cut]), redact_secrets(text[cut:])
    for part in PEM_BODY.split("\n"):
        assert part[:8] not in before + after and part[-8:] not in before + after
    assert before.endswith(PLACEHOLDER) and after.startswith(PLACEHOLDER)


def test_env_file_names():
    assert all(is_env_file(p) for p in [".env", "/srv/app/.env", "prod.env", ".env.local", "file:///w/.env.production"])
    assert not any(is_env_file(p) for p in ["env.py", "environment.ts", ".envoy.yaml", None])


def test_every_value_of_an_env_file_is_redacted():
    text = "APP_NAME=shop\nDEBUG=false\nSESSION_KEY=f3a9c2e1b7d4\n"
    out = redact_secrets(text, env_file=True)
    assert "f3a9c2e1b7d4" not in out and "shop" not in out and out.count("\n") == 3


def _all_text(parts) -> str:
    return parts.header + parts.prefix + parts.suffix + repr(parts.provenance)


SETTINGS = f'''"""Settings for the billing service."""
import os

STRIPE_KEY = "{STRIPE}"
AWS_ACCESS_KEY_ID = "{AWS_ID}"


def stripe_client():
    """A Stripe client for the live account."""
    return stripe.StripeClient(STRIPE_KEY)
'''


def test_no_secret_from_another_open_document_reaches_the_prompt(tmp_path):
    settings = DocumentView("file:///ws/settings.py", SETTINGS, "python", Path("/ws/settings.py"))
    env = DocumentView("file:///ws/.env", f"OPENAI_API_KEY={OPENAI}\nDB_PASSWORD={PASSWORD}\n"
                       "def charge(amount): stripe_client()\n", "dotenv", Path("/ws/.env"))
    text = ("from settings import STRIPE_KEY, AWS_ACCESS_KEY_ID, stripe_client\n\n\ndef charge(amount):\n"
            "    client = stripe_client()\n    key = STRIPE_KEY\n    region = AWS_ACCESS_KEY_ID\n    \n")
    doc = DocumentView("file:///ws/billing.py", text, "python", Path("/ws/billing.py"))
    cfg = ContextConfig(budget_tokens=4000, similar_min_score=0.0)
    parts = build_context(doc, len(text) - 1, [settings, env], config=cfg)
    everything = _all_text(parts)
    assert "def stripe_client():" in parts.header  # the other document did contribute
    assert 'STRIPE_KEY = "REDACTED"' in parts.header
    for secret in (STRIPE, AWS_ID, OPENAI, PASSWORD):
        assert secret not in everything
    assert ".env" not in repr(parts.provenance)


def test_secrets_in_the_current_file_are_redacted_without_moving_the_cursor():
    head = f'import requests\n\nGITHUB_TOKEN = "{GH_TOKEN}"\nKEY = """-----BEGIN EC PRIVATE KEY-----\n{PEM_BODY}\n'
    tail = f'-----END EC PRIVATE KEY-----"""\n\n\ndef fetch(url):\n    return requests.get(url, auth=("bot", "{PASSWORD}"))\n'
    cut = head.index("q1qX") + 7  # the cursor sits inside the private key block
    text = head + tail
    doc = DocumentView("file:///ws/bot.py", text, "python")
    parts = build_context(doc, cut, [], config=ContextConfig(budget_tokens=4000))
    everything = _all_text(parts)
    for secret in [GH_TOKEN] + PEM_BODY.split("\n"):
        assert secret[:12] not in everything
    assert parts.prefix.startswith("import requests\n\nGITHUB_TOKEN = \"REDACTED\"\n")
    assert parts.prefix.endswith(PLACEHOLDER)  # the part of the key before the cursor
    assert parts.suffix.startswith(PLACEHOLDER + "\n")
    assert parts.prefix.count("\n") == text[:cut].count("\n")


def test_an_env_file_being_edited_shows_no_values():
    text = f"APP_ENV=production\nOPENAI_API_KEY={OPENAI}\nSMTP_HOST=mail.example.com\nSMTP_PASS"
    doc = DocumentView("file:///ws/.env", text, "dotenv", Path("/ws/.env"))
    parts = build_context(doc, len(text), [])
    assert OPENAI not in parts.prefix and "production" not in parts.prefix
    assert parts.prefix.endswith("SMTP_PASS") and "APP_ENV=REDACTED" in parts.prefix


def test_a_yaml_document_similar_to_the_cursor_comes_without_its_bare_values():
    config = DocumentView("file:///ws/config.yaml", f"database:\n  host: db.internal\n  user: shop\n"
                          f"  password: {PASSWORD}\n  pool_size: 5\n", "yaml", Path("/ws/config.yaml"))
    text = "database:\n  host: localhost\n  user: shop\n  pool_size: 2\n  \n"
    doc = DocumentView("file:///ws/config.test.yaml", text, "yaml", Path("/ws/config.test.yaml"))
    parts = build_context(doc, len(text) - 1, [config], config=ContextConfig(similar_min_score=0.1))
    assert "# similar code in config.yaml:" in parts.header and "#   password: REDACTED" in parts.header
    assert PASSWORD not in _all_text(parts)
