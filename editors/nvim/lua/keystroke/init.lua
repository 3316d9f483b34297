--- keystroke for Neovim: code completion from a local model, as an LSP server.
---
--- require('keystroke').setup({ ... }) registers the `keystroke serve` command
--- with vim.lsp.config and enables it. On Neovim 0.12+ suggestions show as
--- ghost text (LSP inline completion) with keymaps to accept all of it, a
--- word or a line, and to cycle; on 0.11 they arrive as ordinary completion
--- items (vim.lsp.completion). See editors/nvim/README.md.
local M = {}

local api = vim.api

M.defaults = {
  -- The server command; any executable speaking LSP over stdio will do.
  cmd = { 'keystroke', 'serve' },
  -- Server settings, sent as initializationOptions and as
  -- workspace/didChangeConfiguration (keys as in the server's README:
  -- model, device, threads, maxTokens, temperature, candidates, debounceMs,
  -- contextBudget, enabledLanguages, cacheDir, cacheSizeMb, ...).
  settings = {},
  -- nil: every filetype; or a list such as { 'python', 'lua' }.
  filetypes = nil,
  root_markers = { '.git', 'pyproject.toml', 'package.json' },
  -- Insert-mode keymaps; set one to false to leave that key alone.
  keymaps = {
    accept = '<Tab>', -- the whole suggestion (falls back to a literal <Tab>)
    accept_word = '<M-Right>', -- its next word
    accept_line = '<M-C-Right>', -- the rest of its current line
    next = '<M-]>', -- cycle forward (asks for several candidates first)
    prev = '<M-[>', -- cycle backward
    dismiss = '<C-]>',
  },
}

M.config = vim.deepcopy(M.defaults)

local NAME = 'keystroke'

--- True when this Neovim can show ghost text (LSP inline completion).
function M.has_inline()
  local ok, mod = pcall(function() return vim.lsp.inline_completion end)
  return ok and mod ~= nil
end

--- The keystroke client attached to `bufnr` (default: current buffer), or nil.
function M.client(bufnr)
  return vim.lsp.get_clients({ bufnr = bufnr or 0, name = NAME })[1]
end

--- Run one of the server's commands; `on_result(result)` gets the answer.
function M.execute(command, arguments, on_result)
  local client = M.client()
  if not client then
    vim.notify('keystroke: no keystroke server attached to this buffer', vim.log.levels.WARN)
    return false
  end
  client:request('workspace/executeCommand', { command = command, arguments = arguments or {} },
    function(err, result)
      if err then
        vim.notify(('keystroke: %s failed: %s'):format(command, err.message or vim.inspect(err)),
          vim.log.levels.ERROR)
      elseif on_result then
        on_result(result)
      end
    end, api.nvim_get_current_buf())
  return true
end

local function show(v)
  return (v == nil or v == vim.NIL) and '-' or tostring(v)
end

--- One line per fact of a keystroke.status answer.
function M.format_status(s)
  local lines = {
    ('keystroke: %s (%s)'):format(show(s.state), s.enabled and 'on' or 'off'),
    ('model: %s  device: %s  dtype: %s'):format(show(s.model), show(s.device), show(s.dtype)),
  }
  if s.error and s.error ~= vim.NIL then
    table.insert(lines, 'error: ' .. tostring(s.error))
  end
  local server = type(s.server) == 'table' and s.server or {}
  for feature, l in pairs(type(server.latency) == 'table' and server.latency or {}) do
    table.insert(lines, ('%s latency: p50 %s ms  p90 %s ms  (%s requests)'):format(
      feature, show(l.p50_ms), show(l.p90_ms), show(l.count)))
  end
  local reuse = type(server.reuse) == 'table' and server.reuse or {}
  if type(reuse.reused_ratio) == 'number' then
    table.insert(lines, ('KV-cache reuse: %.0f%% of prompt tokens'):format(100 * reuse.reused_ratio))
  end
  local acceptance = M.format_acceptance(s.acceptance)
  if acceptance then
    table.insert(lines, acceptance)
  end
  return lines
end

local function percent(v)
  return type(v) == 'number' and ('%.0f%%'):format(100 * v) or '-'
end

--- The acceptance line of a keystroke.status answer (counts kept on this machine), or nil.
function M.format_acceptance(a)
  local t = type(a) == 'table' and type(a.total) == 'table' and a.total or nil
  if not t then
    return nil
  end
  return ('acceptance: %s of %s suggestions (%s); whole %s, word %s, line %s; typed through %s; '
    .. 'kept %s at 30 s, %s at 5 min'):format(show(t.accepted), show(t.shown), percent(t.acceptance_rate),
    show(t.accepted_whole), show(t.accepted_word), show(t.accepted_line), show(t.typed_through),
    percent(t.kept_30s), percent(t.kept_5m))
end

function M.status()
  return M.execute('keystroke.status', {}, function(result)
    M.last_status = result
    vim.notify(table.concat(M.format_status(result or {}), '\n'), vim.log.levels.INFO)
  end)
end

function M.toggle()
  return M.execute('keystroke.toggle', {}, function(result)
    vim.notify(('keystroke: completions %s'):format(result and result.enabled and 'on' or 'off'))
  end)
end

function M.clear_cache()
  return M.execute('keystroke.clearCache', {}, function(result)
    vim.notify(result and 'keystroke: caches cleared' or 'keystroke: nothing to clear yet')
  end)
end

-- Partial accepts ----------------------------------------------------------

--- What the suggestion `item` would add after the cursor, and where that is.
--- The server's items replace the text from the line start to the cursor, so
--- the item's text begins with what is already typed there.
local function rest_of(item, bufnr)
  local text = item.insert_text
  if type(text) ~= 'string' then
    return nil
  end
  local r = item.range
  if not r then
    local row, col = unpack(api.nvim_win_get_cursor(0))
    return text, row - 1, col
  end
  local typed = table.concat(
    api.nvim_buf_get_text(bufnr, r.start.row, r.start.col, r.end_.row, r.end_.col, {}), '\n')
  if text:sub(1, #typed) ~= typed then
    return nil
  end
  return text:sub(#typed + 1), r.end_.row, r.end_.col
end

--- The next word of `rest`, with the whitespace (newlines too) before it.
function M.next_word(rest)
  return rest:match('^%s*[%w_]+') or rest:match('^%s*[^%w_%s]+') or rest
end

--- The rest of the current line of `rest`; at a line break, the next line.
function M.next_line(rest)
  if rest:sub(1, 1) == '\n' then
    return '\n' .. rest:sub(2):match('^[^\n]*')
  end
  return rest:match('^[^\n]*')
end

local function insert_at(bufnr, row, col, chunk)
  local lines = vim.split(chunk, '\n', { plain = true })
  api.nvim_buf_set_text(bufnr, row, col, row, col, lines)
  local end_row = row + #lines - 1
  local end_col = (#lines == 1 and col or 0) + #lines[#lines]
  api.nvim_win_set_cursor(0, { end_row + 1, end_col })
end

--- Accept part of the shown suggestion: `pick(rest)` says which part.
--- Returns false when no suggestion is shown.
function M.accept_part(pick)
  local bufnr = api.nvim_get_current_buf()
  return vim.lsp.inline_completion.get({
    on_accept = function(item)
      local rest, row, col = rest_of(item, bufnr)
      if rest == nil then -- not a plain extension of the line: take it whole
        local r = item.range
        local lines = vim.split(type(item.insert_text) == 'string' and item.insert_text or '', '\n')
        api.nvim_buf_set_text(bufnr, r.start.row, r.start.col, r.end_.row, r.end_.col, lines)
        return
      end
      local chunk = pick(rest)
      if chunk ~= '' then
        insert_at(bufnr, row, col, chunk)
      end
    end,
  })
end

function M.accept()
  return vim.lsp.inline_completion.get()
end

function M.accept_word()
  return M.accept_part(M.next_word)
end

function M.accept_line()
  return M.accept_part(M.next_line)
end

--- Cycle through candidates. The server sends one on automatic requests and
--- several on an invoked one, so with a single candidate shown this asks
--- for more first (through Neovim's inline-completion state, guarded since
--- that part is not public API).
function M.cycle(count)
  local bufnr = api.nvim_get_current_buf()
  local ok, completor = pcall(function()
    return require('vim.lsp._capability').all.inline_completion.active[bufnr]
  end)
  if ok and completor and completor.count_items and completor:count_items() <= 1 then
    completor:request(vim.lsp.protocol.InlineCompletionTriggerKind.Invoked)
    return
  end
  vim.lsp.inline_completion.select({ count = count })
end

function M.dismiss()
  local bufnr = api.nvim_get_current_buf()
  pcall(function()
    require('vim.lsp._capability').all.inline_completion.active[bufnr]:abort()
  end)
end

local function set_keymaps(keys)
  local map = function(lhs, fn, desc)
    if lhs then
      vim.keymap.set('i', lhs, fn, { desc = 'keystroke: ' .. desc, silent = true })
    end
  end
  if keys.accept then
    vim.keymap.set('i', keys.accept, function()
      if not M.accept() then
        return api.nvim_replace_termcodes(keys.accept, true, false, true)
      end
    end, { expr = true, desc = 'keystroke: accept the suggestion', silent = true })
  end
  map(keys.accept_word, M.accept_word, 'accept the next word of the suggestion')
  map(keys.accept_line, M.accept_line, 'accept the rest of the line of the suggestion')
  map(keys.next, function() M.cycle(1) end, 'next suggestion')
  map(keys.prev, function() M.cycle(-1) end, 'previous suggestion')
  map(keys.dismiss, M.dismiss, 'dismiss the suggestion')
end

--- Configure and start keystroke. `opts` overrides M.defaults (deep-merged).
function M.setup(opts)
  M.config = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts or {})
  local cfg = M.config
  if vim.fn.executable(cfg.cmd[1]) == 0 then
    vim.notify(('keystroke: %q is not executable; install keystroke (pip install keystroke) '
      .. 'or set cmd in setup()'):format(cfg.cmd[1]), vim.log.levels.WARN)
  end

  -- An empty Lua table would go out as a JSON list; the server wants an object.
  local settings = next(cfg.settings) and cfg.settings or vim.empty_dict()
  vim.lsp.config(NAME, {
    cmd = cfg.cmd,
    filetypes = cfg.filetypes,
    root_markers = cfg.root_markers,
    init_options = settings,
    settings = { keystroke = settings },
  })
  vim.lsp.enable(NAME)

  if M.has_inline() then
    vim.lsp.inline_completion.enable(true)
    set_keymaps(cfg.keymaps)
  else
    -- Neovim 0.11: no ghost text; suggestions come as completion items.
    api.nvim_create_autocmd('LspAttach', {
      group = api.nvim_create_augroup('keystroke.completion', { clear = true }),
      callback = function(ev)
        local client = vim.lsp.get_client_by_id(ev.data.client_id)
        if client and client.name == NAME then
          vim.lsp.completion.enable(true, client.id, ev.buf, { autotrigger = true })
        end
      end,
    })
  end

  local command = api.nvim_create_user_command
  command('KeystrokeStatus', function() M.status() end, { desc = 'keystroke: model, caches, latency' })
  command('KeystrokeToggle', function() M.toggle() end, { desc = 'keystroke: completions on/off' })
  command('KeystrokeClearCache', function() M.clear_cache() end, { desc = 'keystroke: clear the caches' })
end

return M
