-- GET /v1/products/{sku}/size for a random SKU of the data set (B0000001 .. B<N>).
local n = tonumber(os.getenv("BENCH_ROWS") or "1000")
local token = os.getenv("BENCH_TOKEN") or ""
local path = os.getenv("BENCH_PATH") or "/v1/products/%s/size"
math.randomseed(os.time())
request = function()
  local sku = string.format("B%07d", math.random(1, n))
  return wrk.format("GET", string.format(path, sku), { ["Authorization"] = "Bearer " .. token })
end
