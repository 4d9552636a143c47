// The workflow bench's worker, the same for `outpost dev` and `wrangler dev`
// (miniflare): `GET /run?wf=THREE&n=200` creates n instances of a workflow
// (createBatch, 100 a call), waits until every one is complete, and answers
// the milliseconds that took. THREE runs three small callbacks as steps,
// INLINE the same callbacks straight in run().
import { WorkflowEntrypoint } from "cloudflare:workers";

const work = (n) => ({ n: n + 1, at: Date.now() });

export class ThreeSteps extends WorkflowEntrypoint {
  async run(event, step) {
    const a = await step.do("a", async () => work(event.payload.n));
    const b = await step.do("b", async () => work(a.n));
    const c = await step.do("c", async () => work(b.n));
    return c.n;
  }
}

export class Inline extends WorkflowEntrypoint {
  async run(event) {
    const a = await (async () => work(event.payload.n))();
    const b = await (async () => work(a.n))();
    const c = await (async () => work(b.n))();
    return c.n;
  }
}

let round = 0;

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname !== "/run") return new Response("GET /run?wf=THREE|INLINE&n=200\n", { status: 404 });
    const workflow = env[url.searchParams.get("wf")];
    const n = Number(url.searchParams.get("n"));
    const prefix = `r${Date.now()}-${round++}`;
    const start = Date.now();
    let instances = [];
    for (let i = 0; i < n; i += 100) {
      const batch = [];
      for (let j = i; j < Math.min(n, i + 100); j++) batch.push({ id: `${prefix}-${j}`, params: { n: j } });
      instances = instances.concat(await workflow.createBatch(batch));
    }
    let pending = instances;
    while (pending.length > 0) {
      const statuses = await Promise.all(pending.map((instance) => instance.status()));
      const failed = statuses.find((s) => s.status === "errored");
      if (failed) return new Response(JSON.stringify(failed), { status: 500 });
      pending = pending.filter((_, i) => statuses[i].status !== "complete");
      if (pending.length > 0) await new Promise((resolve) => setTimeout(resolve, 5));
    }
    return new Response(String(Date.now() - start));
  },
};
