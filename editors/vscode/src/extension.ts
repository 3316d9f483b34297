// keystroke for VS Code: starts `keystroke serve` and lets VS Code's language
// client show its inline completions (ghost text). Adds a status-bar item
// (on/off, model, last latency, a spinner while the model loads) and commands
// to toggle completions, show the server's stats and clear its caches.
import * as vscode from 'vscode';
import {
  DidChangeConfigurationNotification,
  ExecuteCommandRequest,
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  State,
} from 'vscode-languageclient/node';

// Server settings: VS Code setting `keystroke.<key>` -> server key (same name).
const SERVER_KEYS = [
  'enabled', 'model', 'device', 'threads', 'maxTokens', 'temperature', 'candidates',
  'debounceMs', 'debounceMinMs', 'debounceMaxMs', 'speculate', 'reuseInFlight', 'contextBudget', 'enabledLanguages', 'cacheDir',
  'cacheSizeMb', 'engine',
] as const;

interface Status {
  state?: string;
  enabled?: boolean;
  model?: string;
  device?: string | null;
  dtype?: string | null;
  error?: string | null;
  server?: {
    latency?: Record<string, { count: number; p50_ms: number | null; p90_ms: number | null }>;
    reuse?: { reused_ratio?: number | null };
  };
  acceptance?: { total?: AcceptanceCounts };
  [key: string]: unknown;
}

/** The server's acceptance counts (server/acceptance.py), kept on this machine only. */
interface AcceptanceCounts {
  shown: number;
  accepted: number;
  accepted_whole: number;
  accepted_word: number;
  accepted_line: number;
  typed_through: number;
  acceptance_rate: number | null;
  kept_30s: number | null;
  kept_5m: number | null;
}

let client: LanguageClient | undefined;
let statusItem: vscode.StatusBarItem;
let output: vscode.LogOutputChannel;
let lastStatus: Status | undefined;
let lastLatencyMs: number | undefined;
let pollTimer: NodeJS.Timeout | undefined;
let refreshTimer: NodeJS.Timeout | undefined;

/** The settings the server understands, from VS Code's `keystroke.*` (unset ones left out). */
export function serverSettings(config = vscode.workspace.getConfiguration('keystroke')): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of SERVER_KEYS) {
    const value = config.get(key);
    if (value !== undefined && value !== null) {
      out[key] = value;
    }
  }
  return out;
}

function createClient(): LanguageClient {
  const config = vscode.workspace.getConfiguration('keystroke');
  const command = config.get<string>('server.command', 'keystroke');
  const args = config.get<string[]>('server.args', ['serve']);
  // No transport: stdio without the '--stdio' argument languageclient would append.
  const serverOptions: ServerOptions = { command, args };
  const clientOptions: LanguageClientOptions = {
    documentSelector: [{ scheme: 'file' }, { scheme: 'untitled' }],
    initializationOptions: serverSettings(config),
    outputChannel: output,
    middleware: {
      // Time each answer for the status bar.
      provideInlineCompletionItems: async (document, position, context, token, next) => {
        const started = Date.now();
        const result = await next(document, position, context, token);
        if (!token.isCancellationRequested && result) {
          lastLatencyMs = Date.now() - started;
          render();
          refreshStatusSoon();
        }
        return result;
      },
    },
  };
  return new LanguageClient('keystroke', 'keystroke', serverOptions, clientOptions);
}

async function execute<T>(command: string, ...args: unknown[]): Promise<T | undefined> {
  if (!client || client.state !== State.Running) {
    void vscode.window.showWarningMessage('keystroke: the server is not running');
    return undefined;
  }
  return (await client.sendRequest(ExecuteCommandRequest.type, { command, arguments: args })) as T;
}

function render(): void {
  const s = lastStatus;
  const running = client?.state === State.Running;
  let icon = '$(sparkle)';
  let text = 'keystroke';
  if (!running) {
    icon = '$(debug-disconnect)';
    text = 'keystroke: stopped';
  } else if (!s || s.state === 'loading') {
    icon = '$(loading~spin)';
    text = 'keystroke: loading model';
  } else if (s.state === 'failed') {
    icon = '$(error)';
    text = 'keystroke: failed';
  } else if (s.enabled === false) {
    icon = '$(circle-slash)';
    text = 'keystroke: off';
  } else if (lastLatencyMs !== undefined) {
    text = `keystroke ${lastLatencyMs} ms`;
    const t = s.acceptance?.total;
    if (t && t.shown > 0) {
      text += `, ${t.accepted}/${t.shown} accepted`;
    }
  }
  statusItem.text = `${icon} ${text}`;
  const lines = [`model: ${s?.model ?? '?'} on ${s?.device ?? '?'} (${s?.dtype ?? '?'})`];
  if (s?.error) {
    lines.push(`error: ${s.error}`);
  }
  if (lastLatencyMs !== undefined) {
    lines.push(`last suggestion: ${lastLatencyMs} ms`);
  }
  const acceptance = formatAcceptance(s);
  if (acceptance) {
    lines.push(acceptance);
  }
  lines.push('click: turn completions on/off');
  statusItem.tooltip = lines.join('\n');
}

async function refreshStatus(): Promise<Status | undefined> {
  if (client?.state === State.Running) {
    try {
      lastStatus = await client.sendRequest(ExecuteCommandRequest.type, { command: 'keystroke.status', arguments: [] });
    } catch (e) {
      output.appendLine(`keystroke.status failed: ${e}`);
    }
  }
  render();
  return lastStatus;
}

/** Ask for the status shortly after suggestions and edits (accepts are counted from
 * the edits), at most once per pause: the status item shows the acceptance counts. */
function refreshStatusSoon(): void {
  if (refreshTimer) {
    clearTimeout(refreshTimer);
  }
  refreshTimer = setTimeout(() => {
    refreshTimer = undefined;
    void refreshStatus();
  }, 300);
}

/** Ask for the status every second while the model loads (the spinner), then stop. */
function pollWhileLoading(): void {
  if (pollTimer) {
    clearTimeout(pollTimer);
  }
  const tick = async () => {
    const s = await refreshStatus();
    if (!s || s.state === 'loading') {
      pollTimer = setTimeout(tick, 1000);
    }
  };
  void tick();
}

export function formatStatus(s: Status): string {
  const lines = [
    `keystroke: ${s.state} (${s.enabled ? 'on' : 'off'})`,
    `model: ${s.model}  device: ${s.device ?? '-'}  dtype: ${s.dtype ?? '-'}`,
  ];
  if (s.error) {
    lines.push(`error: ${s.error}`);
  }
  for (const [feature, l] of Object.entries(s.server?.latency ?? {})) {
    lines.push(`${feature} latency: p50 ${l.p50_ms} ms  p90 ${l.p90_ms} ms  (${l.count} requests)`);
  }
  const reuse = s.server?.reuse?.reused_ratio;
  if (typeof reuse === 'number') {
    lines.push(`KV-cache reuse: ${Math.round(reuse * 100)}% of prompt tokens`);
  }
  const acceptance = formatAcceptance(s);
  if (acceptance) {
    lines.push(acceptance);
  }
  return lines.join('\n');
}

function percent(v: number | null | undefined): string {
  return typeof v === 'number' ? `${Math.round(v * 100)}%` : '-';
}

/** The acceptance line of a status answer, or undefined when the server has none. */
export function formatAcceptance(s: Status | undefined): string | undefined {
  const t = s?.acceptance?.total;
  if (!t) {
    return undefined;
  }
  return `acceptance: ${t.accepted} of ${t.shown} suggestions (${percent(t.acceptance_rate)}); `
    + `whole ${t.accepted_whole}, word ${t.accepted_word}, line ${t.accepted_line}; `
    + `typed through ${t.typed_through}; kept ${percent(t.kept_30s)} at 30 s, ${percent(t.kept_5m)} at 5 min`;
}

async function start(context: vscode.ExtensionContext): Promise<void> {
  client = createClient();
  context.subscriptions.push(client.onDidChangeState(() => render()));
  render();
  try {
    await client.start();
  } catch (e) {
    const command = vscode.workspace.getConfiguration('keystroke').get<string>('server.command');
    void vscode.window.showErrorMessage(
      `keystroke: could not start "${command}": ${e}. Install keystroke (pip install keystroke) or set keystroke.server.command.`);
    render();
    return;
  }
  pollWhileLoading();
}

async function stop(): Promise<void> {
  if (pollTimer) {
    clearTimeout(pollTimer);
  }
  if (refreshTimer) {
    clearTimeout(refreshTimer);
  }
  const c = client;
  client = undefined;
  lastStatus = undefined;
  if (c) {
    await c.stop().catch(() => undefined);
  }
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  output = vscode.window.createOutputChannel('keystroke', { log: true });
  statusItem = vscode.window.createStatusBarItem('keystroke.status', vscode.StatusBarAlignment.Right, 100);
  statusItem.name = 'keystroke';
  statusItem.command = 'keystroke.toggleEnabled';
  statusItem.show();
  context.subscriptions.push(output, statusItem);
  context.subscriptions.push(vscode.workspace.onDidChangeTextDocument((e) => {
    if (lastLatencyMs !== undefined && e.document.uri.scheme === 'file' && e.contentChanges.length > 0) {
      refreshStatusSoon();
    }
  }));

  context.subscriptions.push(
    vscode.commands.registerCommand('keystroke.toggleEnabled', async () => {
      const answer = await execute<{ enabled: boolean }>('keystroke.toggle');
      if (answer) {
        await refreshStatus();
        void vscode.window.setStatusBarMessage(`keystroke: completions ${answer.enabled ? 'on' : 'off'}`, 3000);
      }
    }),
    vscode.commands.registerCommand('keystroke.showStats', async () => {
      const s = await refreshStatus();
      if (!s) {
        return;
      }
      // The details first, the summary last: the panel shows its end.
      output.appendLine(JSON.stringify(s, null, 2));
      output.appendLine(formatStatus(s));
      output.show(true);
      return s;
    }),
    vscode.commands.registerCommand('keystroke.clearCaches', async () => {
      const done = await execute<boolean>('keystroke.clearCache');
      void vscode.window.showInformationMessage(done ? 'keystroke: caches cleared' : 'keystroke: the model is not loaded yet');
    }),
    vscode.commands.registerCommand('keystroke.restart', async () => {
      await stop();
      await start(context);
    }),
    vscode.workspace.onDidChangeConfiguration(async (e) => {
      if (!e.affectsConfiguration('keystroke')) {
        return;
      }
      if (e.affectsConfiguration('keystroke.server')) {
        await stop();
        await start(context);
      } else if (client?.state === State.Running) {
        await client.sendNotification(DidChangeConfigurationNotification.type, { settings: serverSettings() });
        pollWhileLoading(); // a new model may be loading now
      }
    }),
  );
  await start(context);
}

export async function deactivate(): Promise<void> {
  await stop();
}
