//! Service bindings: one worker calling another in process, by `fetch` and
//! by JS RPC on `WorkerEntrypoint`s; `outpost dev a/ b/` runs both.

use crate::support::{self, worker, Dev};

/// The called worker: a `WorkerEntrypoint` default export with `fetch` and
/// methods, and a named entrypoint.
const CALLEE: &str = r#"
import { WorkerEntrypoint } from "cloudflare:workers";

export default class extends WorkerEntrypoint {
  async fetch(request) {
    if (new URL(request.url).pathname === "/echo") {
      // The request body, streamed back as it arrives.
      return new Response(request.body.pipeThrough(new TransformStream({
        transform(chunk, controller) {
          controller.enqueue(new TextEncoder().encode(`[${new TextDecoder().decode(chunk)}]`));
        },
      })));
    }
    const body = await request.text();
    return new Response(`callee got ${request.method} ${new URL(request.url).pathname} ${body}`, {
      headers: { "x-callee": this.env.WHO },
    });
  }
  add(a, b) {
    return a + b;
  }
  async describe(value) {
    return { type: Object.prototype.toString.call(value), size: value.size };
  }
  fail() {
    throw new RangeError("out of range on purpose");
  }
  scheduled() {
    return "reserved names are not callable";
  }
}

export class Admin extends WorkerEntrypoint {
  whoami() {
    return `admin of ${this.env.WHO}`;
  }
}
"#;

const CALLER: &str = r#"
export default {
  async fetch(request, env) {
    const path = new URL(request.url).pathname;
    if (path === "/fetch") {
      const answer = await env.CALLEE.fetch("https://callee/inner", { method: "POST", body: "hello" });
      return new Response(`${await answer.text()} | ${answer.headers.get("x-callee")}`);
    }
    if (path === "/stream") {
      // A body made chunk by chunk, through the callee and back.
      let sent = 0;
      const body = new ReadableStream({
        async pull(controller) {
          if (sent === 3) return controller.close();
          await new Promise((resolve) => setTimeout(resolve, 5));
          controller.enqueue(new TextEncoder().encode(`chunk${sent++}`));
        },
      });
      const answer = await env.CALLEE.fetch("https://callee/echo", { method: "POST", body, duplex: "half" });
      return new Response(answer.body);
    }
    if (path === "/rpc") {
      const sum = await env.CALLEE.add(2, 3);
      const described = await env.CALLEE.describe(new Map([[1, 2]]));
      let error = "none";
      try {
        await env.CALLEE.fail();
      } catch (thrown) {
        error = `${thrown.name}: ${thrown.message} (${thrown instanceof RangeError})`;
      }
      let reserved = "none";
      try {
        await env.CALLEE.scheduled();
      } catch (thrown) {
        reserved = thrown.message;
      }
      return Response.json({ sum, described, error, reserved, admin: await env.ADMIN.whoami() });
    }
    return new Response("caller");
  },
};
"#;

#[tokio::test]
async fn a_worker_calls_another_by_fetch_and_rpc() {
    let callee =
        worker(&[("outpost.toml", "name = \"callee\"\n[vars]\nWHO = \"the callee\"\n"), ("worker.js", CALLEE)]);
    let caller = worker(&[
        (
            "outpost.toml",
            "name = \"caller\"\n[[services]]\nbinding = \"CALLEE\"\nservice = \"callee\"\n\n[[services]]\nbinding = \"ADMIN\"\nservice = \"callee\"\nentrypoint = \"Admin\"\n",
        ),
        ("worker.js", CALLER),
    ]);
    let dev = Dev::start(caller.path(), &[callee.path().to_str().unwrap()]);
    // The first worker is the one served.
    assert_eq!(support::get(dev.addr, "/").await.text(), "caller");
    assert_eq!(support::get(dev.addr, "/fetch").await.text(), "callee got POST /inner hello | the callee");
    let streamed = support::get(dev.addr, "/stream").await.text();
    assert_eq!(streamed.replace("][", ""), "[chunk0chunk1chunk2]", "{streamed}");
    let reply = support::get(dev.addr, "/rpc").await;
    let result: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_else(|_| panic!("{}", reply.text()));
    assert_eq!(result["sum"], 5);
    assert_eq!(result["described"], serde_json::json!({ "type": "[object Map]", "size": 1 }));
    assert_eq!(result["error"], "RangeError: out of range on purpose (true)");
    assert!(result["reserved"].as_str().unwrap().contains("does not implement the method"), "{result}");
    assert_eq!(result["admin"], "admin of the callee");
}

#[tokio::test]
async fn recursion_is_cut_at_32_nested_invocations() {
    let recursive = worker(&[
        ("outpost.toml", "name = \"loop\"\n[[services]]\nbinding = \"SELF\"\nservice = \"loop\"\n"),
        (
            "worker.js",
            r#"
export default {
  async fetch(request, env) {
    const depth = Number(new URL(request.url).searchParams.get("depth") ?? 0);
    try {
      const answer = await env.SELF.fetch(`https://loop/?depth=${depth + 1}`);
      return new Response(await answer.text(), { status: answer.status });
    } catch (error) {
      return new Response(`stopped at depth ${depth}: ${error.message}`, { status: 508 });
    }
  },
};
"#,
        ),
    ]);
    let dev = Dev::start(recursive.path(), &[]);
    let reply = support::get(dev.addr, "/").await;
    assert_eq!(reply.status, 508, "{}", reply.text());
    assert!(reply.text().starts_with("stopped at depth 32: Subrequest depth limit exceeded"), "{}", reply.text());
    // The node is still there for the next request.
    assert_eq!(support::get(dev.addr, "/").await.status, 508);
}

#[test]
fn a_service_binding_needs_its_worker_and_a_valid_entrypoint() {
    let dir = worker(&[
        ("outpost.toml", "name = \"x\"\n[[services]]\nbinding = \"B\"\nservice = \"b\"\nentrypoint = \"not-a-name\"\n"),
        ("worker.js", "export default { fetch() { return new Response('x'); } };\n"),
    ]);
    let stderr = support::failed_start(dir.path());
    assert!(stderr.contains("entrypoint \"not-a-name\""), "{stderr}");
}

#[tokio::test]
async fn calling_a_worker_that_is_not_there_is_a_clear_error() {
    let dir = worker(&[
        ("outpost.toml", "name = \"lonely\"\n[[services]]\nbinding = \"GHOST\"\nservice = \"ghost\"\n"),
        (
            "worker.js",
            "export default { async fetch(request, env) { try { await env.GHOST.fetch('https://ghost/'); return new Response('reached'); } catch (error) { return new Response(error.message, { status: 502 }); } } };\n",
        ),
    ]);
    let dev = Dev::start(dir.path(), &[]);
    let reply = support::get(dev.addr, "/").await;
    assert_eq!(reply.status, 502);
    assert!(reply.text().contains("service ghost (GHOST)"), "{}", reply.text());
}

/// `[limits] subrequests`: outbound fetch, KV operations and calls to other
/// workers count, per invocation; past the limit they fail with a clear
/// error, and the next request starts from zero.
#[tokio::test]
async fn subrequests_are_limited_per_invocation() {
    let dir = worker(&[
        ("outpost.toml", "name = \"thrifty\"\n[limits]\nsubrequests = 3\n[[kv_namespaces]]\nbinding = \"KV\"\n"),
        (
            "worker.js",
            r#"
export default {
  async fetch(request, env) {
    const done = [];
    try {
      await env.KV.put("a", "1");
      done.push("put");
      await env.KV.get("a");
      done.push("get");
      await env.KV.list();
      done.push("list");
      // The fourth: refused before any connection is tried.
      await fetch("http://127.0.0.1:9/");
      done.push("fetch");
    } catch (error) {
      return new Response(`${done.join(",")} then ${error.message}`);
    }
    return new Response(done.join(","));
  },
};
"#,
        ),
    ]);
    let dev = Dev::start(dir.path(), &[]);
    for _ in 0..2 {
        let text = support::get(dev.addr, "/").await.text();
        assert!(text.starts_with("put,get,list then Too many subrequests"), "{text}");
    }
    let bad = worker(&[
        ("outpost.toml", "name = \"greedy\"\n[limits]\nsubrequests = 10000001\n"),
        ("worker.js", "export default { fetch() { return new Response('x'); } };\n"),
    ]);
    assert!(support::failed_start(bad.path()).contains("subrequests"));
}

/// A worker with only a named `WorkerEntrypoint` (no default export) loads,
/// and is reachable through a binding that names the entrypoint.
#[tokio::test]
async fn a_worker_of_named_entrypoints_only_loads() {
    let callee = worker(&[
        ("outpost.toml", "name = \"rpc-only\"\n"),
        (
            "worker.js",
            "import { WorkerEntrypoint } from 'cloudflare:workers';\nexport class Math extends WorkerEntrypoint { square(n) { return n * n; } }\n",
        ),
    ]);
    let caller = worker(&[
        ("outpost.toml", "name = \"asker\"\n[[services]]\nbinding = \"MATH\"\nservice = \"rpc-only\"\nentrypoint = \"Math\"\n"),
        ("worker.js", "export default { async fetch(request, env) { return new Response(String(await env.MATH.square(12))); } };\n"),
    ]);
    let dev = Dev::start(caller.path(), &[callee.path().to_str().unwrap()]);
    assert_eq!(support::get(dev.addr, "/").await.text(), "144");
}
