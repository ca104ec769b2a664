"""N idle stdio MCP servers for the bench's server-health section: this process starts N
children (each a minimal server that answers `initialize` and nothing else), makes the
initialize handshake with each over its pipes, prints `ready`, and holds them until its
standard input closes or it is signalled. Python's standard library only.

    python3 stdio_servers.py N
"""
import json
import signal
import subprocess
import sys

SERVER = r"""
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if "id" in msg:
        reply = {"jsonrpc": "2.0", "id": msg["id"], "result": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "serverInfo": {"name": "bench-server", "version": "1"}}}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
"""


def main():
    n = int(sys.argv[1])
    children = [
        subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    for i, c in enumerate(children):
        init = {"jsonrpc": "2.0", "id": i, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "bench-holder", "version": "1"}}}
        c.stdin.write(json.dumps(init) + "\n")
        c.stdin.flush()
        json.loads(c.stdout.readline())
        c.stdin.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\n")
        c.stdin.flush()
    print("ready", flush=True)
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: None)
    sys.stdin.read()
    for c in children:
        c.stdin.close()
    for c in children:
        c.wait()


if __name__ == "__main__":
    main()
