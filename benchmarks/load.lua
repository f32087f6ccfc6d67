-- wrk load script of benchmarks/run.py (one scenario per run).
--
-- Environment: SCENARIO (get | list | cursor | activity | feed | update | create), DATA (a folder with
-- tokens.txt, one bearer token per line, and ids.txt, lines "<token line> <conversation id>"),
-- NONCE (makes created contact ids unique across runs).
-- Each request uses a random account and, where it needs one, a random id of that account.
-- `cursor` walks pages with starting_after (the last id of the page it got) while has_more,
-- then restarts at a random id; `activity` walks the inbox order with each page's next_cursor,
-- `feed` the events feed with the last event id of each page, both restarting at the first
-- page. done() prints one line "RESULT {json}".

local scenario = os.getenv("SCENARIO") or "get"
local data = os.getenv("DATA") or "."
local nonce = os.getenv("NONCE") or tostring(os.time())

local accounts = {}
local walks = {}          -- pages to continue: {account, id}, pushed by response()
local pending = {}        -- account of each cursor request in flight, in order
local sequence = 0
local bad = 0
local thread_list = {}

function setup(thread)
   table.insert(thread_list, thread)
end

function init(args)
   math.randomseed(os.time() + tonumber(string.sub(nonce, -6)))
   for line in io.lines(data .. "/tokens.txt") do
      if #line > 0 then
         table.insert(accounts, {token = "Bearer " .. line, ids = {}})
      end
   end
   for line in io.lines(data .. "/ids.txt") do
      local index, id = line:match("^(%d+) (%w+)$")
      if index then table.insert(accounts[tonumber(index)].ids, id) end
   end
end

local function pick()
   local account = accounts[math.random(#accounts)]
   return account, account.ids[math.random(#account.ids)]
end

request = function()
   local account, id = pick()
   local headers = {["Authorization"] = account.token}
   if scenario == "get" then
      return wrk.format("GET", "/v1/conversations/" .. id, headers)
   elseif scenario == "list" then
      return wrk.format("GET", "/v1/conversations?limit=10", headers)
   elseif scenario == "cursor" then
      local walk = table.remove(walks)
      if walk ~= nil then
         account, id = walk[1], walk[2]
         headers = {["Authorization"] = account.token}
      end
      table.insert(pending, account)
      return wrk.format("GET", "/v1/conversations?limit=10&starting_after=" .. id, headers)
   elseif scenario == "activity" or scenario == "feed" then
      local walk = table.remove(walks)
      local path = scenario == "activity" and "/v1/conversations?order=activity&limit=10" or "/v1/events?limit=10"
      if walk ~= nil then
         account = walk[1]
         headers = {["Authorization"] = account.token}
         path = path .. "&starting_after=" .. walk[2]
      end
      table.insert(pending, account)
      return wrk.format("GET", path, headers)
   elseif scenario == "update" then
      headers["Content-Type"] = "application/json"
      local body = string.format('{"is_muted":%s,"last_opened_at":%d}',
                                 math.random(2) == 1 and "true" or "false", math.random(1, 2000000000))
      return wrk.format("PUT", "/v1/conversations/" .. id, headers, body)
   else
      sequence = sequence + 1
      headers["Content-Type"] = "application/json"
      local body = string.format('{"contact_id":"b%s_%d_%d"}', nonce, math.random(1000000), sequence)
      return wrk.format("POST", "/v1/conversations", headers, body)
   end
end

response = function(status, headers, body)
   if status >= 400 then bad = bad + 1 end
   if scenario == "cursor" then
      -- Responses may not come back in request order across connections; any account's next
      -- page is as good a load as its own, as long as the id belongs to the account used.
      local account = table.remove(pending, 1)
      local last = nil
      for id in body:gmatch('"id":"(%w+)"') do last = id end
      if account ~= nil and last ~= nil and body:find('"has_more":true', 1, true) then
         table.insert(walks, {account, last})
      end
   elseif scenario == "activity" or scenario == "feed" then
      local account = table.remove(pending, 1)
      local next = nil
      if scenario == "activity" then
         next = body:match('"next_cursor":"([%w_]+)"')
      else
         for id in body:gmatch('"id":"(evt_%w+)"') do next = id end
      end
      if account ~= nil and next ~= nil and body:find('"has_more":true', 1, true) then
         table.insert(walks, {account, next})
      end
   end
end

function done(summary, latency, requests)
   local errors = summary.errors.connect + summary.errors.read + summary.errors.write
                  + summary.errors.timeout + summary.errors.status
   io.write(string.format(
      'RESULT {"requests":%d,"seconds":%.3f,"errors":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
      summary.requests, summary.duration / 1e6, errors, latency:percentile(50), latency:percentile(99),
      latency.max))
end
