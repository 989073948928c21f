-- Admin reads. Env: LK_ADMIN (the admin token).
local headers = { ["Authorization"] = "Bearer " .. os.getenv("LK_ADMIN") }

request = function()
  return wrk.format("GET", "/v1/admin/connections", headers)
end
