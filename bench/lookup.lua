-- POST /v1/product-sizes/lookup with 100 random SKUs of the data set.
local n = tonumber(os.getenv("BENCH_ROWS") or "1000")
local token = os.getenv("BENCH_TOKEN") or ""
math.randomseed(os.time())
request = function()
  local skus = {}
  for i = 1, 100 do
    skus[i] = string.format("\"B%07d\"", math.random(1, n))
  end
  local body = "{\"skus\":[" .. table.concat(skus, ",") .. "]}"
  return wrk.format("POST", "/v1/product-sizes/lookup",
    { ["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json" }, body)
end
