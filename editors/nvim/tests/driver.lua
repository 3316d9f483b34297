-- Headless Neovim test driver for the keystroke plugin (run by tests/editors/test_nvim.py).
--
-- Loaded after the plugin was set up the way a user would (init.lua: runtimepath
-- + require('keystroke').setup). Opens $KS_FILE, waits for the server's model,
-- then in insert mode: waits for ghost text, accepts one word, waits for the
-- next ghost text, accepts one line, and accepts a third suggestion whole with
-- <Tab>. Every step records the buffer line before/after, the ghost text that
-- was shown and the server's last answer into $KS_OUT (JSON); the Python test
-- asserts on them. A hard deadline writes what there is and quits.
local api = vim.api
local out_path = assert(os.getenv('KS_OUT'))
local file = assert(os.getenv('KS_FILE'))
local deadline_s = tonumber(os.getenv('KS_DEADLINE') or '240')

local result = { steps = {}, notes = {}, responses = 0 }
local notified = {}
local real_notify = vim.notify
vim.notify = function(msg, level, opts)
  table.insert(notified, tostring(msg))
  return real_notify(msg, level, opts)
end

local done = false
local function finish(err)
  if done then return end
  done = true
  result.error = err
  result.notified = notified
  local f = assert(io.open(out_path, 'w'))
  f:write(vim.json.encode(result))
  f:close()
  vim.cmd('qall!')
end

local co
local function sleep(ms)
  vim.defer_fn(function() assert(coroutine.resume(co)) end, ms)
  coroutine.yield()
end

--- Poll `check` every 50 ms until it returns a truthy value or `ms` passes.
local function wait_for(what, ms, check)
  local t0 = vim.uv.now()
  while vim.uv.now() - t0 < ms do
    local v = check()
    if v then return v end
    sleep(50)
  end
  error('timed out waiting for ' .. what, 0)
end

local function feed(keys)
  api.nvim_feedkeys(api.nvim_replace_termcodes(keys, true, false, true), 'mt', false)
end

local ns
--- The ghost text on screen: the extmark of Neovim's inline-completion namespace.
local function ghost()
  ns = ns or api.nvim_get_namespaces()['nvim.lsp.inline_completion']
  if not ns then return nil end
  local marks = api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true })
  if #marks == 0 then return nil end
  local d = marks[1][4]
  local parts, hint = {}, nil
  for _, chunk in ipairs(d.virt_text or {}) do
    if chunk[2] ~= 'ComplHintMore' then table.insert(parts, chunk[1]) else hint = chunk[1] end
  end
  local lines = { table.concat(parts) }
  for _, vl in ipairs(d.virt_lines or {}) do
    local s = {}
    for _, chunk in ipairs(vl) do
      if chunk[2] ~= 'ComplHintMore' then table.insert(s, chunk[1]) end
    end
    table.insert(lines, table.concat(s))
  end
  return { text = table.concat(lines, '\n'), row = marks[1][2], col = marks[1][3], hint = hint }
end

local last_items -- the server's last inline-completion answer (instrumented below)

local function snapshot()
  local row, col = unpack(api.nvim_win_get_cursor(0))
  return {
    lines = api.nvim_buf_get_lines(0, 0, -1, false),
    row = row - 1,
    col = col,
    mode = api.nvim_get_mode().mode,
  }
end

--- Wait for fresh ghost text (an answer newer than `after`), then press `keys`.
local function step(name, keys, after)
  local g = wait_for(name .. ' ghost text', 60000, function()
    if result.responses > after then
      local gt = ghost()
      if gt and gt.text ~= '' then return gt end
    end
  end)
  local before = snapshot()
  local items = vim.deepcopy(last_items)
  local count = result.responses
  feed(keys)
  sleep(150) -- the accept is scheduled; let it and the typeahead run
  local after_state = snapshot()
  table.insert(result.steps, {
    name = name, keys = keys, ghost = g, items = items,
    before = before, after = after_state,
  })
  return count
end

local function run()
  vim.cmd.edit(vim.fn.fnameescape(file))
  result.filetype = vim.bo.filetype
  local ks = require('keystroke')
  local client = wait_for('the keystroke client', 20000, function() return ks.client(0) end)
  result.client_name = client.name
  result.inline_capability = client.server_capabilities.inlineCompletionProvider ~= nil

  -- Instrument the client: remember each inline-completion answer.
  local request = client.request
  client.request = function(self, method, params, handler, bufnr)
    if method == 'textDocument/inlineCompletion' and handler then
      local inner = handler
      handler = function(err, res, ctx, cfg)
        if res then
          last_items = res.items or res
          result.responses = result.responses + 1
        end
        return inner(err, res, ctx, cfg)
      end
    end
    return request(self, method, params, handler, bufnr)
  end

  -- Ask keystroke.status until the model is loaded (state "ready").
  local t0 = vim.uv.now()
  wait_for('the model to load', 180000, function()
    local answer
    ks.execute('keystroke.status', {}, function(r) answer = r end)
    answer = wait_for('keystroke.status', 10000, function() return answer end)
    if answer.state == 'failed' then error('model failed: ' .. tostring(answer.error), 0) end
    if answer.state == 'ready' then return true end
    sleep(500)
  end)
  result.load_ms = vim.uv.now() - t0

  -- Cursor at the end of the marked line, insert mode, type a character.
  local target = tonumber(os.getenv('KS_LINE')) -- 1-based
  api.nvim_win_set_cursor(0, { target, 0 })
  feed('A' .. os.getenv('KS_TYPE'))
  sleep(50)
  local n = step('accept_word', '<M-Right>', 0)
  n = step('accept_line', '<M-C-Right>', n)
  -- On a fresh line below: cycle (<M-]> asks for several candidates, the
  -- next <M-]> shows the second), then <Tab> accepts the one shown.
  feed('<End><CR>' .. os.getenv('KS_TYPE2'))
  sleep(50)
  n = step('cycle_request', '<M-]>', n)
  wait_for('the invoked answer', 60000, function() return result.responses > n end)
  sleep(100)
  local cycled = { invoked_items = vim.deepcopy(last_items), first = ghost() }
  feed('<M-]>')
  sleep(150)
  cycled.second = ghost()
  result.cycle = cycled
  n = result.responses
  step('accept_all', '<Tab>', n - 1)
  feed('<Esc>')
  sleep(50)
  ks.last_status = nil
  vim.cmd('KeystrokeStatus')
  wait_for(':KeystrokeStatus', 10000, function() return ks.last_status end)
  result.final_lines = api.nvim_buf_get_lines(0, 0, -1, false)
  result.status_after = ks.last_status
  finish(nil)
end

api.nvim_create_autocmd('VimEnter', {
  nested = true,
  once = true,
  callback = function()
    vim.defer_fn(function() finish('deadline of ' .. deadline_s .. ' s reached') end, deadline_s * 1000)
    co = coroutine.create(function()
      local ok, err = xpcall(run, debug.traceback)
      if not ok then finish(tostring(err)) end
    end)
    assert(coroutine.resume(co))
  end,
})
