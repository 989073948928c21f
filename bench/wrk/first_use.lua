-- Every request carries a token the server has not seen (no verified-token cache hit).
-- Env: LK_TOKENS (file, one pre-signed agent token per line), LK_HALF (owners).
local half = tonumber(os.getenv("LK_HALF"))
local tokens = {}
local idx = 0
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  for line in io.lines(os.getenv("LK_TOKENS")) do
    tokens[#tokens + 1] = line
  end
  -- Threads use disjoint halves of the file.
  idx = (tid - 1) * math.floor(#tokens / 2)
  math.randomseed(os.time() + tid)
end

request = function()
  idx = idx + 1
  if idx > #tokens then idx = 1 end
  local i = math.random(0, half - 1)
  return wrk.format("GET", "/v1/connections/svc/token?tenant_id=t" .. i, { ["Authorization"] = "Bearer " .. tokens[idx] })
end
