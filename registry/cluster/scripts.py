"""The Lua scripts that change run state in Redis, each in one atomic step.

Every change that numbers an event runs inside Redis, so a seq is allocated in the same
step as its ``XADD`` and stays gapless and unique whichever process publishes; exactly one
``complete`` ends a run because only a script that finds it ``running`` may end it. Keys
are built inside the scripts from a prefix, so one Redis server (or a primary with
replicas) is required; Redis Cluster's key slots are not supported.

Keys, for prefix ``P``:

- ``P:run:RUN`` hash: session_id, owner, provider, status (queued, running, completed),
  proc (the process that accepted the send and drives the run), client_msg_id, um (the
  user message's data until the run starts), started_at, ord, last_seq, completed_at,
  outcome, watched (whether any process had the session subscribed when it ended).
  Expires ``ttl`` seconds after the run completes.
- ``P:ev:RUN`` stream: one entry per event, id ``0-SEQ``, fields ``k`` kind, ``t`` ts,
  ``d`` data as JSON text; capped (approximately) at the replay buffer's size; expires
  with its run.
- ``P:ses:SESSION`` hash: owner, running (run id), latest (run id).
- ``P:sruns:SESSION`` list: the session's newest run ids, oldest first (at most 32).
- ``P:lease:SESSION`` string: the running run's id, with an expiry its process renews.
- ``P:queue:SESSION`` list: queued run ids, next first.
- ``P:msg:SESSION`` hash: client_msg_id -> run id.
- ``P:watch:SESSION`` hash: process id -> its live subscriptions to the session.
- ``P:running`` hash: run id -> session id, every running run (what reapers scan).
- ``P:unsettled`` hash: run id -> the process that must still write the run's end to the
  database (its driver, or whoever reaped it).
- ``P:urun:OWNER`` set: the owner's running run ids; ``P:uall:OWNER`` sorted set: the
  owner's recent runs by start (pruned as their hashes expire).
- ``P:proc:PROC`` string: a live process's heartbeat (expires when it stops renewing).
- ``P:ord`` counter: start order of runs, for the database's ``ord``.

Channels: ``P:live:SESSION`` carries each appended batch as a header line (a JSON array:
run id, first seq, ts, kinds, start info or null, end info or null) and then one line of
data JSON per event; ``P:notice`` carries run starts, finishes and session deletions as
JSON.
"""

from __future__ import annotations

# Helpers shared by the scripts. ``begin`` starts a queued run (its hash exists, status
# queued); ``finish`` appends a running run's one ``complete`` and returns its seq, or 0
# and changes nothing when the run is not running (a duplicate, a race lost).
_LIB = """
local function watchers(P, sid)
  local all = redis.call('HGETALL', P .. ':watch:' .. sid)
  local total = 0
  for i = 1, #all, 2 do
    if redis.call('EXISTS', P .. ':proc:' .. all[i]) == 1 then
      total = total + tonumber(all[i + 1])
    else
      redis.call('HDEL', P .. ':watch:' .. sid, all[i])
    end
  end
  return total
end

local function notice(P, kind, rk, run_id, subscribers)
  local f = redis.call('HMGET', rk, 'session_id', 'owner', 'provider', 'status',
    'started_at', 'completed_at', 'last_seq', 'outcome')
  local run = {run_id = run_id, session_id = f[1], provider = f[3], status = f[4],
    started_at = tonumber(f[5]) or cjson.null, completed_at = tonumber(f[6]) or cjson.null,
    last_seq = tonumber(f[7]) or 0, subscribers = subscribers, outcome = f[8] or cjson.null}
  redis.call('PUBLISH', P .. ':notice',
    cjson.encode({kind = kind, owner = f[2], session_id = f[1], run = run}))
end

local function begin(P, run_id, ts, lease_ms, maxlen)
  local rk = P .. ':run:' .. run_id
  local f = redis.call('HMGET', rk, 'session_id', 'owner', 'um', 'proc', 'client_msg_id',
    'provider')
  local sid, owner = f[1], f[2]
  local ord = redis.call('INCR', P .. ':ord')
  redis.call('SET', P .. ':lease:' .. sid, run_id, 'PX', lease_ms)
  redis.call('HSET', rk, 'status', 'running', 'started_at', ts, 'last_seq', 1, 'ord', ord)
  redis.call('HDEL', rk, 'um')
  redis.call('XADD', P .. ':ev:' .. run_id, 'MAXLEN', '~', maxlen, '0-1',
    'k', 'user_message', 't', ts, 'd', f[3])
  local sk = P .. ':ses:' .. sid
  redis.call('HSET', sk, 'owner', owner, 'running', run_id, 'latest', run_id)
  local lk = P .. ':sruns:' .. sid
  redis.call('RPUSH', lk, run_id)
  redis.call('LTRIM', lk, -32, -1)
  -- While a run runs, the session's keys stay; they expire ``ttl`` after its last run.
  for _, key in ipairs({sk, lk, P .. ':msg:' .. sid}) do redis.call('PERSIST', key) end
  redis.call('HSET', P .. ':running', run_id, sid)
  redis.call('SADD', P .. ':urun:' .. owner, run_id)
  redis.call('HSET', P .. ':unsettled', run_id, f[4])
  local start = {owner = owner, provider = f[6], proc = f[4], ord = ord,
    client_msg_id = f[5]}
  redis.call('PUBLISH', P .. ':live:' .. sid,
    cjson.encode({run_id, 1, tonumber(ts), {'user_message'}, start, cjson.null})
      .. '\\n' .. f[3])
  notice(P, 'run_started', rk, run_id, watchers(P, sid))
end

local function finish(P, run_id, ts, data, outcome, ttl, maxlen, lease_ms, start_next,
    min_seq)
  local rk = P .. ':run:' .. run_id
  local f = redis.call('HMGET', rk, 'status', 'session_id', 'owner', 'last_seq')
  if f[1] ~= 'running' then return 0 end
  local sid = f[2]
  local seq = math.max(tonumber(f[4]), tonumber(min_seq) or 0) + 1
  local ek = P .. ':ev:' .. run_id
  redis.call('XADD', ek, 'MAXLEN', '~', maxlen, '0-' .. seq, 'k', 'complete', 't', ts, 'd', data)
  redis.call('HSET', rk, 'status', 'completed', 'outcome', outcome, 'completed_at', ts,
    'last_seq', seq)
  redis.call('EXPIRE', rk, ttl)
  redis.call('EXPIRE', ek, ttl)
  local sk = P .. ':ses:' .. sid
  if redis.call('HGET', sk, 'running') == run_id then redis.call('HDEL', sk, 'running') end
  local lk = P .. ':lease:' .. sid
  if redis.call('GET', lk) == run_id then redis.call('DEL', lk) end
  redis.call('HDEL', P .. ':running', run_id)
  redis.call('SREM', P .. ':urun:' .. f[3], run_id)
  local watching = watchers(P, sid)
  -- Kept for whoever writes the run's end to the database (has_unread).
  redis.call('HSET', rk, 'watched', watching > 0 and '1' or '0')
  redis.call('PUBLISH', P .. ':live:' .. sid,
    cjson.encode({run_id, seq, tonumber(ts), {'complete'}, cjson.null,
      {watched = watching > 0}}) .. '\\n' .. data)
  notice(P, 'run_finished', rk, run_id, watching)
  for _, key in ipairs({sk, P .. ':msg:' .. sid, P .. ':sruns:' .. sid}) do
    redis.call('EXPIRE', key, ttl)
  end
  if start_next then
    local nxt = redis.call('LPOP', P .. ':queue:' .. sid)
    if nxt then begin(P, nxt, ts, lease_ms, maxlen) end
  end
  return seq
end

-- Queued runs taken off the queue each become a run that ends at once with ``outcome``.
local function end_queued(P, sid, ts, data, outcome, ttl, maxlen, lease_ms)
  local qk = P .. ':queue:' .. sid
  local nxt = redis.call('LPOP', qk)
  while nxt do
    begin(P, nxt, ts, lease_ms, maxlen)
    finish(P, nxt, ts, data, outcome, ttl, maxlen, lease_ms, false)
    nxt = redis.call('LPOP', qk)
  end
end
"""

START = (
    _LIB
    + """
-- ARGV: P, run_id, session_id, owner, provider, ts, lease_ms, proc, um (the user message's
--   data), client_msg_id, maxlen, ttl, policy, queue_limit, orphan_data (complete data for
--   a run whose process died), interrupt_data (complete data for an interrupted run)
-- Returns {status, run_id}: started, queued, duplicate (the original run), busy (the
-- running run), full, or noord (the start-order counter must be seeded first).
local P, run_id, sid, owner = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ts, lease_ms, proc, cmid = ARGV[6], ARGV[7], ARGV[8], ARGV[10]
local maxlen, ttl, policy, limit = ARGV[11], ARGV[12], ARGV[13], tonumber(ARGV[14])
if redis.call('EXISTS', P .. ':ord') == 0 then return {'noord', ''} end
local mk = P .. ':msg:' .. sid
if cmid ~= '' then
  local dup = redis.call('HGET', mk, cmid)
  if dup then return {'duplicate', dup} end
end
local sk = P .. ':ses:' .. sid
local lk = P .. ':lease:' .. sid
local running = redis.call('HGET', sk, 'running')
if running and redis.call('EXISTS', lk) == 0 then
  -- Its process died (the lease expired before a reaper got to it): end it first.
  finish(P, running, ts, ARGV[15], 'server_restart', ttl, maxlen, lease_ms, true)
  redis.call('HSET', P .. ':unsettled', running, proc)
  running = redis.call('HGET', sk, 'running')
end
if running and policy == 'reject' then return {'busy', running} end
local qk = P .. ':queue:' .. sid
if running and policy == 'enqueue' and redis.call('LLEN', qk) >= limit then
  return {'full', ''}
end
local rk = P .. ':run:' .. run_id
redis.call('HSET', rk, 'session_id', sid, 'owner', owner, 'provider', ARGV[5],
  'status', 'queued', 'proc', proc, 'client_msg_id', cmid, 'um', ARGV[9], 'last_seq', 0)
redis.call('ZADD', P .. ':uall:' .. owner, ts, run_id)
redis.call('ZREMRANGEBYRANK', P .. ':uall:' .. owner, 0, -1001)
if cmid ~= '' then redis.call('HSET', mk, cmid, run_id) end
if not running then
  begin(P, run_id, ts, lease_ms, maxlen)
  return {'started', run_id}
end
if policy == 'enqueue' then
  redis.call('RPUSH', qk, run_id)
  return {'queued', run_id}
end
-- interrupt: first in line, then ending the running run starts it.
redis.call('LPUSH', qk, run_id)
finish(P, running, ts, ARGV[16], 'interrupted', ttl, maxlen, lease_ms, true)
return {'started', run_id}
"""
)

APPEND = """
-- ARGV: P, run_id ('' for the session's running run), session_id, ts, maxlen, min_seq,
--   kinds (a JSON array), data...
-- ``min_seq`` is the highest seq of the run the caller knows was handed out: a Redis that
-- came back with older data (a snapshot) would number from below it again, reusing seqs
-- clients saw; numbering continues after it instead.
-- Returns {first seq of the batch, run id, seqs skipped}, or {0, '', 0} when the run is not
-- running.
local P, run_id, sid, ts, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if run_id == '' then
  run_id = redis.call('HGET', P .. ':ses:' .. sid, 'running')
  if not run_id then return {0, '', 0} end
end
local rk = P .. ':run:' .. run_id
local f = redis.call('HMGET', rk, 'status', 'session_id', 'last_seq')
if f[1] ~= 'running' then return {0, '', 0} end
local ek = P .. ':ev:' .. run_id
local kinds = cjson.decode(ARGV[7])
local held = tonumber(f[3])
local seq = math.max(held, tonumber(ARGV[6]))
local first = seq + 1
for i = 1, #kinds do
  seq = seq + 1
  redis.call('XADD', ek, 'MAXLEN', '~', maxlen, '0-' .. seq,
    'k', kinds[i], 't', ts, 'd', ARGV[7 + i])
end
redis.call('HSET', rk, 'last_seq', seq)
redis.call('PUBLISH', P .. ':live:' .. f[2],
  cjson.encode({run_id, first, tonumber(ts), kinds, cjson.null, cjson.null}) .. '\\n'
    .. table.concat(ARGV, '\\n', 8))
return {first, run_id, first - held - 1}
"""

FINISH = (
    _LIB
    + """
-- ARGV: P, run_id, ts, data, outcome, ttl, maxlen, lease_ms, min_seq (as for APPEND)
-- Ends a running run and starts the session's next queued run. Returns the complete's
-- seq, or 0 when the run is not running.
local P = ARGV[1]
return finish(P, ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], true,
  ARGV[9])
"""
)

ABORT = (
    _LIB
    + """
-- ARGV: P, session_id, ts, data, outcome, ttl, maxlen, lease_ms, clear_queue ('1'/'0'),
--   run_id, min_seq (the running run as the caller knows it, and as for APPEND; '' and 0
--   when it does not)
-- Ends the session's running run (and, with clear_queue, each queued run at once, with the
-- same outcome). Returns {run_id, last_seq}, or {} when nothing was running.
local P, sid, ts, data, outcome = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ttl, maxlen, lease_ms = ARGV[6], ARGV[7], ARGV[8]
local clear = ARGV[9] == '1'
local running = redis.call('HGET', P .. ':ses:' .. sid, 'running')
local seq = 0
if running then
  local floor = running == ARGV[10] and ARGV[11] or 0
  seq = finish(P, running, ts, data, outcome, ttl, maxlen, lease_ms, not clear, floor)
end
-- Only with nothing running: ending a queued run must not start the next for real.
if clear then end_queued(P, sid, ts, data, outcome, ttl, maxlen, lease_ms) end
if seq == 0 then return {} end
return {running, seq}
"""
)

REAP = (
    _LIB
    + """
-- ARGV: P, run_id, ts, data, ttl, maxlen, lease_ms, proc, min_seq (as for APPEND)
-- Ends a running run whose lease is gone (its process died) with ``server_restart``; the
-- reaping process takes over writing its end. Returns the complete's seq, or 0 when the
-- run still has its lease or is not running.
local P, run_id, proc = ARGV[1], ARGV[2], ARGV[8]
local sid = redis.call('HGET', P .. ':run:' .. run_id, 'session_id')
if not sid or redis.call('GET', P .. ':lease:' .. sid) == run_id then return 0 end
local seq = finish(P, run_id, ARGV[3], ARGV[4], 'server_restart', ARGV[5], ARGV[6], ARGV[7],
  true, ARGV[9])
if seq > 0 then redis.call('HSET', P .. ':unsettled', run_id, proc) end
return seq
"""
)

RENEW = """
-- ARGV: P, lease_ms, proc, then session id / run id pairs. Renews the process's heartbeat
-- and each lease still held by its run; returns the run ids whose lease is gone.
local P, lease_ms = ARGV[1], ARGV[2]
redis.call('SET', P .. ':proc:' .. ARGV[3], '1', 'PX', lease_ms)
local lost = {}
for i = 4, #ARGV, 2 do
  local lk = P .. ':lease:' .. ARGV[i]
  if redis.call('GET', lk) == ARGV[i + 1] then
    redis.call('PEXPIRE', lk, lease_ms)
  else
    lost[#lost + 1] = ARGV[i + 1]
  end
end
return lost
"""

ORPHANS = """
-- ARGV: P, proc. Running runs whose lease is gone (their process died), as run id /
-- session id pairs; and completed runs whose end no live process will write (their
-- process died first), which are handed to ``proc``, as run ids.
local P, proc = ARGV[1], ARGV[2]
local all = redis.call('HGETALL', P .. ':running')
local orphans = {}
for i = 1, #all, 2 do
  if redis.call('GET', P .. ':lease:' .. all[i + 1]) ~= all[i] then
    orphans[#orphans + 1] = all[i]
    orphans[#orphans + 1] = all[i + 1]
  end
end
local unsettled = redis.call('HGETALL', P .. ':unsettled')
local claimed = {}
for i = 1, #unsettled, 2 do
  local run_id, owner = unsettled[i], unsettled[i + 1]
  if owner ~= proc and redis.call('EXISTS', P .. ':proc:' .. owner) == 0 then
    local status = redis.call('HGET', P .. ':run:' .. run_id, 'status')
    if status == 'completed' or not status then
      redis.call('HSET', P .. ':unsettled', run_id, proc)
      claimed[#claimed + 1] = run_id
    end
  end
end
return {orphans, claimed}
"""

SETTLED = """
-- ARGV: P, proc, run ids. The process wrote these runs' ends: forget them as unsettled.
local P, proc = ARGV[1], ARGV[2]
for i = 3, #ARGV do
  if redis.call('HGET', P .. ':unsettled', ARGV[i]) == proc then
    redis.call('HDEL', P .. ':unsettled', ARGV[i])
  end
end
return 0
"""

WATCH = """
-- ARGV: P, proc, lease_ms, then session id / count pairs: this process's live
-- subscriptions per session (0 removes it). Also renews the process's heartbeat.
local P, proc = ARGV[1], ARGV[2]
redis.call('SET', P .. ':proc:' .. proc, '1', 'PX', ARGV[3])
for i = 4, #ARGV, 2 do
  local key = P .. ':watch:' .. ARGV[i]
  if ARGV[i + 1] == '0' then
    redis.call('HDEL', key, proc)
  else
    redis.call('HSET', key, proc, ARGV[i + 1])
  end
end
return 0
"""

DELETE = (
    _LIB
    + """
-- ARGV: P, session_id, owner, ts, data, ttl, maxlen, lease_ms
-- A deleted session: its running and queued runs end (``aborted``), its keys go, and every
-- process hears of it. Returns the ids of the runs it ended.
local P, sid, owner, ts, data = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ttl, maxlen, lease_ms = ARGV[6], ARGV[7], ARGV[8]
local ended = {}
local running = redis.call('HGET', P .. ':ses:' .. sid, 'running')
if running then
  finish(P, running, ts, data, 'aborted', ttl, maxlen, lease_ms, false)
  ended[#ended + 1] = running
end
for _, run_id in ipairs(redis.call('LRANGE', P .. ':queue:' .. sid, 0, -1)) do
  ended[#ended + 1] = run_id
end
end_queued(P, sid, ts, data, 'aborted', ttl, maxlen, lease_ms)
-- Its runs leave the owner's listings at once (their hashes expire with the TTL: a process
-- still writing one's end reads it until then).
for _, run_id in ipairs(redis.call('LRANGE', P .. ':sruns:' .. sid, 0, -1)) do
  redis.call('ZREM', P .. ':uall:' .. owner, run_id)
  redis.call('SREM', P .. ':urun:' .. owner, run_id)
end
for _, key in ipairs({'ses', 'msg', 'queue', 'watch', 'sruns', 'lease'}) do
  redis.call('DEL', P .. ':' .. key .. ':' .. sid)
end
redis.call('PUBLISH', P .. ':notice',
  cjson.encode({kind = 'session_deleted', owner = owner, session_id = sid}))
return ended
"""
)

RUNS = """
-- ARGV: P, owner, status ('running' or 'all'). The owner's run summaries as JSON, each
-- with its session's live subscriptions across processes; runs whose hash expired are
-- dropped from the owner's set.
local P, owner = ARGV[1], ARGV[2]
local ids
if ARGV[3] == 'running' then
  ids = redis.call('SMEMBERS', P .. ':urun:' .. owner)
else
  ids = redis.call('ZRANGE', P .. ':uall:' .. owner, 0, -1)
end
local out = {}
local counted = {}
for _, run_id in ipairs(ids) do
  local f = redis.call('HMGET', P .. ':run:' .. run_id, 'session_id', 'provider', 'status',
    'started_at', 'completed_at', 'last_seq', 'outcome')
  if not f[1] then
    redis.call('ZREM', P .. ':uall:' .. owner, run_id)
    redis.call('SREM', P .. ':urun:' .. owner, run_id)
  else
    local sid = f[1]
    if counted[sid] == nil then
      local all = redis.call('HGETALL', P .. ':watch:' .. sid)
      local total = 0
      for i = 1, #all, 2 do
        if redis.call('EXISTS', P .. ':proc:' .. all[i]) == 1 then
          total = total + tonumber(all[i + 1])
        end
      end
      counted[sid] = total
    end
    out[#out + 1] = {run_id = run_id, session_id = sid, provider = f[2], status = f[3],
      started_at = tonumber(f[4]) or cjson.null, completed_at = tonumber(f[5]) or cjson.null,
      last_seq = tonumber(f[6]) or 0, subscribers = counted[sid], outcome = f[7] or cjson.null}
  end
end
if #out == 0 then return '[]' end
return cjson.encode(out)
"""

RESTORE = (
    _LIB
    + """
-- ARGV: P, run_id, session_id, owner, provider, started_at, seq, ts, data, ttl, ord
-- A running run whose state Redis lost (it restarted empty) is ended by the process that
-- drives it: this puts back just enough for every process to hear of its end (the run as
-- completed, its stream holding only the complete at ``seq``). Returns 0 and changes
-- nothing when Redis knows the run.
local P, run_id, sid, owner = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local seq, ts, data, ttl = tonumber(ARGV[7]), ARGV[8], ARGV[9], ARGV[10]
local rk = P .. ':run:' .. run_id
if redis.call('EXISTS', rk) == 1 then return 0 end
redis.call('HSET', rk, 'session_id', sid, 'owner', owner, 'provider', ARGV[5],
  'status', 'completed', 'started_at', ARGV[6], 'completed_at', ts, 'last_seq', seq,
  'outcome', 'server_restart', 'ord', ARGV[11], 'client_msg_id', '')
redis.call('XADD', P .. ':ev:' .. run_id, '0-' .. seq, 'k', 'complete', 't', ts, 'd', data)
local sk = P .. ':ses:' .. sid
redis.call('HSET', sk, 'owner', owner, 'latest', run_id)
if redis.call('HGET', sk, 'running') == run_id then redis.call('HDEL', sk, 'running') end
local lk = P .. ':sruns:' .. sid
if redis.call('LPOS', lk, run_id) == false then redis.call('RPUSH', lk, run_id) end
for _, key in ipairs({rk, P .. ':ev:' .. run_id, sk, lk}) do redis.call('EXPIRE', key, ttl) end
redis.call('PUBLISH', P .. ':live:' .. sid,
  cjson.encode({run_id, seq, tonumber(ts), {'complete'}, cjson.null, {watched = false}})
    .. '\\n' .. data)
notice(P, 'run_finished', rk, run_id, 0)
return seq
"""
)

SEED_ORD = """
-- ARGV: P, value. Raises the start-order counter to at least ``value`` (the database's
-- highest ord), so runs started after a Redis restart still sort after older ones.
local key = ARGV[1] .. ':ord'
local current = redis.call('GET', key)
if not current or tonumber(current) < tonumber(ARGV[2]) then redis.call('SET', key, ARGV[2]) end
return 0
"""
