"""The TLS per-call bench's Python parts (`cargo xtask bench`, section 7): an MCP server on
OpenSSL, and two clients that time back-to-back `tools/call`s over one HTTP/1.1 keep-alive
connection, one on OpenSSL (Python's `ssl`), one driving `gnutls-cli` (GnuTLS) through its
standard input and output.

    python tls_loop.py server PORT CERT KEY
    python tls_loop.py openssl PORT CA WARMUP CALLS
    python tls_loop.py gnutls PORT CA WARMUP CALLS

The server answers JSON-RPC on POST /mcp (initialize, tools/call echo; notifications 202),
one thread a connection, blocking sockets: a request is one SSL_read, a response one
SSL_write. A client makes initialize, notifications/initialized, WARMUP calls, then CALLS
timed ones, and prints one JSON line: {"pid": the process doing TLS, "requests": every HTTP
request it made, "calls": CALLS, "wall_ns", "cpu_ns"} where cpu_ns is the CPU time (user and
system, every thread) of the TLS process over the timed calls: its own clock for the OpenSSL
client, /proc/PID/task/*/schedstat of gnutls-cli for the GnuTLS one.
"""

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time

PROTOCOL = "2025-06-18"


def result_of(msg):
    method = msg.get("method")
    if method == "initialize":
        return {"protocolVersion": PROTOCOL, "capabilities": {"tools": {}},
                "serverInfo": {"name": "tls-loop", "version": "1"}}
    if method == "tools/call":
        text = msg["params"]["arguments"].get("text", "")
        return {"content": [{"type": "text", "text": text}]}
    return {}


def read_message(recv, buf, start=b""):
    """One HTTP/1.1 message with a Content-Length body from `recv`: (head, body, rest), or
    None at the end of the stream. With `start`, what comes before it is skipped (gnutls-cli's
    own lines before the first response)."""
    while (at := buf.find(start)) < 0 or b"\r\n\r\n" not in buf[at:]:
        d = recv()
        if not d:
            return None
        buf += d
    head, _, rest = buf[at:].partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        d = recv()
        if not d:
            return None
        rest += d
    return head, rest[:length], rest[length:]


def serve_conn(ctx, raw):
    try:
        conn = ctx.wrap_socket(raw, server_side=True)
    except (ssl.SSLError, OSError):
        raw.close()
        return
    buf = b""
    recv = lambda: conn.recv(65536)
    try:
        while True:
            m = read_message(recv, buf)
            if m is None:
                break
            _, body, buf = m
            msg = json.loads(body)
            if "id" not in msg:
                conn.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
                continue
            out = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result_of(msg)}).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(out)).encode() + b"\r\n\r\n" + out)
    except (ssl.SSLError, OSError):
        pass
    finally:
        conn.close()


def server(port, cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", int(port)))
    ls.listen(64)
    while True:
        raw, _ = ls.accept()
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve_conn, args=(ctx, raw), daemon=True).start()


class Loop:
    """The client's side of the conversation over `send`/`recv` (bytes in, bytes out)."""

    def __init__(self, port, send, recv):
        self.port, self.send, self.recv = port, send, recv
        self.buf = b""
        self.next_id = 1
        self.requests = 0

    def post(self, msg):
        body = json.dumps(msg).encode()
        head = (f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
                f"MCP-Protocol-Version: {PROTOCOL}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        self.send(head + body)
        self.requests += 1
        m = read_message(self.recv, self.buf, b"HTTP/1.1 ")
        if m is None:
            raise SystemExit("the server closed the connection")
        head, body, self.buf = m
        if not head.startswith(b"HTTP/1.1 20"):
            raise SystemExit(f"HTTP error: {head[:40]!r}")
        return body

    def request(self, method, params):
        msg = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        self.next_id += 1
        return self.post(msg)

    def run(self, warmup, calls, cpu_now):
        self.request("initialize", {"protocolVersion": PROTOCOL, "capabilities": {},
                                    "clientInfo": {"name": "tls-loop", "version": "1"}})
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        for i in range(warmup):
            self.request("tools/call", {"name": "echo", "arguments": {"text": f"warm {i}"}})
        c0, t0 = cpu_now(), time.perf_counter_ns()
        for i in range(calls):
            self.request("tools/call", {"name": "echo", "arguments": {"text": f"hello {i}"}})
        t1, c1 = time.perf_counter_ns(), cpu_now()
        return {"requests": self.requests, "calls": calls, "wall_ns": t1 - t0, "cpu_ns": c1 - c0}


def openssl_client(port, ca, warmup, calls):
    ctx = ssl.create_default_context(cafile=ca)
    raw = socket.create_connection(("127.0.0.1", int(port)))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    loop = Loop(port, conn.sendall, lambda: conn.recv(65536))
    out = loop.run(int(warmup), int(calls), time.process_time_ns)
    conn.close()
    out["pid"] = os.getpid()
    return out


def task_cpu_ns(pid):
    """CPU time of every thread of `pid`, ns (the first field of each schedstat)."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def gnutls_client(port, ca, warmup, calls):
    proc = subprocess.Popen(
        ["gnutls-cli", "--x509cafile", ca, "-p", str(port), "127.0.0.1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
    out = proc.stdout
    line = b""
    while b"Handshake was completed" not in line:
        line = out.readline()
        if not line:
            raise SystemExit("gnutls-cli closed its output before the handshake")

    def send(b):
        proc.stdin.write(b)

    loop = Loop(port, send, lambda: os.read(out.fileno(), 65536))
    res = loop.run(int(warmup), int(calls), lambda: task_cpu_ns(proc.pid))
    proc.stdin.close()
    proc.wait(timeout=10)
    res["pid"] = proc.pid
    return res


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "server":
        server(*args)
        return
    run = {"openssl": openssl_client, "gnutls": gnutls_client}[mode]
    print(json.dumps(run(*args)))


if __name__ == "__main__":
    main()
