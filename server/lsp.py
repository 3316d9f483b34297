"""The keystroke language server on pygls 2: creation and registration.

Handlers are module-level functions, registered by `create_server`; each is
thin (the work is in `features`, the state in `session`) and catches its
own exceptions: a bug is logged with its traceback and answered empty;
hostile or malformed input is answered with an error or nothing, never
with a crash (see `protocol`).
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from typing import Any, Callable

from lsprotocol import types
from pygls.exceptions import JsonRpcException

from keystroke.engine.api import Backend
from keystroke.server import features
from keystroke.server.config import Config
from keystroke.server.protocol import short_error
from keystroke.server.session import KeystrokeServer

log = logging.getLogger("keystroke.lsp")

CMD_STATUS = "keystroke.status"
CMD_CLEAR_CACHE = "keystroke.clearCache"
CMD_TOGGLE = "keystroke.toggle"
CMD_APPLY_ACTION = features.CMD_APPLY_ACTION
COMPLETION_REGISTRATION_ID = "keystroke-completion"
COMPLETION_OPTIONS = types.CompletionOptions(resolve_provider=False, trigger_characters=[".", "(", " "])
CODE_ACTION_OPTIONS = types.CodeActionOptions(code_action_kinds=[types.CodeActionKind.RefactorRewrite],
                                              resolve_provider=True)


def guarded(empty: Any = None) -> Callable:
    """Catch every exception of a handler: log it (with traceback: it is a
    bug) and answer `empty`. Cancellation passes through."""
    def wrap(fn: Callable) -> Callable:
        if asyncio.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def run_async(*args: Any) -> Any:
                try:
                    return await fn(*args)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("%s failed", fn.__name__)
                    return empty
            return run_async

        @functools.wraps(fn)
        def run_sync(*args: Any) -> Any:
            try:
                return fn(*args)
            except Exception:
                log.exception("%s failed", fn.__name__)
                return empty
        return run_sync
    return wrap


# ---------------------------------------------------------------------------
# Lifecycle and configuration
# ---------------------------------------------------------------------------

@guarded()
def on_initialize(ls: KeystrokeServer, params: types.InitializeParams) -> None:
    ls.loop = asyncio.get_running_loop()
    ls.apply_settings(params.initialization_options, reload=False)
    if ls.want_completion_items():
        ls.feature(types.TEXT_DOCUMENT_COMPLETION, COMPLETION_OPTIONS)(on_completion)
        ls.items_static = True


@guarded()
def on_initialized(ls: KeystrokeServer, params: types.InitializedParams) -> None:
    if ls.engine_load_started:
        log.warning("initialized sent twice; ignored")
        return
    ls.engine_load_started = True
    ls.spawn(ls.load_engine())


@guarded()
def on_shutdown(ls: KeystrokeServer, params: Any) -> None:
    ls.scheduler.close()


@guarded()
async def on_configuration(ls: KeystrokeServer, params: types.DidChangeConfigurationParams) -> None:
    settings = params.settings
    caps = ls.capabilities_of_client.workspace
    if settings is None and caps is not None and caps.configuration:
        try:
            answer = await asyncio.wait_for(ls.workspace_configuration_async(types.ConfigurationParams(
                items=[types.ConfigurationItem(section="keystroke")])), 5)
            settings = answer[0] if answer else None
        except Exception as e:  # noqa: BLE001
            log.warning("workspace/configuration failed: %s", short_error(e))
            return
    ls.apply_settings(settings)
    await update_completion_registration(ls)


async def update_completion_registration(ls: KeystrokeServer) -> None:
    """Follow `completionItems` after a configuration change, when the
    client allows dynamic registration (a static capability cannot be
    withdrawn; its handler then answers empty)."""
    want = ls.want_completion_items()
    td = ls.capabilities_of_client.text_document
    dynamic = bool(td and td.completion and td.completion.dynamic_registration)
    if not dynamic or ls.items_static or want == ls.items_dynamic:
        return
    try:
        if want:
            if types.TEXT_DOCUMENT_COMPLETION not in ls.protocol.fm.features:
                ls.feature(types.TEXT_DOCUMENT_COMPLETION)(on_completion)
            await asyncio.wait_for(ls.client_register_capability_async(types.RegistrationParams(registrations=[
                types.Registration(id=COMPLETION_REGISTRATION_ID, method=types.TEXT_DOCUMENT_COMPLETION,
                                   register_options={"documentSelector": None})])), 5)
        else:
            await asyncio.wait_for(ls.client_unregister_capability_async(types.UnregistrationParams(
                unregisterations=[types.Unregistration(id=COMPLETION_REGISTRATION_ID,
                                                       method=types.TEXT_DOCUMENT_COMPLETION)])), 5)
        ls.items_dynamic = want
    except Exception as e:  # noqa: BLE001
        log.warning("completion (un)registration failed: %s", short_error(e))


# ---------------------------------------------------------------------------
# Completions and code actions
# ---------------------------------------------------------------------------

@guarded()
async def on_inline_completion(ls: KeystrokeServer, params: types.InlineCompletionParams):
    return await features.inline_completion(ls, params)


@guarded()
async def on_completion(ls: KeystrokeServer, params: types.CompletionParams):
    return await features.completion(ls, params)


@guarded()
async def on_code_action(ls: KeystrokeServer, params: types.CodeActionParams):
    return await features.code_actions(ls, params)


async def on_code_action_resolve(ls: KeystrokeServer, params: types.CodeAction) -> types.CodeAction:
    try:
        params.edit = await features.action_workspace_edit(ls, params.data)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("codeAction/resolve failed")
    return params


@guarded()
async def on_apply_action(ls: KeystrokeServer, *args: Any) -> bool:
    edit = await features.action_workspace_edit(ls, args[0] if args else None)
    if edit is None:
        return False
    try:
        answer = await ls.workspace_apply_edit_async(types.ApplyWorkspaceEditParams(edit=edit, label="keystroke"))
    except JsonRpcException as e:  # the client (or its user) declined the edit
        log.info("the client did not apply the edit: %s", e)
        return False
    return bool(getattr(answer, "applied", False))


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------

@guarded()
async def on_status(ls: KeystrokeServer, *args: Any) -> dict:
    return features.status_answer(ls)


@guarded(False)
def on_accepted(ls: KeystrokeServer, *args: Any) -> bool:
    """An inline item's command (LSP 3.18): the client inserted it. Counted; nothing else happens."""
    uri = args[0] if args and isinstance(args[0], str) else None
    return uri is not None and ls.acceptance.confirmed(uri)


@guarded(False)
async def on_clear_cache(ls: KeystrokeServer, *args: Any) -> bool:
    backend = ls.backend
    if backend is None:
        return False
    ls.shown.forget()
    ls.guesses.drop()
    ls.flights.drop()
    await ls.scheduler.call(backend.clear_cache)
    log.info("caches cleared")
    return True


@guarded()
def on_toggle(ls: KeystrokeServer, *args: Any) -> dict:
    enabled = args[0] if args and isinstance(args[0], bool) else not ls.config.enabled
    ls.config = dataclasses.replace(ls.config, enabled=enabled)
    if not enabled:
        ls.scheduler.cancel_all()
    log.info("completions %s", "enabled" if enabled else "disabled")
    return {"enabled": enabled}


def create_server(config: Config | None = None, *, quant: str = "auto",
                  loader: Callable[[Config], Backend] | None = None) -> KeystrokeServer:
    """A server with every feature registered (completion items only once the client is known)."""
    server = KeystrokeServer(config, quant=quant, loader=loader)
    for method, handler, options in (
            (types.INITIALIZE, on_initialize, None),
            (types.INITIALIZED, on_initialized, None),
            (types.SHUTDOWN, on_shutdown, None),
            (types.WORKSPACE_DID_CHANGE_CONFIGURATION, on_configuration, None),
            (types.TEXT_DOCUMENT_INLINE_COMPLETION, on_inline_completion, types.InlineCompletionOptions()),
            (types.TEXT_DOCUMENT_CODE_ACTION, on_code_action, CODE_ACTION_OPTIONS),
            (types.CODE_ACTION_RESOLVE, on_code_action_resolve, None)):
        server.feature(method, options)(handler)
    for name, handler in ((CMD_APPLY_ACTION, on_apply_action), (CMD_STATUS, on_status),
                          (features.CMD_ACCEPTED, on_accepted),
                          (CMD_CLEAR_CACHE, on_clear_cache), (CMD_TOGGLE, on_toggle)):
        server.command(name)(handler)
    return server
