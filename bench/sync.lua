-- POST /v1/sync/product-sizes: batches of 1,000 updates to random SKUs, each with a newer
-- source_version than any before (a counter starting at the current time in microseconds).
local n = tonumber(os.getenv("BENCH_ROWS") or "1000")
local token = os.getenv("BENCH_TOKEN") or ""
local counter = os.time() * 1000000
math.randomseed(os.time())
request = function()
  local items = {}
  for i = 1, 1000 do
    counter = counter + 1
    items[i] = string.format(
      "{\"sku\":\"B%07d\",\"length_mm\":%d,\"width_mm\":200,\"height_mm\":100,\"weight_g\":900,\"source_version\":%d}",
      math.random(1, n), math.random(1, 100000), counter)
  end
  local body = "{\"updates\":[" .. table.concat(items, ",") .. "]}"
  return wrk.format("POST", "/v1/sync/product-sizes",
    { ["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json" }, body)
end
