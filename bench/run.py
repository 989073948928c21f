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
"""
import argparse, json, os, re, shutil, signal, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORT = 8399
BASE = f"http://127.0.0.1:{PORT}"
PROVIDER_PORT = 8398
# latchkey's concurrent token requests per provider host (MAX_PER_PROVIDER in src/oauth/mod.rs).
PER_PROVIDER = 8


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, cwd=ROOT, **kw)


def ensure_wrk():
    if shutil.which("wrk"):
        return
    if os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, stdout=subprocess.DEVNULL)
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")


def seed(n, tokens, extra=()):
    work = tempfile.mkdtemp(prefix="latchkey-bench-")
    t = time.time()
    sh(["cargo", "bench", "-q", "--bench", "vault", "--", "seed", "--dir", work, "--n", str(n), "--tokens", str(tokens), "--public-url", BASE,
        *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return work, time.time() - t


def start_provider(latency_ms):
    p = subprocess.Popen(["cargo", "bench", "-q", "--bench", "vault", "--", "provider", "--port", str(PROVIDER_PORT), "--latency-ms", str(latency_ms)],
                         cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    line = p.stdout.readline()
    if not line.startswith("LISTENING"):
        p.kill()
        sys.exit("the bench token endpoint did not start")
    return p, line.split()[1]


def refresh_scenario(n, latency_ms, duration):
    """refreshes/s of n credentials due at once, and the endpoint's direct req/s."""
    import sqlite3
    provider, url = start_provider(latency_ms)
    try:
        direct = wrk("/token", duration, "token.lua", base=f"http://127.0.0.1:{PROVIDER_PORT}", conns=PER_PROVIDER)["rps"]
        work, _ = seed(2, 1, ["--due", str(n), "--provider", url])
        time.sleep(1.1)  # seeded tokens expire after 1 s: all due now
        server = start_server(work)
        db = sqlite3.connect(f"file:{work}/data/latchkey.db?mode=ro", uri=True)
        deadline = time.time() + 600
        done, started = 0, None
        while time.time() < deadline:
            done = db.execute("SELECT count(*) FROM credentials WHERE connection_id = 'due' AND last_refresh_at IS NOT NULL").fetchone()[0]
            if done and started is None:
                started = (time.time(), done)  # rate counted from the first refreshes seen
            if done >= n or server.poll() is not None:
                break
            time.sleep(0.02)
        finished = time.time()
        if done < n:
            print(f"refresh scenario: only {done:,} of {n:,} refreshed", file=sys.stderr)
        failed = db.execute("SELECT count(*) FROM credentials WHERE connection_id = 'due' AND refresh_failures > 0").fetchone()[0]
        db.close()
        stop_server(server)
        shutil.rmtree(work, ignore_errors=True)
        rate = (done - started[1]) / (finished - started[0]) if started and finished > started[0] else 0.0
        return {"direct": direct, "rate": rate, "done": done, "failed": failed}
    finally:
        # cargo runs the endpoint as its child: stop the whole process group.
        os.killpg(provider.pid, signal.SIGTERM)
        provider.wait(timeout=10)


def start_server(work, extra_env=None):
    env = dict(os.environ, LATCHKEY_DATA_DIR=f"{work}/data", LATCHKEY_KEYS_DIR=f"{work}/keys", LATCHKEY_BIND=f"127.0.0.1:{PORT}",
               LATCHKEY_PUBLIC_URL=BASE, LATCHKEY_LOG="warn", **(extra_env or {}))
    p = subprocess.Popen([f"{ROOT}/target/release/latchkey", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            urllib.request.urlopen(f"{BASE}/healthz", timeout=1)
            return p
        except Exception:
            time.sleep(0.05)
    p.kill()
    sys.exit("server did not start")


def stop_server(p):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=20)


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


def wrk(path, duration, script=None, env=None, base=BASE, conns=64, threads=2):
    cmd = ["wrk", f"-t{min(threads, conns)}", f"-c{conns}", f"-d{duration}s", "--latency"]
    if script:
        cmd += ["-s", f"{ROOT}/bench/wrk/{script}"]
    out = subprocess.run(cmd + [base + path], capture_output=True, text=True, env=dict(os.environ, **(env or {}))).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = to_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    sock = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50": p50, "p99": p99, "total": total, "errors": errors + (1 if sock else 0)}


def fmt(r):
    return f"{r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['errors']}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000, help="credentials for the release scenarios")
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--full", action="store_true", help="also 1M credentials (rotation, RSS)")
    ap.add_argument("--refresh-only", action="store_true", help="only the refresh-throughput scenario")
    ap.add_argument("--release-only", action="store_true", help="only the release scenarios (before/after comparisons)")
    ap.add_argument("--flood-only", action="store_true", help="only admin latency under a bad-credential flood")
    ap.add_argument("--full-only", action="store_true", help="only the RSS and rotation sizes of --full")
    a = ap.parse_args()
    ensure_wrk()
    sh(["cargo", "build", "-q", "--release", "--bin", "latchkey"])
    sh(["cargo", "bench", "-q", "--bench", "vault", "--no-run"])
    if a.flood_only:
        flood_scenarios(a)
        return
    if a.full_only:
        full(a)
        return
    if not a.refresh_only:
        release_scenarios(a)
        if a.release_only:
            return
        flood_scenarios(a)
    refresh_scenarios(a)
    if a.full:
        full(a)


def release_scenarios(a):
    work, seed_s = seed(a.n, 200_000)
    half = a.n // 2
    token = open(f"{work}/tokens.txt").readline().strip()
    env_api = {"LK_TOKEN": token, "LK_KIND": "api", "LK_HALF": str(half)}
    env_oauth = {"LK_TOKEN": token, "LK_KIND": "oauth", "LK_HALF": str(half)}
    server = start_server(work)
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
    env_cli = dict(os.environ, LATCHKEY_DATA_DIR=f"{work}/data", LATCHKEY_KEYS_DIR=f"{work}/keys")
    t = time.time()
    subprocess.run([f"{ROOT}/target/release/latchkey", "keys", "rotate", "--throttle", "0"], env=env_cli, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rotate_alone = time.time() - t
    window = max(4, int(rotate_alone * 5) + 3)
    load = subprocess.Popen(["wrk", "-t2", "-c64", f"-d{window}s", "-s", f"{ROOT}/bench/wrk/release.lua", BASE + "/"],
                            env=dict(os.environ, **env_api), stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    t = time.time()
    subprocess.run([f"{ROOT}/target/release/latchkey", "keys", "rotate"], env=env_cli, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    rotate_loaded = time.time() - t
    out = load.communicate()[0]
    m = re.search(r"(\d+) requests in ([\d.]+)s", out)
    normal = statistics.median(x["rps"] for x in runs["b"])
    during = (int(m.group(1)) - normal * (float(m.group(2)) - rotate_loaded)) / rotate_loaded
    stop_server(server)

    print(f"\n### latchkey load benchmark — {a.n:,} credentials, wrk -t2 -c64, {a.duration} s runs, {time.strftime('%Y-%m-%d')}\n")
    print("| scenario | req/s | p50 ms | p99 ms | errors |\n|---|---:|---:|---:|---:|")
    for i in range(2):
        print(f"| (a) /healthz, run {i + 1} | {fmt(runs['a'][i])} |")
        print(f"| (b) API-key release, run {i + 1} | {fmt(runs['b'][i])} |")
    print(f"| (c) OAuth release | {fmt(c)} |")
    print(f"| (d) first-use release (new token each request) | {fmt(d)} |")
    print(f"\n| measure | value | target |\n|---|---:|---|")
    print(f"| (b)/(a), median | {ratio_b:.2f} | ≥ 0.6 |")
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
    import base64
    work, _ = seed(1_000, 1)
    admin = open(f"{work}/admin.txt").read().strip()
    bad = "Basic " + base64.b64encode(b"bench:lks_not-the-secret").decode()
    server = start_server(work, {"LATCHKEY_TRUSTED_PROXIES": "127.0.0.1"})
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
    audit_rows = subprocess.run(["sqlite3", f"{work}/data/latchkey.db", "SELECT count(*) FROM audit WHERE action = 'token.issue'"],
                                capture_output=True, text=True).stdout.strip() if shutil.which("sqlite3") else "n/a"
    stop_server(server)
    print(f"\n| admin p99 under a bad-credential flood (wrk -c4 admin reads, wrk -c32 flood) | admin req/s | admin p50 ms | admin p99 ms | flood req/s | target |\n|---|---:|---:|---:|---:|---|")
    for label, r, f in rows:
        print(f"| {label} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {f'{f:,.0f}' if f else '–'} | p99 < 20 ms |")
    print(f"\nAudit records of failed token requests after both floods: {audit_rows} (aggregated per client per minute).")
    shutil.rmtree(work, ignore_errors=True)


def refresh_scenarios(a):
    print(f"\n| refresh scenario | provider direct req/s (wrk -c{PER_PROVIDER}) | latchkey refreshes/s | ratio | target |\n|---|---:|---:|---:|---|")
    for latency, n in ((0, 30_000), (20, 8_000)):
        r = refresh_scenario(n, latency, a.duration)
        print(f"| {n:,} due at once, provider +{latency} ms | {r['direct']:,.0f} | {r['rate']:,.0f} ({r['done']:,} done, {r['failed']} failed) "
              f"| {r['rate'] / r['direct']:.2f} | ≥ 0.9 |")


def full(a):
    print("\n| credentials | RSS after (b) load | `keys rotate --throttle 0` idle | `keys rotate` (default throttle) idle |\n|---:|---:|---:|---:|")
    for n in (10_000, 100_000, 1_000_000):
        w, _ = seed(n, 1)
        tok = open(f"{w}/tokens.txt").readline().strip()
        s = start_server(w)
        wrk("/", a.duration, "release.lua", {"LK_TOKEN": tok, "LK_KIND": "api", "LK_HALF": str(n // 2)})
        r = rss_mib(s)
        stop_server(s)
        times = []
        for throttle in ("0", "3"):
            t = time.time()
            subprocess.run([f"{ROOT}/target/release/latchkey", "keys", "rotate", "--throttle", throttle],
                           env=dict(os.environ, LATCHKEY_DATA_DIR=f"{w}/data", LATCHKEY_KEYS_DIR=f"{w}/keys"), check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times.append(time.time() - t)
        print(f"| {n:,} | {r:.1f} MiB | {times[0]:.2f} s | {times[1]:.2f} s |")
        shutil.rmtree(w, ignore_errors=True)


if __name__ == "__main__":
    main()
