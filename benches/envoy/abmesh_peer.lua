-- abmesh_peer.lua: the abmesh assignment as an Envoy Lua filter
-- (envoy.filters.http.lua, LuaJIT), written as a performance peer for the
-- wasm filter. Per request it does what filter/src/decide.rs does for a plan
-- with one header identity, layers, traffic shares and weighted variants:
--
--   * read the user id header (first value; empty or absent = no identity);
--   * per experiment, in order: layer slot (one hash per layer per request,
--     cached), enrollment (skipped at 100 %), variant (SipHash-1-3-64 under
--     the experiment's keys, bucket = (h * 10000) >> 64);
--   * set the variant header of every experiment the user is in, remove it
--     otherwise; set the cluster header to the last chosen variant's cluster,
--     or remove it. Envoy's Lua filter clears the route cache itself when a
--     script changes request headers (`clear_route_cache`, default true), so
--     the route is re-selected like after the wasm filter.
--
-- The plan below is generated from experiments.json by render.py (keys are
-- precomputed there: SipHash-1-3-128 with key 0 over purpose ‖ 0xFF ‖ salt,
-- as filter/src/hash.rs BucketKey::derive); verify.py checks this filter
-- against the wasm filter in Envoy and against render.py's model.

local ffi = require("ffi")
local bit = require("bit")
local bxor, bor, band, rol, rshift, lshift = bit.bxor, bit.bor, bit.band, bit.rol, bit.rshift, bit.lshift
local floor = math.floor
local cast, copy = ffi.cast, ffi.copy

-- BEGIN GENERATED PLAN
-- Written by `python3 benches/envoy/render.py lua` from benches/envoy/experiments.json;
-- do not edit by hand. Keys: SipHash-1-3-128(key 0, purpose .. '\xff' .. salt),
-- i.e. filter/src/hash.rs BucketKey::derive; buckets: filter/src/plan.rs.
local IDENTITY = "x-user-id"
local CLUSTER_HEADER = "x-abmesh-cluster"
local LAYERS = {
  { k0 = 0x0ed764a25f34fa1aULL, k1 = 0xc9292aa71dfea6f5ULL }, -- layer 'models'
}
local EXPERIMENTS = {
  {
    name = "ranker_a", header = "x-abmesh-ranker_a",
    layer = 1, layer_start = 0, layer_end = 5000,
    traffic = 10000,
    ek0 = 0x6868d03dc885f316ULL, ek1 = 0x709eb6acdabb81caULL,
    vk0 = 0x2d8a0f371ea77e6aULL, vk1 = 0xb38a8947fd4fe49fULL,
    variants = {
      { name = "control", upper = 5000, cluster = "ranker_v1" },
      { name = "treatment", upper = 10000, cluster = "ranker_v2" },
    },
  },
  {
    name = "ranker_b", header = "x-abmesh-ranker_b",
    layer = 1, layer_start = 5000, layer_end = 10000,
    traffic = 10000,
    ek0 = 0xc4c3c3ddf1fdab98ULL, ek1 = 0x9cfb205364f7d783ULL,
    vk0 = 0x04daffb30f85f8edULL, vk1 = 0x802abd63563b93d6ULL,
    variants = {
      { name = "control", upper = 5000, cluster = "ranker_v1" },
      { name = "candidate", upper = 10000, cluster = "ranker_v3" },
    },
  },
  {
    name = "banner", header = "x-abmesh-banner",
    traffic = 8000,
    ek0 = 0xf9d6df761a44e703ULL, ek1 = 0x2b46f55ce1abe41bULL,
    vk0 = 0x612c00e297837725ULL, vk1 = 0x9b1e18ca8e11eba0ULL,
    variants = {
      { name = "blue", upper = 3333, cluster = nil },
      { name = "green", upper = 6667, cluster = nil },
      { name = "red", upper = 10000, cluster = nil },
    },
  },
}
-- END GENERATED PLAN

local u64 = ffi.typeof("uint64_t")
local pu8 = ffi.typeof("const uint8_t *")
local pu64 = ffi.typeof("const uint64_t *")
local tail = ffi.new("uint64_t[1]")

local function sipround(v0, v1, v2, v3)
  v0 = v0 + v1; v1 = rol(v1, 13); v1 = bxor(v1, v0); v0 = rol(v0, 32)
  v2 = v2 + v3; v3 = rol(v3, 16); v3 = bxor(v3, v2)
  v0 = v0 + v3; v3 = rol(v3, 21); v3 = bxor(v3, v0)
  v2 = v2 + v1; v1 = rol(v1, 17); v1 = bxor(v1, v2); v2 = rol(v2, 32)
  return v0, v1, v2, v3
end

-- One message block, c = 1 round.
local function compress(v0, v1, v2, v3, m)
  v3 = bxor(v3, m)
  v0, v1, v2, v3 = sipround(v0, v1, v2, v3)
  return bxor(v0, m), v1, v2, v3
end

-- SipHash-1-3-64 of the bytes of Lua string `s` under key (k0, k1). x86-64
-- is little-endian, so 8-byte blocks are read straight from the string.
-- Ids up to 64 bytes are hashed without a loop: LuaJIT compiles a loop into
-- a trace of its own and then cannot compile the code around it (the
-- request path), which made a loop version 5x slower.
local function siphash13(k0, k1, s)
  local n = #s
  local p = cast(pu8, s)
  local v0 = bxor(k0, 0x736f6d6570736575ULL)
  local v1 = bxor(k1, 0x646f72616e646f6dULL)
  local v2 = bxor(k0, 0x6c7967656e657261ULL)
  local v3 = bxor(k1, 0x7465646279746573ULL)
  local rem = n % 8
  local stop = n - rem
  local q = cast(pu64, p)
  if stop > 0 then
    v0, v1, v2, v3 = compress(v0, v1, v2, v3, q[0])
    if stop > 8 then
      v0, v1, v2, v3 = compress(v0, v1, v2, v3, q[1])
      if stop > 16 then
        v0, v1, v2, v3 = compress(v0, v1, v2, v3, q[2])
        if stop > 24 then
          v0, v1, v2, v3 = compress(v0, v1, v2, v3, q[3])
          if stop > 32 then
            v0, v1, v2, v3 = compress(v0, v1, v2, v3, q[4])
            if stop > 40 then
              v0, v1, v2, v3 = compress(v0, v1, v2, v3, q[5])
              if stop > 48 then
                v0, v1, v2, v3 = compress(v0, v1, v2, v3, q[6])
                if stop > 56 then
                  v0, v1, v2, v3 = compress(v0, v1, v2, v3, q[7])
                  for i = 8, stop / 8 - 1 do
                    v0, v1, v2, v3 = compress(v0, v1, v2, v3, q[i])
                  end
                end
              end
            end
          end
        end
      end
    end
  end
  -- Last block: the 0..7 remaining bytes, and the length in the top byte.
  tail[0] = 0
  if rem > 0 then copy(tail, p + stop, rem) end
  v0, v1, v2, v3 = compress(v0, v1, v2, v3, bor(tail[0], lshift(u64(band(n, 0xff)), 56)))
  v2 = bxor(v2, 0xffULL)
  v0, v1, v2, v3 = sipround(v0, v1, v2, v3)
  v0, v1, v2, v3 = sipround(v0, v1, v2, v3)
  v0, v1, v2, v3 = sipround(v0, v1, v2, v3)
  return bxor(bxor(v0, v1), bxor(v2, v3))
end

-- (h * 10000) >> 64 without 128-bit integers: with h = hi * 2^32 + lo,
-- (h * 10000) >> 64 = floor((hi * 10000 + floor(lo * 10000 / 2^32)) / 2^32);
-- every intermediate is below 2^46, so doubles hold it exactly.
local TWO32 = 4294967296
local function bucket(k0, k1, s)
  local h = siphash13(k0, k1, s)
  local hi = tonumber(rshift(h, 32))
  local lo = tonumber(band(h, 0xffffffffULL))
  return floor((hi * 10000 + floor(lo * 10000 / TWO32)) / TWO32)
end

local NEXP = #EXPERIMENTS
local layer_bucket = {} -- per request; -1 = not computed yet
for i = 1, #LAYERS do layer_bucket[i] = -1 end

function envoy_on_request(handle)
  local headers = handle:headers()
  local uid = headers:getAtIndex(IDENTITY, 0)
  if uid == "" then uid = nil end
  for i = 1, #LAYERS do layer_bucket[i] = -1 end
  local cluster = nil
  for i = 1, NEXP do
    local e = EXPERIMENTS[i]
    local variant = nil
    if uid then
      local li = e.layer
      local inside = true
      if li then
        local lb = layer_bucket[li]
        if lb < 0 then
          local l = LAYERS[li]
          lb = bucket(l.k0, l.k1, uid)
          layer_bucket[li] = lb
        end
        inside = lb >= e.layer_start and lb < e.layer_end
      end
      if inside and (e.traffic >= 10000 or bucket(e.ek0, e.ek1, uid) < e.traffic) then
        local b = bucket(e.vk0, e.vk1, uid)
        local vs = e.variants
        variant = vs[#vs]
        for j = 1, #vs do
          if b < vs[j].upper then variant = vs[j]; break end
        end
      end
    end
    if variant then
      headers:replace(e.header, variant.name)
      if variant.cluster then cluster = variant.cluster end
    else
      headers:remove(e.header)
    end
  end
  if cluster then
    headers:replace(CLUSTER_HEADER, cluster)
  else
    headers:remove(CLUSTER_HEADER)
  end
end
