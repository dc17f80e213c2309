-- wrk script for the model host benchmark: POSTs the JSON body in the file
-- named by BODY_FILE (GET when it is unset), and prints one machine-readable
-- line with the totals and latency percentiles (microseconds).
local body_file = os.getenv("BODY_FILE")
if body_file and body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  wrk.method = "POST"
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"errors":%d,"non_2xx":%d,"duration_us":%d,"p50_us":%.1f,"p99_us":%.1f,"mean_us":%.1f}\n',
    summary.requests, e.connect + e.read + e.write + e.timeout + e.status, e.status,
    summary.duration, latency:percentile(50), latency:percentile(99), latency.mean))
end
