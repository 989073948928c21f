#!/usr/bin/env python3
"""latchkey load harness: `python3 bench/run.py [--n 100000] [--duration 5] [--full]`.

Seeds a vault through the library (bench/vault.rs `seed`), starts the release build, and
measures with wrk at 64 connections on this machine:
  (a) /healthz, (b) API-key releases of random owners, (c) OAuth releases, (d) first-use
  releases (a new agent token on every request: no verified-token cache),
alternating a/b a/b and reporting the median ratios, throughput, p50/p99 and errors; then
`keys rotate` wall time alone and while (b) runs; the server's RSS; and refresh throughput:
N OAuth credentials all due at once against a local token endpoint (bench/vault.rs
`provider`), next to that endpoint's direct throughput (wrk, same concurrency latchkey
uses per provider) — once with no added provider latency (latchkey's own ceiling) and
once with 20 ms (a realistic token endpoint). --full adds 10k/100k/1M credentials (RSS,
rotation). Prints Markdown tables (docs/performance.md keeps the latest).

--open-loop-only offers load at fixed rates (2k, 5k, 10k/s; bench/vault.rs `load`, which counts
each request's latency from the moment it was due, so that a stalled server is charged for the
requests it delayed, unlike a closed-loop wrk run), in both audit durability modes: /healthz,
API-key, OAuth and first-use releases, and proxied calls (--targets picks some).

--proxy-only measures proxy mode next to a direct call to the same local upstream (bench/vault.rs
`upstream`): latency at one connection (what a caller waits) and throughput at 64, in both
audit durability modes, alternating direct and proxied runs.

--backend postgres runs the same scenarios on PostgreSQL (a fresh database per scenario on the
local server, dropped afterwards). --replicas-only compares, in one run: API-key releases on
SQLite, on PostgreSQL with one replica and with two replicas sharing the database; refresh
throughput with two replicas; and `keys rotate` of --rotate-n credentials on PostgreSQL.
"""
import argparse, atexit, contextlib, json, os, re, shutil, signal, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORT = 8399
BASE = f"http://127.0.0.1:{PORT}"
PROVIDER_PORT = 8398
UPSTREAM_PORT = 8397
# The server binary; LATCHKEY_BIN measures another build (an older commit's, for before/after).
BIN = os.environ.get("LATCHKEY_BIN", f"{ROOT}/target/release/latchkey")
# The bench helper (seeding, endpoints, load); LATCHKEY_BENCH_BIN runs a built one
# (target/release/deps/vault-*) instead of building the working tree's.
BENCH_BIN = os.environ.get("LATCHKEY_BENCH_BIN")


def bench_cmd(*args):
    return [BENCH_BIN, *args] if BENCH_BIN else ["cargo", "bench", "-q", "--bench", "vault", "--", *args]
# latchkey's concurrent token requests per provider host (MAX_PER_PROVIDER in src/oauth/mod.rs).
PER_PROVIDER = 8
# The second replica of the --replicas-only scenarios listens here (same public URL as the first).
PORT2 = 8400
PG = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-X", "-Atq", "-v", "ON_ERROR_STOP=1"]
SERVERS = []  # latchkey processes still running: stopped at exit, whatever happens
_pg_count = 0


def _stop_leftovers():
    for p in list(SERVERS):
        with contextlib.suppress(Exception):
            stop_server(p)


atexit.register(_stop_leftovers)
# SIGTERM unwinds like Ctrl-C, so that servers stop and bench databases are dropped.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


@contextlib.contextmanager
def scenario_db(backend):
    """The environment a scenario's latchkey commands need for `backend`: nothing for SQLite
    (the file in LATCHKEY_DATA_DIR), or LATCHKEY_DATABASE_URL of a fresh PostgreSQL database
    `lk_bench_<pid>_<n>`, dropped when the scenario ends, even on error."""
    if backend == "sqlite":
        yield {}
        return
    global _pg_count
    _pg_count += 1
    name = f"lk_bench_{os.getpid()}_{_pg_count}"
    subprocess.run(PG + ["-d", "postgres", "-c", f"CREATE DATABASE {name}"], check=True, stdout=subprocess.DEVNULL)
    try:
        yield {"LATCHKEY_DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{name}"}
    finally:
        for p in [p for p in SERVERS if (p.lk_env or {}).get("LATCHKEY_DATABASE_URL", "").endswith(f"/{name}")]:
            with contextlib.suppress(Exception):
                stop_server(p)
        subprocess.run(PG + ["-d", "postgres", "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], stdout=subprocess.DEVNULL)


class Db:
    """Read-only queries on a scenario's database while it runs: SQLite directly, PostgreSQL
    through one long-lived psql (no process or connection per poll)."""

    def __init__(self, work, dbenv):
        url = dbenv.get("LATCHKEY_DATABASE_URL")
        if url:
            self.pg = subprocess.Popen(PG + ["-d", url.rsplit("/", 1)[1]], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        else:
            import sqlite3
            self.pg, self.lite = None, sqlite3.connect(f"file:{work}/data/latchkey.db?mode=ro", uri=True)

    def row(self, sql):
        """The first row of a query, as ints where they are numbers."""
        if self.pg is None:
            return list(self.lite.execute(sql).fetchone())
        self.pg.stdin.write(sql.rstrip(";") + ";\n")
        line = self.pg.stdout.readline()
        if not line:
            raise RuntimeError(f"psql failed on: {sql}")
        return [int(v) if v.lstrip("-").isdigit() else v for v in line.rstrip("\n").split("|")]

    def close(self):
        if self.pg is None:
            self.lite.close()
        else:
            self.pg.stdin.close()
            self.pg.wait(timeout=10)


def cli_env(work, dbenv):
    return dict(os.environ, LATCHKEY_DATA_DIR=f"{work}/data", LATCHKEY_KEYS_DIR=f"{work}/keys", **dbenv)


def rotate(work, dbenv, throttle=None):
    """Wall time of `latchkey keys rotate` (default throttle unless given)."""
    t = time.time()
    subprocess.run([BIN, "keys", "rotate", *(["--throttle", throttle] if throttle is not None else [])],
                   env=cli_env(work, dbenv), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.time() - t


def machine():
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), model)
    return f"{os.cpu_count()} cores ({model})"


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, cwd=ROOT, **kw)


def ensure_wrk():
    if shutil.which("wrk"):
        return
    if os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, stdout=subprocess.DEVNULL)
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")


def seed(n, tokens, extra=(), dbenv=None):
    """Seeds through the library into a new temporary directory (and the database of `dbenv`)."""
    work = tempfile.mkdtemp(prefix="latchkey-bench-")
    t = time.time()
    r = subprocess.run([*bench_cmd("seed", "--dir", work), "--n", str(n), "--tokens", str(tokens),
                        "--public-url", BASE, *extra], cwd=ROOT, env=dict(os.environ, **(dbenv or {})), stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        sys.exit(f"seeding failed:\n{r.stderr[-2000:]}")
    return work, time.time() - t


def start_helper(what, port, latency_ms):
    """A bench/vault.rs helper server (`provider`: a token endpoint; `upstream`: an API for
    proxy mode) answering after `latency_ms`; returns the process and its URL."""
    p = subprocess.Popen([*bench_cmd(what, "--port", str(port), "--latency-ms", str(latency_ms))],
                         cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    line = p.stdout.readline()
    if not line.startswith("LISTENING"):
        p.kill()
        sys.exit(f"the bench {what} did not start")
    return p, line.split()[1]


def start_provider(latency_ms):
    return start_helper("provider", PROVIDER_PORT, latency_ms)


def refresh_scenario(n, latency_ms, duration, backend="sqlite", replicas=1):
    """refreshes/s of n credentials due at once, and the endpoint's direct req/s (at the
    concurrency of `replicas` latchkey processes). With several replicas on one database,
    also each replica's share and how many credentials the provider refreshed twice."""
    provider, url = start_provider(latency_ms)
    work = None
    try:
        direct = wrk("/token", duration, "token.lua", base=f"http://127.0.0.1:{PROVIDER_PORT}", conns=PER_PROVIDER * replicas)["rps"]
        provider_call("POST", "/stats/reset")  # wrk presented one refresh token over and over
        with scenario_db(backend) as dbenv:
            work, _ = seed(2, 1, ["--due", str(n), "--provider", url], dbenv)
            time.sleep(1.1)  # seeded tokens expire after 1 s: all due now
            servers = start_servers(work, [PORT, PORT2][:replicas], dbenv)
            db = Db(work, dbenv)
            deadline = time.time() + 600
            done, started = 0, None
            while time.time() < deadline:
                done = db.row("SELECT count(*) FROM credentials WHERE connection_id = 'due' AND last_refresh_at IS NOT NULL")[0]
                if done and started is None:
                    started = (time.time(), done)  # rate counted from the first refreshes seen
                if done >= n or any(s.poll() is not None for s in servers):
                    break
                time.sleep(0.02)
            finished = time.time()
            if done < n:
                print(f"refresh scenario: only {done:,} of {n:,} refreshed", file=sys.stderr)
            failed = db.row("SELECT count(*) FROM credentials WHERE connection_id = 'due' AND refresh_failures > 0")[0]
            # A credential stored twice: more than one refresh record for it.
            stored_twice = db.row("SELECT count(*) - count(DISTINCT target) FROM audit WHERE action = 'credential.refresh' AND target LIKE 'due/%'")[0]
            db.close()
            shares = [refresh_count(p) for p in [PORT, PORT2][:replicas]]
            problems = server_problems(servers)
            for s in servers:
                stop_server(s)
        stats = provider_call("GET", "/stats")
        rate = (done - started[1]) / (finished - started[0]) if started and finished > started[0] else 0.0
        return {"direct": direct, "rate": rate, "done": done, "failed": failed, "shares": shares, "stored_twice": stored_twice,
                "presented_twice": stats["due_presented"] - stats["due_distinct"] if stats else None, "problems": problems}
    finally:
        if work:
            shutil.rmtree(work, ignore_errors=True)
        # cargo runs the endpoint as its child: stop the whole process group, and wait for the
        # endpoint too (actix drains for up to 30 s after SIGTERM: killed after 10).
        os.killpg(provider.pid, signal.SIGTERM)
        provider.wait(timeout=10)
        for i in range(201):
            try:
                os.killpg(provider.pid, signal.SIGKILL if i == 200 else 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)


def provider_call(method, path):
    """The bench token endpoint's counters (None if this endpoint has none)."""
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{PROVIDER_PORT}{path}", method=method, data=b"" if method == "POST" else None)
        body = urllib.request.urlopen(req, timeout=5).read()
        return json.loads(body) if body else {}
    except Exception:
        return None


def refresh_count(port):
    """Successful refreshes this replica made (its /metrics), or None."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except Exception:
        return None
    m = re.search(r'^latchkey_refresh_total\{connection="due",outcome="ok"\} (\d+)', text, re.M)
    return int(m.group(1)) if m else 0


def start_server(work, extra_env=None, port=PORT):
    return start_servers(work, [port], extra_env)[0]


def start_servers(work, ports, extra_env=None):
    """`latchkey serve` on each port, all started before waiting for any (replicas of one
    database when extra_env names one). Every replica keeps the public URL BASE, as behind a
    load balancer. Warnings and errors go to <work>/serve-<port>.log."""
    procs = []
    for port in ports:
        env = dict(os.environ, LATCHKEY_DATA_DIR=f"{work}/data", LATCHKEY_KEYS_DIR=f"{work}/keys", LATCHKEY_BIND=f"127.0.0.1:{port}",
                   LATCHKEY_PUBLIC_URL=BASE, LATCHKEY_LOG="warn")
        env.update(extra_env or {})
        with open(f"{work}/serve-{port}.log", "w") as log:
            p = subprocess.Popen([BIN, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=log)
        p.lk_env, p.lk_log, p.lk_port = extra_env, f"{work}/serve-{port}.log", port
        SERVERS.append(p)
        procs.append(p)
    for p in procs:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{p.lk_port}/healthz", timeout=1)
                break
            except Exception:
                if p.poll() is not None:
                    break
                time.sleep(0.05)
        else:
            p.kill()
            p.wait()
        if p.poll() is not None:
            log = open(p.lk_log).read()[-2000:]
            for q in procs:
                stop_server(q)
            sys.exit(f"server on port {p.lk_port} did not start:\n{log}")
    return procs


def stop_server(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in SERVERS:
        SERVERS.remove(p)


def server_problems(servers):
    """What the servers logged (warn and above) and whether one exited, while still running."""
    out = []
    for p in servers:
        if p.poll() is not None:
            out.append(f"port {p.lk_port}: server exited with status {p.returncode}")
        with contextlib.suppress(OSError), open(p.lk_log) as f:
            lines = [l.rstrip() for l in f if l.strip()]
        seen = {}
        for l in lines:
            key = re.sub(r"^\S*\d{4}-\d\d-\d\dT\S+\s*", "", l)  # the same message at another time
            seen[key] = seen.get(key, 0) + 1
        out += [f"port {p.lk_port}: {k}" + (f" (×{c})" if c > 1 else "") for k, c in list(seen.items())[:5]]
        if len(seen) > 5:
            out.append(f"port {p.lk_port}: … {len(seen) - 5} more distinct lines")
    return out


def rss_mib(p):
    with open(f"/proc/{p.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def to_ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    x = float(m.group(1))
    return {"us": x / 1000, "ms": x, "s": x * 1000}[m.group(2)]


def wrk_cmd(path, duration, script=None, base=BASE, conns=64, threads=2):
    cmd = ["wrk", f"-t{min(threads, conns)}", f"-c{conns}", f"-d{duration}s", "--latency"]
    if script:
        cmd += ["-s", f"{ROOT}/bench/wrk/{script}"]
    return cmd + [base + path]


def wrk(path, duration, script=None, env=None, base=BASE, conns=64, threads=2):
    out = subprocess.run(wrk_cmd(path, duration, script, base, conns, threads), capture_output=True, text=True,
                         env=dict(os.environ, **(env or {}))).stdout
    return parse_wrk(out)


def wrk_parallel(ports, path, duration, script=None, env=None, conns=64, threads=2):
    """One wrk per replica at the same time, the connections and threads split between them."""
    k = len(ports)
    procs = [subprocess.Popen(wrk_cmd(path, duration, script, f"http://127.0.0.1:{port}", conns // k, max(1, threads // k)),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=dict(os.environ, **(env or {})))
             for port in ports]
    return [parse_wrk(p.communicate()[0]) for p in procs]


def parse_wrk(out):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = to_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    sock = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50": p50, "p99": p99, "total": total, "errors": errors + (1 if sock else 0), "non2xx": errors, "socket": sock.group(1) if sock else None}


def fmt(r):
    return f"{r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['errors']}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=None, help="credentials for the release scenarios (100000; 10000 with --replicas-only)")
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--full", action="store_true", help="also 1M credentials (rotation, RSS)")
    ap.add_argument("--refresh-only", action="store_true", help="only the refresh-throughput scenario")
    ap.add_argument("--release-only", action="store_true", help="only the release scenarios (before/after comparisons)")
    ap.add_argument("--flood-only", action="store_true", help="only admin latency under a bad-credential flood")
    ap.add_argument("--full-only", action="store_true", help="only the RSS and rotation sizes of --full")
    ap.add_argument("--proxy-only", action="store_true", help="only proxy mode against a direct call to the same upstream")
    ap.add_argument("--open-loop-only", action="store_true", help="only fixed offered rates (open loop): /healthz, releases, proxied calls")
    ap.add_argument("--targets", default=",".join(OPEN_LOOP_TARGETS), help="what --open-loop-only offers load to (comma-separated)")
    ap.add_argument("--rates", default="2000,5000,10000", help="offered rates of --open-loop-only, requests/s")
    ap.add_argument("--upstream-latency-ms", type=int, default=0, help="time the --proxy-only upstream takes per call (default 0: latchkey's own ceiling)")
    ap.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite",
                    help="where the scenarios keep their data (postgres: a fresh database per scenario on 127.0.0.1:5432)")
    ap.add_argument("--replicas-only", action="store_true",
                    help="only SQLite vs PostgreSQL with 1 and 2 replicas: releases, refreshes (2 replicas), keys rotate")
    ap.add_argument("--parts", default="releases,refresh,rotate",
                    help="which --replicas-only scenarios to run (comma-separated: releases, refresh, rotate)")
    ap.add_argument("--rotate-n", type=int, default=100_000, help="credentials for the --replicas-only rotation")
    ap.add_argument("--refresh-n", type=int, default=None, help="due credentials for the --replicas-only refresh runs (30000 at +0 ms, 8000 at +20 ms)")
    a = ap.parse_args()
    if a.n is None:
        a.n = 10_000 if a.replicas_only else 100_000
    ensure_wrk()
    if a.backend == "postgres" or a.replicas_only:
        subprocess.run(PG + ["-d", "postgres", "-c", "SELECT 1"], check=True, stdout=subprocess.DEVNULL)
    if "LATCHKEY_BIN" not in os.environ:
        sh(["cargo", "build", "-q", "--release", "--bin", "latchkey"])
    if not BENCH_BIN:
        sh(["cargo", "bench", "-q", "--bench", "vault", "--no-run"])
    if a.replicas_only:
        replicas(a)
        return
    if a.flood_only:
        flood_scenarios(a)
        return
    if a.full_only:
        full(a)
        return
    if a.proxy_only:
        proxy_scenarios(a)
        return
    if a.open_loop_only:
        open_loop_scenarios(a)
        return
    if not a.refresh_only:
        release_scenarios(a)
        if a.release_only:
            return
        flood_scenarios(a)
    refresh_scenarios(a)
    if a.full:
        full(a)


def start_upstream(latency_ms=0):
    return start_helper("upstream", UPSTREAM_PORT, latency_ms)


def proxy_scenarios(a):
    with scenario_db(a.backend) as dbenv:
        _proxy_scenarios(a, dbenv)


def _proxy_scenarios(a, dbenv):
    """Proxied calls (an API key injected, 300 owners) against the same call made directly
    to the upstream, with its key, in one run. Latency at 1 connection, throughput at 64."""
    upstream, url = start_upstream(a.upstream_latency_ms)
    work = None
    try:
        work, _ = seed(600, 1, ["--upstream", url], dbenv=dbenv)
        env = {"LK_TOKEN": open(f"{work}/tokens.txt").readline().strip(), "LK_HALF": "300"}
        d = a.duration
        print(f"\n## Proxy mode ({a.backend}; upstream answers after {a.upstream_latency_ms} ms; {machine()}; {d} s per run, medians of 3 alternating runs)\n")
        print("| audit durability | path | latency p50 (ms) | p99 (ms) | throughput at 64 conns (req/s) | p50 | p99 | errors |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        summary = []
        for durability in ("os", "fsync"):
            server = start_server(work, dict(dbenv, LATCHKEY_AUDIT_DURABILITY=durability))
            wrk("/", 2, "direct.lua", env, base=url)
            wrk("/", 2, "proxy.lua", env)
            lat = {"direct": [], "proxy": []}
            thr = {"direct": [], "proxy": []}
            for _ in range(3):
                lat["direct"].append(wrk("/", d, "direct.lua", env, base=url, conns=1, threads=1))
                lat["proxy"].append(wrk("/", d, "proxy.lua", env, conns=1, threads=1))
                thr["direct"].append(wrk("/", d, "direct.lua", env, base=url))
                thr["proxy"].append(wrk("/", d, "proxy.lua", env))
            problems = server_problems([server])
            stop_server(server)
            med = lambda runs, k: statistics.median(r[k] for r in runs)
            for path in ("direct", "proxy"):
                errors = sum(r["errors"] for r in lat[path] + thr[path])
                print(f"| {durability} | {path} | {med(lat[path], 'p50'):.3f} | {med(lat[path], 'p99'):.3f} | "
                      f"{med(thr[path], 'rps'):,.0f} | {med(thr[path], 'p50'):.2f} | {med(thr[path], 'p99'):.2f} | {errors} |")
            summary.append((durability, med(lat["proxy"], "p50") - med(lat["direct"], "p50"), med(lat["proxy"], "p99") - med(lat["direct"], "p99"),
                            med(thr["proxy"], "rps") / med(thr["direct"], "rps")))
            for line in problems:
                print(f"server: {line}")
        print("\n| audit durability | added p50 (ms) | added p99 (ms) | throughput proxy ÷ direct |")
        print("|---|---:|---:|---:|")
        for durability, p50, p99, ratio in summary:
            print(f"| {durability} | {p50:.3f} | {p99:.3f} | {ratio:.2f} |")
    finally:
        with contextlib.suppress(Exception):
            os.killpg(upstream.pid, signal.SIGTERM)
        if work:
            shutil.rmtree(work, ignore_errors=True)


def load(requests, rate, duration, conns=64):
    """An open-loop run (bench/vault.rs `load`): `rate` requests/s offered whatever the
    answers' pace, each request's latency counted from the moment it was due (so a stalled
    server is charged for the requests it delayed: no coordinated omission). `requests` is a
    list of (method, url, headers), used in turn."""
    with tempfile.NamedTemporaryFile("w", suffix=".req", delete=False) as f:
        for method, url, headers in requests:
            f.write("\t".join([method, url, *headers]) + "\n")
    try:
        out = subprocess.run([*bench_cmd("load", "--rate", str(rate), "--duration", str(duration),
                              "--conns", str(conns), "--requests", f.name)], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    return json.loads(out.strip().splitlines()[-1])


OPEN_LOOP_TARGETS = ("healthz", "api", "oauth", "first-use", "proxy")


def open_loop_scenarios(a):
    with scenario_db(a.backend) as dbenv:
        _open_loop_scenarios(a, dbenv)


def _open_loop_scenarios(a, dbenv):
    """At fixed offered rates, per audit durability mode: /healthz, API-key and OAuth
    releases of random owners (10,000 of each kind), first-use releases (an agent token the
    server has not verified yet on every request), and proxied calls (an API key injected,
    local upstream answering at once)."""
    import random
    rates = [int(r) for r in a.rates.split(",")]
    targets = [t for t in a.targets.split(",") if t]
    unknown = set(targets) - set(OPEN_LOOP_TARGETS)
    if unknown:
        sys.exit(f"unknown --targets {sorted(unknown)}; choose from {','.join(OPEN_LOOP_TARGETS)}")
    d = a.duration
    # First use needs a token per request, each used once per server (the verified-token cache
    # is per process, and every durability mode starts a new server).
    first_use = sum(rates) * d if "first-use" in targets else 1
    upstream, up_url = start_upstream(0) if "proxy" in targets else (None, None)
    work = None
    try:
        work, _ = seed(20_000, first_use, ["--upstream", up_url] if up_url else [], dbenv=dbenv)
        tokens = [t.strip() for t in open(f"{work}/tokens.txt")]
        auth = f"Authorization: Bearer {tokens[0]}"
        rnd = random.Random(7)
        owners = lambda: [rnd.randrange(10_000) for _ in range(20_000)]
        fixed = {
            "healthz": [("GET", BASE + "/healthz", [])],
            "api": [("GET", f"{BASE}/v1/connections/svc/token?tenant_id=t{i}", [auth]) for i in owners()],
            "oauth": [("GET", f"{BASE}/v1/connections/crm/token?user_id=u{i}", [auth]) for i in owners()],
            "proxy": [("GET", f"{BASE}/v1/proxy/api/calendars/primary/events?maxResults=10", [auth, f"X-Latchkey-Tenant: t{i}"]) for i in owners()],
        }
        label = {"healthz": "`/healthz`", "api": "API-key release", "oauth": "OAuth release", "first-use": "first-use release",
                 "proxy": "proxied call (upstream +0 ms)"}
        print(f"\n## Open loop ({a.backend}; {machine()}; bench/vault.rs load, 64 connections, {d} s per rate)\n")
        print("| audit durability | target | offered (req/s) | achieved (req/s) | p50 (ms) | p99 (ms) | p99.9 (ms) | errors |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for durability in ("os", "fsync"):
            server = start_server(work, dict(dbenv, LATCHKEY_AUDIT_DURABILITY=durability))
            wrk("/", 2, "release.lua", {"LK_TOKEN": tokens[0], "LK_KIND": "api", "LK_HALF": "10000"})  # warm-up
            next_token = 1
            for rate in rates:
                for target in targets:
                    if target == "first-use":
                        n = rate * d
                        reqs = [("GET", f"{BASE}/v1/connections/svc/token?tenant_id=t{rnd.randrange(10_000)}", [f"Authorization: Bearer {t}"])
                                for t in tokens[next_token:next_token + n]]
                        next_token += n
                    else:
                        reqs = fixed[target]
                    r = load(reqs, rate, d)
                    print(f"| {durability} | {label[target]} | {rate:,} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['p999']:.2f} | {r['errors']} |",
                          flush=True)
            for line in server_problems([server]):
                print(f"server: {line}")
            stop_server(server)
    finally:
        if upstream:
            with contextlib.suppress(Exception):
                os.killpg(upstream.pid, signal.SIGTERM)
        if work:
            shutil.rmtree(work, ignore_errors=True)


def release_scenarios(a):
    with scenario_db(a.backend) as dbenv:
        _release_scenarios(a, dbenv)


def _release_scenarios(a, dbenv):
    work, seed_s = seed(a.n, 200_000, dbenv=dbenv)
    half = a.n // 2
    token = open(f"{work}/tokens.txt").readline().strip()
    env_api = {"LK_TOKEN": token, "LK_KIND": "api", "LK_HALF": str(half)}
    env_oauth = {"LK_TOKEN": token, "LK_KIND": "oauth", "LK_HALF": str(half)}
    server = start_server(work, dbenv)
    wrk("/healthz", 2)  # warm-up
    wrk("/", 2, "release.lua", env_api)
    runs = {"a": [], "b": []}
    for _ in range(2):
        runs["a"].append(wrk("/healthz", a.duration))
        runs["b"].append(wrk("/", a.duration, "release.lua", env_api))
    c = wrk("/", a.duration, "release.lua", env_oauth)
    rss_b = rss_mib(server)
    d = wrk("/", a.duration, "first_use.lua", {"LK_TOKENS": f"{work}/tokens.txt", "LK_HALF": str(half)})
    ratio_b = statistics.median(b["rps"] / x["rps"] for b, x in zip(runs["b"], runs["a"]))
    ratio_c = c["rps"] / statistics.median(x["rps"] for x in runs["a"])
    rss = rss_mib(server)

    # keys rotate: alone at full speed (--throttle 0), then with the default throttle while (b)
    # runs. wrk's total over its window, minus the normal rate outside the rotation, gives the
    # release rate during the rotation itself.
    env_cli = cli_env(work, dbenv)
    t = time.time()
    subprocess.run([BIN, "keys", "rotate", "--throttle", "0"], env=env_cli, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rotate_alone = time.time() - t
    window = max(4, int(rotate_alone * 5) + 3)
    load = subprocess.Popen(["wrk", "-t2", "-c64", f"-d{window}s", "-s", f"{ROOT}/bench/wrk/release.lua", BASE + "/"],
                            env=dict(os.environ, **env_api), stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    t = time.time()
    subprocess.run([BIN, "keys", "rotate"], env=env_cli, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    rotate_loaded = time.time() - t
    out = load.communicate()[0]
    m = re.search(r"(\d+) requests in ([\d.]+)s", out)
    normal = statistics.median(x["rps"] for x in runs["b"])
    during = (int(m.group(1)) - normal * (float(m.group(2)) - rotate_loaded)) / rotate_loaded
    stop_server(server)

    print(f"\n### latchkey load benchmark — {a.n:,} credentials, {a.backend}, wrk -t2 -c64, {a.duration} s runs, {time.strftime('%Y-%m-%d')}\n")
    print("| scenario | req/s | p50 ms | p99 ms | errors |\n|---|---:|---:|---:|---:|")
    for i in range(2):
        print(f"| (a) /healthz, run {i + 1} | {fmt(runs['a'][i])} |")
        print(f"| (b) API-key release, run {i + 1} | {fmt(runs['b'][i])} |")
    print(f"| (c) OAuth release | {fmt(c)} |")
    print(f"| (d) first-use release (new token each request) | {fmt(d)} |")
    print(f"\n| measure | value | target |\n|---|---:|---|")
    print(f"| (b)/(a), median | {ratio_b:.2f} | ≥ 0.5 |")
    print(f"| (c)/(a) | {ratio_c:.2f} | ≥ 0.5 |")
    print(f"| `keys rotate --throttle 0`, {a.n:,} credentials, idle | {rotate_alone:.2f} s | |")
    print(f"| `keys rotate` (default throttle), {a.n:,} credentials, under (b) load | {rotate_loaded:.2f} s | |")
    print(f"| (b) throughput during that rotation / normal | {during / normal:.2f} | ≥ 0.8 |")
    print(f"| server RSS after (a)–(c) | {rss_b:.1f} MiB | < 64 MiB at 1M |")
    print(f"| server RSS after (d) (verified-token cache filled: 100k entries max) | {rss:.1f} MiB | |")
    print(f"| seeding {a.n:,} credentials through the library | {seed_s:.1f} s | |")
    shutil.rmtree(work, ignore_errors=True)


def flood_scenarios(a):
    """Admin latency alone, then while wrk floods /oauth2/token with a wrong client secret:
    from one address (the per-address limit answers 429 at once) and from a random
    forwarded address per request (the limit never applies: every attempt is verified)."""
    with scenario_db(a.backend) as dbenv:
        _flood_scenarios(a, dbenv)


def _flood_scenarios(a, dbenv):
    import base64
    work, _ = seed(1_000, 1, dbenv=dbenv)
    admin = open(f"{work}/admin.txt").read().strip()
    bad = "Basic " + base64.b64encode(b"bench:lks_not-the-secret").decode()
    server = start_server(work, {"LATCHKEY_TRUSTED_PROXIES": "127.0.0.1", **dbenv})
    admin_env = {"LK_ADMIN": admin}
    wrk("/", 2, "admin.lua", admin_env, conns=4, threads=1)  # warm-up
    rows = [("admin reads alone", wrk("/", a.duration, "admin.lua", admin_env, conns=4, threads=1), None)]
    for label, spread in (("one address", "0"), ("a new forwarded address per request", "1")):
        flood = subprocess.Popen(["wrk", "-t1", "-c32", f"-d{a.duration + 2}s", "-s", f"{ROOT}/bench/wrk/flood.lua", BASE + "/oauth2/token"],
                                 env=dict(os.environ, LK_AUTH=bad, LK_SPREAD=spread), stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        r = wrk("/", a.duration, "admin.lua", admin_env, conns=4, threads=1)
        out = flood.communicate()[0]
        flood_rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        rows.append((f"admin reads during a bad-credential flood from {label}", r, flood_rps))
    db = Db(work, dbenv)
    audit_rows = db.row("SELECT count(*) FROM audit WHERE action = 'token.issue'")[0]
    db.close()
    stop_server(server)
    print(f"\n| admin p99 under a bad-credential flood (wrk -c4 admin reads, wrk -c32 flood) | admin req/s | admin p50 ms | admin p99 ms | flood req/s | target |\n|---|---:|---:|---:|---:|---|")
    for label, r, f in rows:
        print(f"| {label} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {f'{f:,.0f}' if f else '–'} | p99 < 20 ms |")
    print(f"\nAudit records of failed token requests after both floods: {audit_rows} (aggregated per client per minute).")
    shutil.rmtree(work, ignore_errors=True)


def refresh_scenarios(a):
    print(f"\n| refresh scenario | provider direct req/s (wrk -c{PER_PROVIDER}) | latchkey refreshes/s | ratio | target |\n|---|---:|---:|---:|---|")
    for latency, n in ((0, 30_000), (20, 8_000)):
        r = refresh_scenario(n, latency, a.duration, a.backend)
        print(f"| {n:,} due at once, provider +{latency} ms | {r['direct']:,.0f} | {r['rate']:,.0f} ({r['done']:,} done, {r['failed']} failed) "
              f"| {r['rate'] / r['direct']:.2f} | ≥ 0.9 |")


def full(a):
    print("\n| credentials | RSS after (b) load | `keys rotate --throttle 0` idle | `keys rotate` (default throttle) idle |\n|---:|---:|---:|---:|")
    for n in (10_000, 100_000, 1_000_000):
        with scenario_db(a.backend) as dbenv:
            w, _ = seed(n, 1, dbenv=dbenv)
            tok = open(f"{w}/tokens.txt").readline().strip()
            s = start_server(w, dbenv)
            wrk("/", a.duration, "release.lua", {"LK_TOKEN": tok, "LK_KIND": "api", "LK_HALF": str(n // 2)})
            r = rss_mib(s)
            stop_server(s)
            times = [rotate(w, dbenv, throttle) for throttle in ("0", "3")]
            print(f"| {n:,} | {r:.1f} MiB | {times[0]:.2f} s | {times[1]:.2f} s |")
            shutil.rmtree(w, ignore_errors=True)


def replicas(a):
    """--replicas-only: the same run and machine for SQLite, PostgreSQL with one replica and
    with two replicas sharing one database (releases); refreshes shared by two replicas;
    `keys rotate` of --rotate-n credentials on PostgreSQL (next to SQLite)."""
    half = a.n // 2
    parts = set(a.parts.split(","))
    rel, problems = [], []
    configurations = (("SQLite, 1 server", "sqlite", 1), ("PostgreSQL, 1 replica", "postgres", 1), ("PostgreSQL, 2 replicas", "postgres", 2))
    for label, backend, k in configurations if "releases" in parts else ():
        ports = [PORT, PORT2][:k]
        with scenario_db(backend) as dbenv:
            work, seed_s = seed(a.n, 1, dbenv=dbenv)
            try:
                token = open(f"{work}/tokens.txt").readline().strip()
                env_api = {"LK_TOKEN": token, "LK_KIND": "api", "LK_HALF": str(half)}
                servers = start_servers(work, ports, dbenv)
                wrk_parallel(ports, "/healthz", 2)  # warm-up
                wrk_parallel(ports, "/", 2, "release.lua", env_api)
                h = wrk_parallel(ports, "/healthz", a.duration)
                r = wrk_parallel(ports, "/", a.duration, "release.lua", env_api)
                problems += [f"{label}: {x}" for x in server_problems(servers)]
                for s in servers:
                    stop_server(s)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        rel.append((label, h, r, seed_s))
        print(f"{label}: releases {sum(x['rps'] for x in r):,.0f} req/s", file=sys.stderr)

    ref = []
    for latency, n in ((0, a.refresh_n or 30_000), (20, a.refresh_n or 8_000)) if "refresh" in parts else ():
        r = refresh_scenario(n, latency, a.duration, "postgres", 2)
        problems += [f"refresh +{latency} ms: {x}" for x in r["problems"]]
        ref.append((latency, n, r))
        print(f"refresh +{latency} ms: {r['rate']:,.0f}/s", file=sys.stderr)

    rot = []
    for label, backend in (("SQLite", "sqlite"), ("PostgreSQL", "postgres")) if "rotate" in parts else ():
        with scenario_db(backend) as dbenv:
            work, seed_s = seed(a.rotate_n, 1, dbenv=dbenv)  # as --full: half API-key, half OAuth credentials
            try:
                rot.append((label, seed_s, rotate(work, dbenv, "0"), rotate(work, dbenv)))
            finally:
                shutil.rmtree(work, ignore_errors=True)
        print(f"rotate {label}: {rot[-1][2]:.2f} s", file=sys.stderr)

    def total(rs, key="rps"):
        return sum(x[key] for x in rs)

    def each(rs, key, f="{:.2f}"):
        return " / ".join(f.format(x[key]) for x in rs)

    print(f"\n### latchkey on SQLite and PostgreSQL replicas — {a.n:,} credentials, {a.duration} s runs, {time.strftime('%Y-%m-%d')}\n")
    print(f"Machine: {machine()}; PostgreSQL on the same machine (127.0.0.1); wrk on the same cores, 64 connections and 2 threads "
          f"in all (two replicas: one wrk -t1 -c32 per replica at the same time).\n")
    print("| configuration | /healthz req/s | API-key release req/s | release p50 ms | release p99 ms | release ÷ /healthz | non-2xx | seeding s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, h, r, seed_s in rel:
        sock = "; ".join(x["socket"] for x in r + h if x["socket"])
        per = " (sum)" if len(r) > 1 else ""
        print(f"| {label} | {total(h):,.0f}{per} | {total(r):,.0f}{per} | {each(r, 'p50')} | {each(r, 'p99')} | {total(r) / total(h):.2f} "
              f"| {total(r, 'non2xx') + total(h, 'non2xx')}{f' (socket errors: {sock})' if sock else ''} | {seed_s:.1f} |")
    if rel:
        sq, pg1, pg2 = (total(r) for _, _, r, _ in rel)
        print(f"\n| measure | value | target |\n|---|---:|---|")
        print(f"| PostgreSQL 1 replica ÷ SQLite, release req/s | {pg1 / sq:.2f} | ≥ 0.5 |")
        print(f"| PostgreSQL 2 replicas ÷ 1 replica, release req/s | {pg2 / pg1:.2f} | |")
    print(f"\n| refresh, 2 replicas on one PostgreSQL database | provider direct req/s (wrk -c{PER_PROVIDER * 2}) | latchkey refreshes/s | ratio "
          f"| refreshes per replica | failed | stored twice | presented twice to the provider |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for latency, n, r in ref:
        shares = " / ".join("?" if x is None else f"{x:,}" for x in r["shares"])
        twice = "n/a" if r["presented_twice"] is None else r["presented_twice"]
        print(f"| {n:,} due at once, provider +{latency} ms | {r['direct']:,.0f} | {r['rate']:,.0f} ({r['done']:,} done) | {r['rate'] / r['direct']:.2f} "
              f"| {shares} | {r['failed']} | {r['stored_twice']} | {twice} |")
    print(f"\n| `keys rotate`, {a.rotate_n:,} credentials (half API-key, half OAuth), idle | seeding s | `--throttle 0` | default throttle |\n|---|---:|---:|---:|")
    for label, seed_s, fast, default in rot:
        print(f"| {label} | {seed_s:.1f} | {fast:.2f} s | {default:.2f} s |")
    print("\nServer log lines (warn and above) and exits: " + ("none." if not problems else ""))
    for x in problems:
        print(f"- {x}")


if __name__ == "__main__":
    main()
