"""A content-bearing MCP workload for the bench's security-scanning section, over stdio.

This process is the client: it starts SESSIONS servers one after the other (this script with
`--serve`), and in each session makes the initialize handshake, lists the tools (six tools
with descriptions and argument descriptions as real servers write them) and calls them CALLS
times. Every result carries 1 to 4 KiB of prose, as plain text or as JSON text (records with
a title and a summary), the way document, ticket and search tools answer. One result in
PLANT_EVERY carries one thing the content rules look for: an email address or a card number
that passes the Luhn check, in turn, each one different. At the end it prints one JSON line:
the calls made and the matches planted. Python's standard library only; the text is the same
on every run (a fixed seed).

    python3 content_calls.py SESSIONS CALLS
"""
import json
import random
import subprocess
import sys

PLANT_EVERY = 25

TOOLS = [
    {
        "name": "search_documents",
        "description": (
            "Search the team's document store for pages matching a query. Returns up to "
            "`limit` matches, best first, each with its title, path and a short excerpt. The "
            "store holds design notes, runbooks and meeting minutes."
        ),
        "inputSchema": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "Words to look for; quotes for a phrase."},
                "limit": {"type": "integer", "description": "At most this many matches (default 5)."},
            },
            "required": ["query"],
        },
    },
    {
        "name": "read_document",
        "description": (
            "Read one document of the store by its path, as plain text. Long documents are "
            "cut at 4 KiB; pass `offset` to read on."
        ),
        "inputSchema": {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "The path search_documents returned."},
                "offset": {"type": "integer", "description": "Characters to skip (default 0)."},
            },
            "required": ["path"],
        },
    },
    {
        "name": "list_tickets",
        "description": (
            "List the support tickets of a queue, newest first, as JSON records with the "
            "ticket's id, title, status and a summary of its last update."
        ),
        "inputSchema": {
            "type": "object",
            "properties": {
                "queue": {"type": "string", "description": "The queue's name, such as billing."},
                "status": {"type": "string", "enum": ["open", "pending", "closed"]},
            },
            "required": ["queue"],
        },
    },
    {
        "name": "get_ticket",
        "description": "One support ticket with its whole conversation, oldest message first.",
        "inputSchema": {
            "type": "object",
            "properties": {"id": {"type": "string", "description": "The ticket's id."}},
            "required": ["id"],
        },
    },
    {
        "name": "summarize_changes",
        "description": (
            "Describe what changed in a repository between two revisions: the commits' "
            "messages and the files they touched, grouped by component."
        ),
        "inputSchema": {
            "type": "object",
            "properties": {
                "repository": {"type": "string"},
                "from": {"type": "string", "description": "The older revision."},
                "to": {"type": "string", "description": "The newer revision (default HEAD)."},
            },
            "required": ["repository", "from"],
        },
    },
    {
        "name": "weather_forecast",
        "description": "The forecast for a city for the next three days, in words.",
        "inputSchema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
]

WORDS = (
    "the a of and to in for on with by from as that this which when after before during "
    "team service request deployment release pipeline customer invoice shipment warehouse "
    "schedule report meeting review change update queue latency capacity budget quarter "
    "forecast region cluster database index cache replica backup restore migration rollout "
    "incident postmortem timeline owner decision risk mitigation follow-up status pending "
    "approved delayed resolved improved reduced increased measured expected observed noted "
    "several most some each every other new old first last next previous weekly monthly "
    "engineers operators analysts managers vendors partners carriers drivers planners "
    "north south east west central harbour valley station terminal depot route lane dock"
).split()


def sentence(rng):
    """One sentence of plausible prose (no digits, no @, no long runs)."""
    n = rng.randint(8, 20)
    words = [rng.choice(WORDS) for _ in range(n)]
    return " ".join(words).capitalize() + rng.choice([".", ".", ".", ";", ":"])


def paragraph(rng, size):
    """Prose of about `size` characters."""
    out, length = [], 0
    while length < size:
        s = sentence(rng)
        out.append(s)
        length += len(s) + 1
    return " ".join(out)


def luhn_card(rng):
    """A 16-digit Visa-like number that passes the Luhn check, grouped by four."""
    digits = [4] + [rng.randint(0, 9) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        # The check digit goes on the right: from it, every second digit doubles, and
        # these 15 digits' rightmost is the first to double.
        if i % 2 == 0:
            d *= 2
            d = d - 9 if d > 9 else d
        total += d
    digits.append((10 - total % 10) % 10)
    s = "".join(map(str, digits))
    return " ".join(s[i:i + 4] for i in range(0, 16, 4))


def plant(rng, n):
    """The n-th planted match, email and card number in turn: (rule, sentence)."""
    if n % 2 == 0:
        who = rng.choice(["dana.whitfield", "m.okafor", "lena.brandt", "r.castillo"])
        return "email", f"For billing questions write to {who}{n}@harbourline-freight.co.uk today."
    return "card-number", f"The customer paid with card {luhn_card(rng)} on the first attempt."


def result_text(rng, call, planted):
    """A tool result's text: prose, or JSON records of prose; with `planted` inside."""
    size = rng.randint(1024, 4096)
    if call % 3 == 2:
        records, length = [], 0
        while length < size:
            r = {"id": f"T-{rng.randint(1000, 9999)}", "title": sentence(rng),
                 "status": rng.choice(["open", "pending", "closed"]),
                 "summary": paragraph(rng, rng.randint(200, 600))}
            records.append(r)
            length += len(json.dumps(r))
        if planted:
            records[-1]["summary"] += " " + planted
        return json.dumps(records)
    text = paragraph(rng, size)
    return text + " " + planted if planted else text


def serve():
    """The server: answers initialize, tools/list and tools/call on stdin/stdout."""
    rng = random.Random(int(sys.argv[2]))
    plant_rng = random.Random(int(sys.argv[2]) + 1)
    calls, planted = 0, 0
    for line in sys.stdin:
        msg = json.loads(line)
        if "id" not in msg:
            continue
        method = msg["method"]
        if method == "initialize":
            result = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                      "serverInfo": {"name": "bench-docs", "version": "1"}}
        elif method == "tools/list":
            result = {"tools": TOOLS}
        else:
            extra = ""
            if calls % PLANT_EVERY == PLANT_EVERY - 1:
                _, extra = plant(plant_rng, int(sys.argv[3]) + planted)
                planted += 1
            text = result_text(rng, calls, extra)
            calls += 1
            result = {"content": [{"type": "text", "text": text}], "isError": False}
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}) + "\n")
        sys.stdout.flush()


ARGUMENTS = [
    ("search_documents", {"query": "freight invoice reconciliation", "limit": 5}),
    ("read_document", {"path": "runbooks/warehouse-restore.md"}),
    ("list_tickets", {"queue": "billing", "status": "open"}),
    ("get_ticket", {"id": "T-4821"}),
    ("summarize_changes", {"repository": "routing-service", "from": "v2.3.0"}),
    ("weather_forecast", {"city": "Rotterdam"}),
]


class Session:
    """One server process and the requests made to it."""

    def __init__(self, seed, first_plant):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(seed), str(first_plant)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.next_id = 0

    def request(self, method, params):
        self.next_id += 1
        msg = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def notify(self, method):
        self.proc.stdin.write(json.dumps({"jsonrpc": "2.0", "method": method}) + "\n")
        self.proc.stdin.flush()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def main():
    if sys.argv[1] == "--serve":
        serve()
        return
    sessions, calls = int(sys.argv[1]), int(sys.argv[2])
    planted_per_session = calls // PLANT_EVERY
    rng = random.Random(7)
    for s in range(sessions):
        session = Session(100 + s, s * planted_per_session)
        session.request("initialize", {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "bench-content", "version": "1"}})
        session.notify("notifications/initialized")
        session.request("tools/list", {})
        for _ in range(calls):
            name, arguments = rng.choice(ARGUMENTS)
            session.request("tools/call", {"name": name, "arguments": arguments})
        session.close()
    planted = sessions * planted_per_session
    # Plant numbers run on from session to session: even ones are email addresses.
    print(json.dumps({
        "calls": sessions * calls,
        "email": (planted + 1) // 2,
        "card-number": planted // 2,
    }))


if __name__ == "__main__":
    main()
