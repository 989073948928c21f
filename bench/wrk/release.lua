-- Releases of random owners. Env: LK_TOKEN (agent token), LK_KIND (api|oauth), LK_HALF (owners).
local token = os.getenv("LK_TOKEN")
local kind = os.getenv("LK_KIND")
local half = tonumber(os.getenv("LK_HALF"))
local headers = { ["Authorization"] = "Bearer " .. token }

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end

request = function()
  local i = math.random(0, half - 1)
  if kind == "api" then
    return wrk.format("GET", "/v1/connections/svc/token?tenant_id=t" .. i, headers)
  end
  return wrk.format("GET", "/v1/connections/crm/token?user_id=u" .. i, headers)
end
