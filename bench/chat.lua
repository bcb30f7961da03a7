-- A wrk script posting a small chat request.
--
-- Copied from the CEO's benchmark kit (shared/bench/chat.lua). BENCH_KEY and BENCH_MODEL
-- set the bearer key and the model. Added for bench/run: BENCH_STREAM=1 adds
-- "stream":true to the body (used for the streaming scenarios).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "sk-bench")
local stream = ""
if os.getenv("BENCH_STREAM") == "1" then stream = ',"stream":true' end
wrk.body = '{"model":"' .. (os.getenv("BENCH_MODEL") or "gpt-4o-mini") .. '","messages":[{"role":"user","content":"Say hello"}],"max_tokens":32' .. stream .. '}'
