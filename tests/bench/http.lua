-- wrk script of the HTTP benchmark (scripts/bench).
--   wrk ... -s tests/bench/http.lua URL               GET URL
--   wrk ... -s tests/bench/http.lua URL -- POST BODY  POST BODY (JSON) to URL
-- At the end it prints one line, `bench-result {...}`, with the counts and the latency
-- percentiles in microseconds, for the benchmark to read.

function init(args)
   if args[1] == "POST" then
      wrk.method = "POST"
      wrk.body = args[2]
      wrk.headers["Content-Type"] = "application/json"
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'bench-result {"requests":%d,"duration_us":%d,"p50_us":%.1f,"p99_us":%.1f,' ..
      '"p999_us":%.1f,"max_us":%.1f,"non_2xx_3xx":%d,"connect_errors":%d,' ..
      '"read_errors":%d,"write_errors":%d,"timeouts":%d}\n',
      summary.requests, summary.duration,
      latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max,
      e.status, e.connect, e.read, e.write, e.timeout))
end
