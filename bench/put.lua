-- PUT /v1/products/{sku}/size: one random SKU per request, as fast as its connection allows
-- (a steady stream of acknowledged writes that keeps raising the cache's high-water mark).
local n = tonumber(os.getenv("BENCH_ROWS") or "1000")
local token = os.getenv("BENCH_TOKEN") or ""
math.randomseed(os.time())
request = function()
  local body = string.format(
    "{\"length_mm\":%d,\"width_mm\":200,\"height_mm\":100,\"weight_g\":900}", math.random(1, 100000))
  return wrk.format("PUT", string.format("/v1/products/B%07d/size", math.random(1, n)),
    { ["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json" }, body)
end
