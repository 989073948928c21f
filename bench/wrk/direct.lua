-- The same call straight to the upstream, with a key in the header. Env: LK_HALF (owners).
local half = tonumber(os.getenv("LK_HALF"))

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end

request = function()
  local i = math.random(0, half - 1)
  local headers = { ["X-API-Key"] = string.format("sk-live-%012d-abcdefghijklmnop", i) }
  return wrk.format("GET", "/api/calendars/primary/events?maxResults=10", headers)
end
