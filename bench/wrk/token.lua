-- Refresh-token requests, as latchkey sends them, straight to the local provider.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic Yzpz"
wrk.body = "grant_type=refresh_token&refresh_token=rt-due-00000001"
