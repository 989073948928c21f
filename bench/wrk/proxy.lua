-- Proxied calls for random owners. Env: LK_TOKEN (agent token), LK_HALF (owners).
local token = os.getenv("LK_TOKEN")
local half = tonumber(os.getenv("LK_HALF"))

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end

request = function()
  local i = math.random(0, half - 1)
  local headers = { ["Authorization"] = "Bearer " .. token, ["X-Latchkey-Tenant"] = "t" .. i }
  return wrk.format("GET", "/v1/proxy/api/calendars/primary/events?maxResults=10", headers)
end
