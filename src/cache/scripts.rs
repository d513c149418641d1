//! Lua scripts, loaded once and called by SHA (reloaded on `NOSCRIPT`).

/// Versioned compare-and-set of cache entries, one or many per call (one call per item cost
/// Redis several times the install's own work).
///
/// KEYS: entry and fence of each item, in pairs. ARGV: epoch, fence TTL (ms; `0` for a fill,
/// which leaves fences alone), then of each item: version, encoded entry, entry TTL (ms) and
/// the fence value (`<version>|<epoch>`; empty for a fill).
///
/// Installs an item only if its fence names no newer version and its entry holds no newer
/// version (an equal version is re-stamped when its epoch differs, or when the new value
/// proves it against a later WAL position: the 20-digit `verified` field, compared as a
/// string). Only an entry or a fence of the item's epoch counts: one of another epoch is never
/// served, nor used as proof, and versions may start over under a new epoch (after a
/// `TRUNCATE`, the table's versions restart at 1). A write sets the fence whenever it names no newer version, whether or not the
/// entry was installed: a fill that read the write's own version later may have installed it
/// first. Returns how many entries it installed.
///
/// Redis runs this for every row of every fill, warm-up page and write, so it does as little
/// as Lua allows: every entry and fence is read with one `MGET` up front (a `redis.call` per
/// key was most of a fill's cost to Redis); stored values are compared by position with plain
/// `find` and `sub`, never a pattern, and without making capture strings; nothing is
/// formatted per row (the caller sends the fence value). What the script itself set is looked
/// up first, so an item that follows another of the same SKU in one call sees the first
/// one's entry and fence.
pub const INSTALL: &str = r#"
local epoch = ARGV[1]
local fence_ttl = ARGV[2]
local epoch_bar = epoch .. '|'
local find, sub, byte = string.find, string.sub, string.byte
local installed = 0
local stored = redis.call('MGET', unpack(KEYS))
local set = {}
for i = 1, #KEYS / 2 do
  local entry_key, fence_key = KEYS[2 * i - 1], KEYS[2 * i]
  local version_text = ARGV[4 * i - 1]
  local version = tonumber(version_text)
  local value = ARGV[4 * i]
  local fenced_newer = false
  local fence = set[fence_key] or stored[2 * i]
  if fence then
    local bar = find(fence, '|', 1, true)
    local fenced = bar and tonumber(sub(fence, 1, bar - 1))
    fenced_newer = fenced ~= nil and fenced > version
      and find(fence, epoch, bar + 1, true) == bar + 1 and #fence == bar + #epoch
  end
  local newer = fenced_newer
  if not newer then
    local current = set[entry_key] or stored[2 * i - 1]
    if current then
      local bar = find(current, '|', 1, true)
      local cv = bar and tonumber(sub(current, 1, bar - 1))
      if cv ~= nil and find(current, epoch_bar, bar + 1, true) == bar + 1 then
        if cv == version then
          -- Same version and epoch: newer only if its stamp is at least the new one's. An
          -- entry from before stamps (no 20 digits and a bar there) has none.
          local at = bar + #epoch_bar + 1
          local stamp = byte(current, at + 20) == 124 and sub(current, at, at + 19) or ''
          local new_at = #version_text + #epoch_bar + 2
          newer = stamp >= sub(value, new_at, new_at + 19)
        else
          newer = cv > version
        end
      end
    end
  end
  if not newer then
    redis.call('SET', entry_key, value, 'PX', ARGV[4 * i + 1])
    set[entry_key] = value
    installed = installed + 1
  end
  -- A write's fence goes up even when its entry stays out: the entry there may be its own
  -- version, filled first by a later read, and the fence must outlive that entry.
  if fence_ttl ~= '0' and not fenced_newer then
    local fenced = ARGV[4 * i + 2]
    redis.call('SET', fence_key, fenced, 'PX', fence_ttl)
    set[fence_key] = fenced
  end
end
return installed
"#;

/// Raises the high-water mark in the meta key; never lowers it, never creates the key.
///
/// KEYS: meta. ARGV: WAL position as 20 zero-padded decimal digits (so string order is
/// numeric order, with no loss of precision in Lua), and optionally the epoch whose mark it
/// is (another epoch's is left alone).
pub const BUMP_HWM: &str = r#"
local meta = redis.call('GET', KEYS[1])
if not meta then
  return 0
end
local epoch, hwm = string.match(meta, '^([^|]+)|(%d+)$')
if ARGV[2] and epoch ~= ARGV[2] then
  return 0
end
if epoch and ARGV[1] > hwm then
  redis.call('SET', KEYS[1], epoch .. '|' .. ARGV[1])
end
return 1
"#;

/// Deletes a key only if it still holds the value the caller saw (audit repair of orphans).
///
/// KEYS: the key. ARGV: the value seen.
pub const DELETE_IF_UNCHANGED: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Invalidates one SKU at `version` without installing it: raises the fence (so no older fill
/// can land) and deletes an entry older than `version`.
///
/// KEYS: entry, fence. ARGV: version, epoch, fence TTL (ms).
pub const INVALIDATE: &str = r#"
local version = tonumber(ARGV[1])
local fence = redis.call('GET', KEYS[2])
local fenced, fence_epoch
if fence then
  fenced, fence_epoch = string.match(fence, '^(%d+)|(.*)$')
end
-- A fence of another epoch does not count (see the install script).
if not fenced or fence_epoch ~= ARGV[2] or tonumber(fenced) < version then
  redis.call('SET', KEYS[2], ARGV[1] .. '|' .. ARGV[2], 'PX', ARGV[3])
end
local current = redis.call('GET', KEYS[1])
local cv = current and tonumber(string.match(current, '^(%d+)|'))
if current and (not cv or cv < version) then
  redis.call('DEL', KEYS[1])
end
return 1
"#;

/// Replaces the epoch, if the meta key still holds what the caller saw, and records the data
/// set the new one begins on.
///
/// KEYS: meta, origin. ARGV: the meta value seen (empty: none), the new meta value, the new
/// origin value.
pub const RESTART_EPOCH: &str = r#"
local meta = redis.call('GET', KEYS[1]) or ''
if meta ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
return 1
"#;

/// Records which database history an epoch's high-water mark and versions come from, if the
/// epoch is still current and has none recorded yet. Returns 1 if the epoch is bound to that
/// history (now or before), 0 if it is bound to another or is no longer current.
///
/// KEYS: meta, database. ARGV: epoch, history.
pub const BIND_HISTORY: &str = r#"
local meta = redis.call('GET', KEYS[1])
if not meta or string.match(meta, '^([^|]+)|') ~= ARGV[1] then
  return 0
end
local bound = ARGV[1] .. '|' .. ARGV[2]
local current = redis.call('GET', KEYS[2])
if current and string.match(current, '^([^|]+)|') == ARGV[1] then
  return current == bound and 1 or 0
end
redis.call('SET', KEYS[2], bound)
return 1
"#;
