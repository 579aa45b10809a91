#!/usr/bin/env python3
"""make lab / make lab-quick: syncnode over emulated links (docs/lab.md), real processes on
127.0.0.1. Sections: wan_sync, wan_sync_hostile, a network of N nodes (churn while they sync,
gossip, join), memory and load. Prints a table and writes OUT/results.json.

Usage: scripts/lab.py --bin target/release/syncnode --out target/lab [--quick] [--keep DIR]
       [--sections wan,network] [--sync-args "--batch-size 1024"] [--wan-blocks N] [--net-nodes N]
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

FULL = dict(wan_blocks=200_000, seeders=8, net_nodes=50, net_history=20_000, gossip_slots=30,
            churn=10, bootnodes=3, max_peers=12)
QUICK = dict(wan_blocks=20_000, seeders=8, net_nodes=12, net_history=3_000, gossip_slots=10,
             churn=3, bootnodes=3, max_peers=8)
DELAY = "50ms"
BANDWIDTH = "20mbit"
BANDWIDTH_BYTES = 20e6 / 8
SLOT_MS = 1000
PAYLOAD = 1024


def log(msg):
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(http, path, timeout=2.0):
    with urllib.request.urlopen(f"http://{http}{path}", timeout=timeout) as r:
        return json.load(r)


def status(http):
    try:
        return get_json(http, "/status")
    except Exception:
        return None


class Node:
    """One `syncnode run` process; restartable with the same store, ports and flags."""

    def __init__(self, lab, name, extra):
        self.lab, self.name, self.extra = lab, name, list(extra)
        self.dir = os.path.join(lab.root, name)
        self.http = f"127.0.0.1:{free_port()}"
        self.addr = f"/ip4/127.0.0.1/tcp/{free_port()}"
        self.proc = None
        self.peak_rss_kib = 0

    def start(self):
        logf = open(os.path.join(self.lab.root, f"{self.name}.log"), "ab")
        cmd = [self.lab.bin, "--log-level", "warn", "run", "--chain", self.lab.spec, "--data-dir",
               self.dir, "--listen", self.addr, "--http", self.http] + self.extra
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=logf)
        logf.close()
        self.started = time.monotonic()
        deadline = time.monotonic() + 60
        while status(self.http) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start; see {self.lab.root}/{self.name}.log")
            time.sleep(0.1)
        return self

    def sample_rss(self):
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.peak_rss_kib = max(self.peak_rss_kib, int(line.split()[1]))
        except (OSError, AttributeError):
            pass

    def stop(self, sig=signal.SIGTERM):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.sample_rss()
        self.proc.send_signal(signal.SIGCONT)
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def head(self):
        s = status(self.http)
        return s["head_height"] if s else None

    def head_now(self, timeout=60):
        """The node's head, asked again while a loaded machine keeps it from answering in time."""
        deadline = time.monotonic() + timeout
        while True:
            h = self.head()
            if h is not None:
                return h
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} does not answer; see its log")
            time.sleep(0.5)


class Lab:
    def __init__(self, bin_path, root):
        self.bin, self.root = bin_path, root
        self.nodes = []
        now_ms = int(time.time() * 1000)
        self.spec = os.path.join(root, "spec.json")
        # Generated history ends before now; the producer continues from the current slot.
        genesis = (now_ms // 1000 - 400_000) * 1000
        spec = subprocess.run([bin_path, "chain", "spec", "--name", "lab", "--authorities", "1",
                               "--slot-ms", str(SLOT_MS), "--genesis-timestamp-ms", str(genesis)],
                              check=True, capture_output=True, text=True).stdout
        with open(self.spec, "w") as f:
            f.write(spec)

    def node(self, name, extra):
        n = Node(self, name, extra)
        self.nodes.append(n)
        return n

    def generate(self, name, blocks):
        d = os.path.join(self.root, name)
        subprocess.run([self.bin, "--log-level", "warn", "chain", "generate", "--chain", self.spec,
                        "--data-dir", d, "--blocks", str(blocks), "--payload-bytes", str(PAYLOAD)],
                       check=True, stdout=subprocess.DEVNULL)
        return d

    def stop_all(self):
        for n in self.nodes:
            n.stop()


def link_flags(bandwidth=True):
    return ["--link-delay", DELAY] + (["--link-bandwidth", BANDWIDTH] if bandwidth else [])


def inbound_bytes(http):
    """Bytes the node received over libp2p (all protocols), from its /metrics."""
    with urllib.request.urlopen(f"http://{http}/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("libp2p_bandwidth_bytes_total") and 'direction="Inbound"' in line:
            total += float(line.split()[-1])
    return total


def wait_head(node, height, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = node.head()
        if h is not None and h >= height:
            return time.monotonic()
        if node.proc.poll() is not None:
            raise RuntimeError(f"{node.name} exited; see its log")
        time.sleep(0.2)
    raise RuntimeError(f"{node.name} did not reach {height} in {timeout} s (at {node.head()})")


def wan_sync(lab, cfg, seed_dir, hostile, tag, sync_args):
    """A fresh node at 50 ms syncs cfg.wan_blocks from the seeders; returns blocks/s, bytes/block."""
    seeders = []
    for i in range(cfg["seeders"]):
        d = os.path.join(lab.root, f"{tag}-seed{i}")
        if not os.path.exists(d):
            shutil.copytree(seed_dir, d)
        extra = link_flags()
        if hostile and i == 1:
            extra += ["--serve-blocks-per-sec", "20"]  # trickling
        s = lab.node(f"{tag}-seed{i}", extra).start()
        seeders.append(s)
    if hostile:
        seeders[0].proc.send_signal(signal.SIGSTOP)  # silent: connections open, nothing answered
    boot = sum((["--bootnode", s.addr] for s in seeders), [])
    fresh = lab.node(f"{tag}-fresh", link_flags(bandwidth=False) + boot + sync_args)
    t0 = time.monotonic()
    fresh.start()
    t1 = wait_head(fresh, cfg["wan_blocks"], 1800)
    elapsed = t1 - t0
    per_block = inbound_bytes(fresh.http) / cfg["wan_blocks"]
    fresh.sample_rss()
    for n in seeders + [fresh]:
        n.sample_rss()
        n.stop(signal.SIGKILL)
        shutil.rmtree(n.dir, ignore_errors=True)
    return dict(seconds=elapsed, blocks_per_sec=cfg["wan_blocks"] / elapsed, bytes_per_block=per_block)


class StreamWatcher(threading.Thread):
    """Reads a node's /blocks/stream and records when each height arrived (ms since the epoch)."""

    def __init__(self, node, start):
        super().__init__(daemon=True)
        self.node, self.start_height, self.arrived = node, start, {}
        self.stop_at = None

    def run(self):
        try:
            r = urllib.request.urlopen(f"http://{self.node.http}/blocks/stream?from={self.start_height}",
                                       timeout=30)
            for raw in r:
                line = raw.decode().strip()
                if line.startswith("data:"):
                    now = time.time() * 1000
                    b = json.loads(line[5:])
                    self.arrived.setdefault(b["height"], (now, b["timestamp_ms"]))
                if self.stop_at is not None and time.monotonic() > self.stop_at:
                    return
        except Exception:
            return


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else None


def network(lab, cfg, results):
    """The N-node network: churn while the nodes sync history, then gossip, join, one head."""
    lab.generate("producer", cfg["net_history"])
    # The producer keeps max_peers like every node: with room for all, every node would sync from
    # its one uplink at once.
    producer = lab.node("producer", ["--produce", "--dev-key", "0", "--payload-bytes", str(PAYLOAD),
                                     "--max-peers", str(cfg["max_peers"])] + link_flags()).start()
    members = []
    t0 = time.monotonic()
    for i in range(cfg["net_nodes"] - 1):
        known = [producer] + random.sample(members, min(len(members), cfg["bootnodes"] - 1))
        boot = sum((["--bootnode", k.addr] for k in known), [])
        members.append(lab.node(f"n{i:02}", link_flags() + boot + ["--max-peers", str(cfg["max_peers"])]).start())
    log(f"{len(members) + 1} nodes started in {time.monotonic() - t0:.0f} s")
    restarted = churn(cfg, members, producer)
    target = producer.head_now()
    deadline = time.monotonic() + 1800
    for m in members:
        wait_head(m, target, max(1, deadline - time.monotonic()))
    log(f"all nodes past {target} {time.monotonic() - t0:.0f} s after the first start")
    results["churn"] = dict(restarted=restarted)
    results["gossip"] = gossip(cfg, [producer] + members)
    results["join"] = join(lab, cfg, producer, members)
    producer.sample_rss()
    producer.stop()
    head = None
    for _ in range(120):
        heads = {m.head() for m in members}
        if len(heads) == 1 and None not in heads:
            head = heads.pop()
            break
        time.sleep(1)
    for m in members:
        m.sample_rss()
        m.stop()
    checks = [subprocess.run([lab.bin, "--log-level", "warn", "db", "check", "--data-dir", m.dir],
                             capture_output=True).returncode == 0 for m in members + [producer]]
    results["churn"].update(one_head=head is not None, head=head, db_check_clean=all(checks))


def churn(cfg, members, producer):
    """Restarts cfg.churn random nodes (SIGTERM, then the same command) while nodes sync."""
    victims = random.sample(members, min(cfg["churn"], len(members)))
    for v in victims:
        time.sleep(random.uniform(0.5, 3.0))
        v.sample_rss()
        v.stop(random.choice([signal.SIGTERM, signal.SIGKILL]))
        time.sleep(random.uniform(0.2, 1.5))
        v.start()
    log(f"restarted {len(victims)} nodes while the network synced")
    return len(victims)


def cpu_seconds(nodes):
    """CPU time (user + system) the nodes' processes have used so far."""
    total = 0
    for n in nodes:
        try:
            with open(f"/proc/{n.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, AttributeError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def gossip(cfg, nodes):
    head = max(n.head() or 0 for n in nodes)
    watchers = [StreamWatcher(n, head + 1) for n in nodes]
    for w in watchers:
        w.start()
    cpu0, t0 = cpu_seconds(nodes), time.monotonic()
    time.sleep(cfg["gossip_slots"] * SLOT_MS / 1000 + 3)
    # Cores the nodes kept busy while blocks were gossiped, against the machine's.
    nodes_cores = (cpu_seconds(nodes) - cpu0) / (time.monotonic() - t0)
    heights = range(head + 1, head + 1 + cfg["gossip_slots"])
    lat, complete = [], 0
    for w in watchers:
        got = [w.arrived.get(h) for h in heights]
        complete += all(g is not None for g in got)
        lat += [a - ts for g in got if g for (a, ts) in [g]]
    for w in watchers:
        w.stop_at = time.monotonic()
    with open(os.path.join(nodes[0].lab.root, "gossip_arrivals.json"), "w") as f:
        json.dump({w.node.name: {h: (w.arrived[h][0] - w.arrived[h][1]) if h in w.arrived else None
                                 for h in heights} for w in watchers}, f)
    return dict(blocks=len(heights), nodes=len(nodes),
                p50_ms=percentile(lat, 50), p95_ms=percentile(lat, 95), max_ms=max(lat) if lat else None,
                share_nodes_every_block=complete / len(nodes), nodes_cores=nodes_cores,
                machine_cores=os.cpu_count(), load=os.getloadavg()[0])


def join(lab, cfg, producer, members):
    target = producer.head_now()
    known = [producer] + random.sample(members, cfg["bootnodes"] - 1)
    boot = sum((["--bootnode", k.addr] for k in known), [])
    fresh = lab.node("joiner", link_flags() + boot + ["--max-peers", str(cfg["max_peers"])])
    t0 = time.monotonic()
    fresh.start()
    t1 = wait_head(fresh, target, 1800)
    peers = get_json(fresh.http, "/peers")
    fresh.sample_rss()
    fresh.stop()
    used = len([p for p in peers if p.get("connected")]) if isinstance(peers, list) else None
    return dict(blocks=target, seconds=t1 - t0, blocks_per_sec=target / (t1 - t0), peers_connected=used)


def wan(lab, cfg, results, sync_args):
    """wan_sync and wan_sync_hostile from the same seeders' history."""
    seed_dir = lab.generate("seed-history", cfg["wan_blocks"])
    honest = wan_sync(lab, cfg, seed_dir, False, "wan", sync_args)
    bound = cfg["seeders"] * BANDWIDTH_BYTES / honest["bytes_per_block"]
    results["wan_sync"] = honest["blocks_per_sec"]
    results["wan_sync_bound"] = bound
    results["wan_sync_ratio"] = honest["blocks_per_sec"] / bound
    results["wan_sync_detail"] = honest
    log(f"wan_sync {honest}")
    hostile = wan_sync(lab, cfg, seed_dir, True, "hostile", sync_args)
    results["wan_sync_hostile"] = hostile["blocks_per_sec"]
    results["wan_hostile_slowdown"] = hostile["seconds"] / honest["seconds"]
    log(f"wan_sync_hostile {hostile}")
    shutil.rmtree(seed_dir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--keep", help="directory for stores and logs (kept)")
    ap.add_argument("--sections", default="wan,network", help="comma-separated: wan, network")
    ap.add_argument("--wan-blocks", type=int, help="blocks of wan_sync (overrides the mode's)")
    ap.add_argument("--net-nodes", type=int, help="nodes of the network section (overrides the mode's)")
    ap.add_argument("--sync-args", default="", help="more `run` flags for the syncing node of wan_sync")
    a = ap.parse_args()
    cfg = dict(QUICK if a.quick else FULL)
    if a.wan_blocks:
        cfg["wan_blocks"] = a.wan_blocks
    if a.net_nodes:
        cfg["net_nodes"] = a.net_nodes
    root = a.keep or tempfile.mkdtemp(prefix="syncnode-lab.")
    os.makedirs(root, exist_ok=True)
    lab = Lab(os.path.abspath(a.bin), root)
    results = dict(mode="quick" if a.quick else "full", config=cfg, delay=DELAY, bandwidth=BANDWIDTH,
                   load_before=os.getloadavg()[0])
    ok = False
    try:
        sections = a.sections.split(",")
        if "wan" in sections:
            wan(lab, cfg, results, a.sync_args.split())
        if "network" in sections:
            network(lab, cfg, results)
            results["gossip_p95_ms"] = results["gossip"]["p95_ms"]
        ok = True
    finally:
        lab.stop_all()
        results["rss_mib_max"] = max(n.peak_rss_kib for n in lab.nodes) / 1024 if lab.nodes else None
        results["load_after"] = os.getloadavg()[0]
        results["ok"] = ok
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        table(results)
        if not a.keep and ok:
            shutil.rmtree(root, ignore_errors=True)
        elif not ok:
            log(f"stores and logs kept in {root}")


def table(r):
    g, j, c = r.get("gossip", {}), r.get("join", {}), r.get("churn", {})
    rows = [
        ("wan_sync (blocks/s)", r.get("wan_sync")),
        ("wan_sync_ratio", r.get("wan_sync_ratio")),
        ("wan_sync_hostile (blocks/s)", r.get("wan_sync_hostile")),
        ("wan_hostile_slowdown", r.get("wan_hostile_slowdown")),
        ("gossip p50 / p95 / max (ms)", f"{g.get('p50_ms')} / {g.get('p95_ms')} / {g.get('max_ms')}"),
        ("gossip share of nodes with every block", g.get("share_nodes_every_block")),
        ("gossip: cores the nodes used / the machine's, load",
         f"{g.get('nodes_cores')} / {g.get('machine_cores')}, {g.get('load')}"),
        ("join (blocks/s, peers)", f"{j.get('blocks_per_sec')}, {j.get('peers_connected')}"),
        ("churn (restarted, one head, db check)",
         f"{c.get('restarted')}, {c.get('one_head')}, {c.get('db_check_clean')}"),
        ("rss_mib_max", r.get("rss_mib_max")),
        ("load before / after", f"{r.get('load_before')} / {r.get('load_after')}"),
    ]
    print(f"| figure ({r['mode']}) | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |")


if __name__ == "__main__":
    main()
