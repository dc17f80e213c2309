-- wrk script for the abmesh Envoy benchmark: every request carries an
-- x-user-id, cycling through BENCH_USERS (default 4096) distinct 36-byte
-- UUID-shaped ids, so each request really hashes (4 SipHash-1-3 blocks + a
-- tail per key) and the assignments spread over all variants. The requests
-- are formatted once in init(); request() only picks the next one.
-- The ids are the same as verify.py's render_uuid().
local n = tonumber(os.getenv("BENCH_USERS") or "4096")
local reqs = {}
local k = 0

local function uuid(i)
  local x = (i * 2654435761) % 4294967296
  return string.format("%08x-%04x-4%03x-a%03x-%012x",
    x, i % 65536, math.floor(x / 16) % 4096, math.floor(x / 65536) % 4096, i)
end

function init(args)
  for i = 0, n - 1 do
    reqs[i + 1] = wrk.format("GET", "/", { ["x-user-id"] = uuid(i) })
  end
end

function request()
  k = k % n + 1
  return reqs[k]
end
