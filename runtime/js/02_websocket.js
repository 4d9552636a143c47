// Outpost's bootstrap, part 2: server-side WebSockets (`WebSocketPair`)
// and the `Response` that carries one.

import { core, primordials } from "ext:core/mod.js";
import { op_outpost_ws_close, op_outpost_ws_next, op_outpost_ws_send_binary, op_outpost_ws_send_text } from "ext:core/ops";
import { DOMException, event, response, setTimeout, webidl } from "ext:outpost_runtime/00_prelude.js";
import { currentRequest } from "ext:outpost_runtime/01_console.js";

const {
  ArrayBufferIsView,
  ArrayBufferPrototype,
  ArrayPrototypePush,
  NumberIsInteger,
  ObjectDefineProperties,
  ObjectDefineProperty,
  ObjectPrototypeIsPrototypeOf,
  Promise,
  PromisePrototypeThen,
  Proxy,
  RangeError,
  ReflectConstruct,
  SafeFinalizationRegistry,
  SafeSet,
  SafeSetIterator,
  SafeWeakMap,
  SetPrototypeAdd,
  SetPrototypeDelete,
  String,
  SymbolFor,
  TypeError,
  TypedArrayPrototypeGetBuffer,
  TypedArrayPrototypeSlice,
  WeakMapPrototypeGet,
  WeakMapPrototypeSet,
} = primordials;

// Cloudflare's server-side WebSockets: `new WebSocketPair()` gives a client
// end, returned in `new Response(null, { status: 101, webSocket: client })`,
// and a server end the worker `accept()`s and talks on. Frames are handled
// in Rust; the front joins the socket to the upgraded connection.

const wsKey = SymbolFor("outpost.webSocket");
export const kAttach = SymbolFor("outpost.webSocket.attach");
/** Closes the socket of a forwarded client end that was dropped (made on first use). */
let forwardedSockets = null;
/** Server ends attached to a client, until closed: closed (1001) when the isolate goes away. */
const openServerSockets = new SafeSet();
/** Set once the isolate is going away (retired, or the node shuts down): sockets attached later close at once. */
let goingAway = false;
// Module-private access to WebSocket internals (set in its static block).
export let makeForwarded;
export let claimForResponse;
let goAway;
const WS_CONNECTING = 0;
const WS_OPEN = 1;
const WS_CLOSING = 2;
const WS_CLOSED = 3;
/** How long a close handshake may take before the socket is dropped. */
const WS_CLOSE_TIMEOUT_MS = 5_000;

export class WebSocket extends event.EventTarget {
  #state = WS_CONNECTING;
  #accepted = false;
  #rid = null;
  #pending = [];
  #peer = null;
  #client = false;
  /** For a client end another isolate serves (a Durable Object's): the rid of its socket, until returned. */
  #forwarded = null;
  /** The client end went out in a response (it can only once). */
  #inResponse = false;
  #closed;
  #onClosed;

  constructor(key) {
    if (key !== wsKey) {
      throw new TypeError("WebSocket clients are not available in workers; use new WebSocketPair() to accept one");
    }
    super();
    this[webidl.brand] = webidl.brand;
    this.#closed = new Promise((resolve) => {
      this.#onClosed = resolve;
    });
  }

  static pair() {
    const client = new WebSocket(wsKey);
    const server = new WebSocket(wsKey);
    client.#peer = server;
    client.#client = true;
    server.#peer = client;
    return [client, server];
  }

  static {
    /** The client end of a socket a Durable Object serves, from a stub's fetch. */
    makeForwarded = (rid) => {
      const client = new WebSocket(wsKey);
      client.#client = true;
      client.#forwarded = rid;
      forwardedSockets ??= new SafeFinalizationRegistry((socketRid) => core.tryClose(socketRid));
      forwardedSockets.register(client, rid, client);
      const request = currentRequest.get();
      if (request !== undefined) ArrayPrototypePush(request.sockets ??= [], rid);
      return client;
    };
    /**
     * Claims a client end for a response, once: `undefined` for an end of
     * a local pair, the socket's rid for a forwarded one; `null` if it
     * already went out in a response.
     */
    claimForResponse = (socket) => {
      if (socket.#inResponse) return null;
      socket.#inResponse = true;
      if (socket.#peer !== null) return undefined;
      const rid = socket.#forwarded;
      socket.#forwarded = null;
      forwardedSockets.unregister(socket);
      return rid;
    };
    /** Closes a server end because its isolate is going away. */
    goAway = (socket) => {
      if (socket.#rid === null || socket.#state === WS_CLOSING || socket.#state === WS_CLOSED) return;
      socket.#state = WS_CLOSING;
      socket.#transmitClose(1001, "the worker is going away");
    };
  }

  get readyState() {
    return this.#state;
  }

  get url() {
    return null;
  }

  get protocol() {
    return "";
  }

  get extensions() {
    return "";
  }

  /** Starts delivering this end's messages to the worker. */
  accept() {
    if (this.#client && this.#peer === null) {
      throw new TypeError("this WebSocket is served by the Durable Object that accepted it; return it in a Response");
    }
    if (this.#client) throw new TypeError("the client end of a WebSocketPair belongs in a Response");
    if (this.#accepted) throw new TypeError("accept() was already called");
    this.#accepted = true;
    this.#state = WS_OPEN;
  }

  send(message) {
    if (this.#client) throw new TypeError("the client end of a WebSocketPair belongs in a Response");
    if (!this.#accepted) throw new TypeError("call accept() before send()");
    if (this.#state !== WS_OPEN) throw new TypeError("the WebSocket is closed");
    let payload;
    if (typeof message === "string") {
      payload = message;
    } else if (ObjectPrototypeIsPrototypeOf(ArrayBufferPrototype, message)) {
      payload = TypedArrayPrototypeSlice(new Uint8Array(message));
    } else if (ArrayBufferIsView(message)) {
      payload = TypedArrayPrototypeSlice(new Uint8Array(message.buffer, message.byteOffset, message.byteLength));
    } else {
      payload = String(message);
    }
    if (this.#rid === null) {
      ArrayPrototypePush(this.#pending, payload);
      return;
    }
    this.#transmit(payload);
  }

  close(code = 1000, reason = "") {
    if (this.#client) throw new TypeError("the client end of a WebSocketPair belongs in a Response");
    // As browsers and workerd: only codes a peer may send, short reasons.
    if (code !== 1000 && !(NumberIsInteger(code) && code >= 3000 && code <= 4999)) {
      throw new DOMException(`close code ${code} is neither 1000 nor in 3000-4999`, "InvalidAccessError");
    }
    reason = String(reason);
    if (core.encode(reason).byteLength > 123) {
      throw new DOMException("a close reason is at most 123 bytes of UTF-8", "SyntaxError");
    }
    if (this.#state === WS_CLOSING || this.#state === WS_CLOSED) return;
    this.#state = WS_CLOSING;
    if (this.#rid === null) {
      ArrayPrototypePush(this.#pending, { close: true, code, reason: String(reason) });
      return;
    }
    this.#transmitClose(code, String(reason));
  }

  #transmit(payload) {
    const sent = typeof payload === "string"
      ? op_outpost_ws_send_text(this.#rid, payload)
      : op_outpost_ws_send_binary(this.#rid, payload);
    PromisePrototypeThen(sent, undefined, (error) => this.#fail(error));
  }

  #transmitClose(code, reason) {
    PromisePrototypeThen(op_outpost_ws_close(this.#rid, code, reason), undefined, () => {});
    // A peer that never answers the close does not keep the socket (and
    // its isolate) forever.
    const rid = this.#rid;
    setTimeout(() => {
      if (this.#state !== WS_CLOSED) core.tryClose(rid);
    }, WS_CLOSE_TIMEOUT_MS);
  }

  #fail(error) {
    if (this.#state === WS_CLOSED) return;
    this.dispatchEvent(new event.ErrorEvent("error", { error, message: error?.message ?? String(error) }));
  }

  /** The client end went out in a response: the server end is live. */
  [kAttach](rid) {
    const server = this.#peer;
    server.#rid = rid;
    SetPrototypeAdd(openServerSockets, server);
    const pending = server.#pending;
    server.#pending = [];
    for (let i = 0; i < pending.length; i++) {
      const item = pending[i];
      if (typeof item === "object" && item !== null && item.close === true) server.#transmitClose(item.code, item.reason);
      else server.#transmit(item);
    }
    server.#receive();
    if (goingAway) goAway(server);
    return server.#closed;
  }

  async #receive() {
    while (true) {
      let incoming;
      try {
        incoming = await op_outpost_ws_next(this.#rid);
      } catch (error) {
        incoming = { kind: "close", code: 1006, reason: String(error?.message ?? error), clean: false };
      }
      if (incoming.kind === "text" || incoming.kind === "binary") {
        const data = incoming.kind === "text" ? incoming.data : TypedArrayPrototypeGetBuffer(incoming.data);
        this.dispatchEvent(new event.MessageEvent("message", { data }));
        continue;
      }
      const wasOpen = this.#state === WS_OPEN;
      this.#state = WS_CLOSED;
      // As browsers do: a close from the peer is answered with the same code.
      if (wasOpen && incoming.clean) this.#transmitClose(incoming.code === 1005 ? 1000 : incoming.code, "");
      this.dispatchEvent(
        new event.CloseEvent("close", { code: incoming.code, reason: incoming.reason, wasClean: incoming.clean }),
      );
      core.tryClose(this.#rid);
      SetPrototypeDelete(openServerSockets, this);
      this.#onClosed();
      return;
    }
  }
}

event.defineEventHandler(WebSocket.prototype, "message");
event.defineEventHandler(WebSocket.prototype, "close");
event.defineEventHandler(WebSocket.prototype, "error");
ObjectDefineProperties(WebSocket, {
  CONNECTING: { value: WS_CONNECTING },
  OPEN: { value: WS_OPEN },
  CLOSING: { value: WS_CLOSING },
  CLOSED: { value: WS_CLOSED },
});

export class WebSocketPair {
  constructor() {
    const [client, server] = WebSocket.pair();
    this[0] = client;
    this[1] = server;
  }
}

/** Responses that carry a WebSocket (status 101), by response. */
export const webSocketResponses = new SafeWeakMap();

// Cloudflare's Response takes `{ status: 101, webSocket }`, which the
// standard constructor refuses (101 is outside 200-599): such a response
// is made with status 200 and remembered here.
const BaseResponse = response.Response;
export const Response = new Proxy(BaseResponse, {
  construct(target, args, newTarget) {
    const init = args[1];
    const webSocket = init?.webSocket;
    if (webSocket === undefined || webSocket === null) return ReflectConstruct(target, args, newTarget);
    if (!ObjectPrototypeIsPrototypeOf(WebSocket.prototype, webSocket)) {
      throw new TypeError("webSocket must be the client end of a WebSocketPair");
    }
    if (init.status !== 101) throw new RangeError("a Response with a webSocket must have status 101");
    const made = ReflectConstruct(target, [null, { headers: init.headers, statusText: init.statusText }], newTarget);
    // What the worker reads is what the client gets.
    ObjectDefineProperties(made, { status: { value: 101 }, ok: { value: false } });
    WeakMapPrototypeSet(webSocketResponses, made, webSocket);
    return made;
  },
});
ObjectDefineProperty(BaseResponse.prototype, "webSocket", {
  get() {
    return WeakMapPrototypeGet(webSocketResponses, this) ?? null;
  },
  configurable: true,
  enumerable: true,
});

/**
 * The isolate is going away (retired, or the node shuts down): open server
 * ends close (1001), and ends attached later close at once.
 */
export function goAwayAll() {
  goingAway = true;
  for (const socket of new SafeSetIterator(openServerSockets)) goAway(socket);
}
