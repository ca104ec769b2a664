"""Fuzz seeds for the http2 and websocket targets, from real protocol stacks: python-hyper's
h2 (the HTTP/2 of httpx and hypercorn) and wsproto with permessage-deflate, both ends in
memory, every byte each end wrote kept. Each http2 seed's first byte (how the fuzz body cuts
and alternates the two directions, and its body limit) was picked so that requests arrive
before their responses. Its top three bits say how many frames of each direction the
connection joined mid-way leaves unseen: `midway-skip3-session-sse` and
`midway-skip7-session-sse` are `session-sse-202` with them set to 3 and 7.

    target/peers/h2ws/bin/python agent/fuzz/make_h2ws_seeds.py agent/fuzz/seeds \
      '{"initialize-json":6,"session-sse-202":11,"size-update-padding-priority":10,"continuation":10,"reset-trailers-goaway":10,"oversize":97}'
"""
import os, struct, sys
import h2.connection, h2.config, h2.events, h2.settings, h2.errors
from wsproto import WSConnection, ConnectionType
from wsproto.events import Request, AcceptConnection, TextMessage, BytesMessage, Ping, Pong, CloseConnection
from wsproto.extensions import PerMessageDeflate

OUT = sys.argv[1]
import json
A = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
A = {k: A.get(k, 255) for k in ['initialize-json','session-sse-202','size-update-padding-priority','continuation','reset-trailers-goaway','oversize']}

INIT = b'{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}'
INIT_OK = b'{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"s","version":"2"}}}'
INITIALIZED = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
CALL = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"},"_meta":{"progressToken":1}}}'
PROGRESS = b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}'
CALL_OK = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hello"}]}}'
LIST = b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}'
LIST_OK = b'{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"echo","inputSchema":{"type":"object"}}]}}'
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class H2Pair:
    def __init__(self, server_settings=None):
        self.c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.s = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.cw, self.sw = bytearray(), bytearray()
        self.events = []
        self.c.initiate_connection()
        self.s.initiate_connection()
        if server_settings:
            self.s.update_settings(server_settings)
        self.pump()

    def pump(self):
        while True:
            a = self.c.data_to_send()
            b = self.s.data_to_send()
            if not a and not b:
                return
            if a:
                self.cw += a
                self.events += self.s.receive_data(a)
            if b:
                self.sw += b
                self.events += self.c.receive_data(b)

    def post(self, body, session=None, extra=(), end=True):
        sid = self.c.get_next_available_stream_id()
        h = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"127.0.0.1:8000"), (b":path", b"/mcp"),
             (b"content-type", b"application/json"), (b"accept", b"application/json, text/event-stream"),
             (b"content-length", str(len(body)).encode())]
        if session:
            h += [(b"mcp-session-id", session), (b"mcp-protocol-version", b"2025-06-18")]
        h += list(extra)
        self.c.send_headers(sid, h)
        if end:
            self.c.send_data(sid, body, end_stream=True)
        return sid

    def respond(self, sid, status, ctype=None, session=b"S1", end=False):
        h = [(b":status", status), (b"mcp-session-id", session)]
        if ctype:
            h.append((b"content-type", ctype))
        self.s.send_headers(sid, h, end_stream=end)

    def seed(self, a):
        c = bytes(self.cw)
        assert c.startswith(PREFACE)
        c = c[len(PREFACE):]
        return bytes([a]) + struct.pack("<H", len(c)) + c + bytes(self.sw)


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
    print(target, name, len(data))


def h2_seeds():
    # initialize answered in JSON.
    p = H2Pair()
    sid = p.post(INIT)
    p.pump()
    p.respond(sid, b"200", b"application/json")
    p.s.send_data(sid, INIT_OK, end_stream=True)
    p.pump()
    write("http2", "initialize-json", p.seed(A["initialize-json"]))

    # The session: initialized answered 202 (HEADERS with END_STREAM); a tool call answered
    # by an event stream, an event cut across DATA frames; tools/list on another stream.
    p = H2Pair()
    sid = p.post(INIT)
    p.pump()
    p.respond(sid, b"200", b"application/json")
    p.s.send_data(sid, INIT_OK, end_stream=True)
    p.pump()
    n = p.post(INITIALIZED, b"S1")
    p.pump()
    p.respond(n, b"202", end=True)
    call = p.post(CALL, b"S1")
    lst = p.post(LIST, b"S1")
    p.pump()
    p.respond(call, b"200", b"text/event-stream")
    ev = b"event: message\ndata: " + PROGRESS + b"\n\nevent: message\ndata: " + CALL_OK + b"\n\n"
    p.s.send_data(call, ev[:50])
    p.respond(lst, b"200", b"application/json")
    p.s.send_data(lst, LIST_OK, end_stream=True)
    p.s.send_data(call, ev[50:130])
    p.s.send_data(call, ev[130:], end_stream=True)
    p.pump()
    write("http2", "session-sse-202", p.seed(A["session-sse-202"]))

    # The server asks for a 1 KiB header table: the client's next block starts with a size
    # update; padded DATA, a HEADERS with priority; streams interleaved.
    p = H2Pair({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 1024})
    a = p.post(INIT, end=False)
    # (h2 lets only clients set priority: a PRIORITY-flagged HEADERS on a new stream.)
    c = p.c.get_next_available_stream_id()
    p.c.send_headers(c, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"127.0.0.1:8000"), (b":path", b"/mcp"), (b"accept", b"text/event-stream"), (b"mcp-session-id", b"S1")], end_stream=True, priority_weight=200, priority_depends_on=0, priority_exclusive=False)
    b = p.post(LIST, b"S1", end=False)
    p.c.send_data(b, LIST[:10], pad_length=7)
    p.c.send_data(a, INIT[:30])
    p.c.send_data(b, LIST[10:], end_stream=True, pad_length=0)
    p.c.send_data(a, INIT[30:], end_stream=True)
    p.pump()
    p.respond(b, b"200", b"application/json")
    p.s.send_data(b, LIST_OK, end_stream=True, pad_length=20)
    p.s.send_headers(a, [(b":status", b"200"), (b"content-type", b"application/json")])
    p.respond(c, b"405", end=True)
    p.s.send_data(a, INIT_OK, end_stream=True)
    p.pump()
    write("http2", "size-update-padding-priority", p.seed(A["size-update-padding-priority"]))

    # A response head too big for one frame (16 KiB): HEADERS then CONTINUATION.
    # (Its strings are not Huffman coded: loona-hpack decodes Huffman strings slowly, a
    # block this size would slow the fuzzer to a crawl.)
    p = H2Pair()
    a = p.post(LIST, b"S1")
    p.pump()
    enc = p.s.encoder.encode
    p.s.encoder.encode = lambda headers, huffman=True: enc(headers, huffman=False)
    p.s.send_headers(a, [(b":status", b"200"), (b"content-type", b"application/json"), (b"x-trace", b"t" * 16500)])
    p.s.send_data(a, LIST_OK, end_stream=True)
    p.pump()
    write("http2", "continuation", p.seed(A["continuation"]))

    # A stream reset, one answered with trailers, then GOAWAY.
    p = H2Pair()
    a = p.post(CALL, b"S1")
    b = p.post(LIST, b"S1", end=False)
    p.c.send_data(b, LIST[:5])
    p.pump()
    p.respond(a, b"200", b"application/json")
    p.s.send_data(a, CALL_OK)
    p.s.send_headers(a, [(b"x-trailer", b"done")], end_stream=True)
    p.s.reset_stream(b, h2.errors.ErrorCodes.CANCEL)
    p.s.ping(b"12345678")
    p.pump()
    p.c.close_connection()
    p.s.close_connection(last_stream_id=3)
    p.pump()
    write("http2", "reset-trailers-goaway", p.seed(A["reset-trailers-goaway"]))

    # A body over the limit (the seed's first byte sets it to 160 bytes) and an event stream
    # whose first event is over it.
    p = H2Pair()
    big = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"' + b"x" * 600 + b'"}}}'
    a = p.post(big, b"S1")
    p.pump()
    p.respond(a, b"200", b"text/event-stream")
    p.s.send_data(a, b"event: message\ndata: " + b"y" * 400 + b"\n\n")
    p.s.send_data(a, b"event: message\ndata: " + CALL_OK + b"\n\n", end_stream=True)
    p.pump()
    write("http2", "oversize", p.seed(A["oversize"]))


class WsPair:
    def __init__(self, deflate=True, client_ncto=False, server_ncto=False):
        self.c = WSConnection(ConnectionType.CLIENT)
        self.s = WSConnection(ConnectionType.SERVER)
        ext = []
        if deflate:
            ext = [PerMessageDeflate(client_no_context_takeover=client_ncto, server_no_context_takeover=server_ncto)]
        req = self.c.send(Request(host="127.0.0.1:8000", target="/mcp", subprotocols=["mcp"], extensions=ext))
        self.s.receive_data(req)
        evs = list(self.s.events())
        r = evs[0]
        sext = [PerMessageDeflate(client_no_context_takeover=client_ncto, server_no_context_takeover=server_ncto)] if deflate else []
        resp = self.s.send(AcceptConnection(subprotocol="mcp", extensions=sext))
        self.c.receive_data(resp)
        list(self.c.events())
        self.head = (req, resp)
        self.cw, self.sw = bytearray(), bytearray()

    def client(self, ev):
        b = self.c.send(ev)
        self.cw += b
        self.s.receive_data(b)
        return list(self.s.events())

    def server(self, ev):
        b = self.s.send(ev)
        self.sw += b
        self.c.receive_data(b)
        return list(self.c.events())


def ws_seeds():
    # a: bit 0 deflate, bit 1 no context takeover, bit 2 masked, the rest the limit
    # (16 + (a >> 3) * 512).
    def a(deflate, ncto, masked, limit_steps):
        return (limit_steps << 3) | (4 if masked else 0) | (2 if ncto else 0) | (1 if deflate else 0)

    # The client's messages, compressed with context takeover; the call in three fragments
    # with a ping between the first two.
    p = WsPair()
    p.client(TextMessage(INIT.decode()))
    p.client(TextMessage(INITIALIZED.decode()))
    s = CALL.decode()
    p.client(TextMessage(s[:40], message_finished=False))
    p.client(Ping(b"hb"))
    p.client(TextMessage(s[40:90], message_finished=False))
    p.client(TextMessage(s[90:], message_finished=True))
    p.client(TextMessage(LIST.decode()))
    p.client(CloseConnection(code=1000, reason="bye"))
    write("websocket", "client-deflate", bytes([a(True, False, True, 4), 7]) + bytes(p.cw))

    # The server's side of it: compressed, unmasked, a pong and a binary message.
    p.server(TextMessage(INIT_OK.decode()))
    p.server(Pong(b"hb"))
    p.server(TextMessage(PROGRESS.decode()))
    p.server(TextMessage(CALL_OK.decode()))
    p.server(BytesMessage(bytes(range(256)) * 2))
    p.server(TextMessage(LIST_OK.decode()))
    write("websocket", "server-deflate", bytes([a(True, False, False, 4), 13]) + bytes(p.sw))

    # Without context takeover, and a message over the limit (16 + 512 bytes).
    p = WsPair(client_ncto=True, server_ncto=True)
    for m in [INIT, b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","arguments":{"text":"' + b"z" * 2000 + b'"}}}', CALL, LIST]:
        p.client(TextMessage(m.decode()))
    write("websocket", "client-no-context-takeover", bytes([a(True, True, True, 1), 3]) + bytes(p.cw))

    # No extension: plain frames, 16- and 64-bit lengths, a close.
    p = WsPair(deflate=False)
    p.server(TextMessage(INIT_OK.decode()))
    p.server(TextMessage(("x" * 300)))
    p.server(TextMessage(CALL_OK.decode(), message_finished=False))
    p.server(Ping(b"in the middle"))
    p.server(TextMessage(" ", message_finished=True))
    p.server(CloseConnection(code=1001, reason="going away"))
    write("websocket", "server-plain", bytes([a(False, False, False, 255 >> 3), 31]) + bytes(p.sw))


h2_seeds()
ws_seeds()
