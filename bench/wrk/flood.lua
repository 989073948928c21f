-- Bad client credentials at the token endpoint. Env: LK_AUTH (a Basic header value with a
-- wrong secret); LK_SPREAD=1 sends each request from a random X-Forwarded-For address
-- (the server trusts 127.0.0.1 as a proxy), so the per-address limit never applies.
local auth = os.getenv("LK_AUTH")
local spread = os.getenv("LK_SPREAD") == "1"
local body = "grant_type=client_credentials"

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end

request = function()
  local headers = { ["Authorization"] = auth, ["Content-Type"] = "application/x-www-form-urlencoded" }
  if spread then
    headers["X-Forwarded-For"] = string.format("198.%d.%d.%d", math.random(0, 255), math.random(0, 255), math.random(1, 254))
  end
  return wrk.format("POST", "/oauth2/token", headers, body)
end
